//! The model as NetLess reasons about it: named tensors with concrete types and shapes, and the nodes that
//! make and use them. Shapes come from tract's analysis of the model for the given input shapes.

use netless_oip::Name;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use tract_onnx::pb::{self, GraphProto, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::{ElemType, OnnxModel, cost};
use crate::{Error, Result};

/// Index of a tensor in [`Graph::tensors`].
pub type TensorId = usize;
/// Index of a node in [`Graph::nodes`].
pub type NodeId = usize;

/// Where a tensor's value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    /// A model input.
    Input,
    /// A weight held as `graph.initializer[i]`.
    Initializer(usize),
    /// A weight held as the value of the Constant node `graph.node[i]`.
    Constant(usize),
    /// A small tensor whose value is fixed once the input shapes are (shape arithmetic, for instance):
    /// `Graph::folded[i]`, written into the segments that read it instead of crossing boundaries.
    Folded(usize),
    /// Computed by a node.
    Activation,
}

/// A named tensor with a concrete type and shape.
#[derive(Clone, Debug)]
pub struct Tensor {
    /// Its ONNX name.
    pub name: String,
    /// Its element type.
    pub dtype: ElemType,
    /// Its concrete shape.
    pub shape: Vec<u64>,
    /// Where its value comes from.
    pub kind: TensorKind,
    /// The node computing it, for activations.
    pub producer: Option<NodeId>,
    /// The nodes reading it, each once, in node order.
    pub consumers: Vec<NodeId>,
}

impl Node {
    /// The integer attribute `name`, if set.
    pub fn int_attribute(&self, name: &str) -> Option<i64> {
        self.int_attributes.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// The integer-list attribute `name`, if set.
    pub fn ints_attribute(&self, name: &str) -> Option<&[i64]> {
        self.ints_attributes.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    /// The string attribute `name`, if set.
    pub fn string_attribute(&self, name: &str) -> Option<&str> {
        self.string_attributes.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

impl Tensor {
    /// Size of its data in bytes.
    pub fn bytes(&self) -> u64 {
        self.shape.iter().product::<u64>() * self.dtype.size()
    }

    /// Whether it is a weight (initializer or Constant).
    pub fn is_weight(&self) -> bool {
        matches!(self.kind, TensorKind::Initializer(_) | TensorKind::Constant(_) | TensorKind::Folded(_))
    }
}

/// A computing node (Constant nodes are not nodes here: their values are weights; nor are nodes whose
/// outputs are all folded, nor nodes whose outputs nobody reads).
#[derive(Clone, Debug)]
pub struct Node {
    /// Its ONNX name, or its first output's name when it has none.
    pub name: String,
    /// Its operator.
    pub op_type: String,
    /// Index in `graph.node` of the ONNX model.
    pub proto_index: usize,
    /// Tensors it reads, including those its subgraphs (If, Loop, Scan) read from the outer graph.
    pub inputs: Vec<TensorId>,
    /// Tensors it writes.
    pub outputs: Vec<TensorId>,
    /// Estimated floating-point (or integer) operations for one run.
    pub flops: u64,
    /// Its ONNX inputs by position (`None` for an omitted optional input), for rewriting it into shards.
    pub operands: Vec<Option<TensorId>>,
    /// Its integer attributes (`group`, `transB`, `axis`...), by name.
    pub int_attributes: Vec<(String, i64)>,
    /// Its integer-list attributes (`strides`, `dilations`...), by name.
    pub ints_attributes: Vec<(String, Vec<i64>)>,
    /// Its string attributes (`auto_pad`...), by name.
    pub string_attributes: Vec<(String, String)>,
}

/// The analysed model.
#[derive(Clone, Debug)]
pub struct Graph {
    /// Every tensor.
    pub tensors: Vec<Tensor>,
    /// Every computing node, in the file's order.
    pub nodes: Vec<Node>,
    /// The model's inputs, in declared order.
    pub inputs: Vec<TensorId>,
    /// The model's outputs, in declared order.
    pub outputs: Vec<TensorId>,
    /// Values of [`TensorKind::Folded`] tensors.
    pub folded: Vec<Arc<tract_onnx::prelude::Tensor>>,
    by_name: HashMap<String, TensorId>,
}

/// Input shapes given by the user, by input name.
pub type InputShapes = Vec<(String, Vec<u64>)>;

impl Graph {
    /// Analyses a model for the given input shapes (declared shapes fill the rest; a dynamic first
    /// dimension defaults to 1).
    pub fn analyse(model: &OnnxModel, shapes: &InputShapes) -> Result<Graph> {
        let proto_graph = model.graph();
        check_operators(proto_graph)?;
        let facts = infer_facts(model, shapes)?;
        Builder::new(proto_graph, facts).build()
    }

    /// The tensor with this name.
    pub fn tensor_id(&self, name: &str) -> Option<TensorId> {
        self.by_name.get(name).copied()
    }

    /// Total bytes of all weights.
    pub fn weight_bytes(&self) -> u64 {
        self.tensors.iter().filter(|t| t.is_weight()).map(Tensor::bytes).sum()
    }

    /// Total estimated operations.
    pub fn flops(&self) -> u64 {
        self.nodes.iter().map(|n| n.flops).sum()
    }
}

/// Refuses operators tract cannot run, naming the first node that uses one.
fn check_operators(graph: &GraphProto) -> Result<()> {
    let onnx = tract_onnx::onnx();
    let mut nodes: Vec<&NodeProto> = Vec::new();
    collect_nodes(graph, &mut nodes);
    for node in nodes {
        let known = onnx.op_register.0.contains_key(&node.op_type);
        let foreign = !matches!(node.domain.as_str(), "" | "ai.onnx" | "ai.onnx.ml" | "com.microsoft");
        if !known || foreign {
            let op = if node.domain.is_empty() { node.op_type.clone() } else { format!("{}:{}", node.domain, node.op_type) };
            return Err(Error::UnsupportedOperator { node: node_name(node), op });
        }
    }
    Ok(())
}

fn collect_nodes<'a>(graph: &'a GraphProto, out: &mut Vec<&'a NodeProto>) {
    for node in &graph.node {
        out.push(node);
        for sub in subgraphs(node) {
            collect_nodes(sub, out);
        }
    }
}

fn subgraphs(node: &NodeProto) -> impl Iterator<Item = &GraphProto> {
    node.attribute.iter().flat_map(|a| a.g.iter().chain(a.graphs.iter()))
}

/// A node's display name: its own, or its first output's.
pub fn node_name(node: &NodeProto) -> String {
    if !node.name.is_empty() {
        node.name.clone()
    } else {
        format!("{} -> {}", node.op_type, node.output.first().map(String::as_str).unwrap_or("?"))
    }
}

/// The concrete type and shape tract infers for a tensor, and its value when fixed by the input shapes.
#[derive(Clone)]
struct Fact {
    dtype: ElemType,
    shape: Vec<u64>,
    value: Option<Arc<tract_onnx::prelude::Tensor>>,
}

/// Facts of every named tensor.
type Facts = HashMap<String, Fact>;

/// Folded values larger than this keep being computed (a dequantized embedding table, say, is smaller as
/// its int8 weights and the node that widens it).
const FOLD_LIMIT: u64 = 64 << 10;

/// No tensor may be larger than this (4 GiB): a segment runs in 32-bit WebAssembly, whose memory
/// holds at most 4 GiB. It also keeps sizes and operation counts far from overflowing, and tract's
/// preparation (whose tables grow with a map's size) from allocating tens of GiB.
const MAX_TENSOR_BYTES: u64 = 4 << 30;

/// Refuses a tensor whose shape makes it larger than [`MAX_TENSOR_BYTES`] (a mistyped declared
/// dimension or `--input-shape`, or a Reshape of a huge constant shape).
fn check_size(name: &str, dtype: ElemType, shape: &[u64]) -> Result<()> {
    let bytes = shape.iter().try_fold(dtype.size(), |acc, &d| acc.checked_mul(d));
    match bytes {
        Some(bytes) if bytes <= MAX_TENSOR_BYTES => Ok(()),
        _ => {
            let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
            Err(Error::ShapeInference(format!("tensor {} would be {dtype}[{}], more than the 4 GiB a WebAssembly segment can hold: check the model's declared shapes and --input-shape", Name(name), dims.join(", "))))
        }
    }
}

fn infer_facts(model: &OnnxModel, shapes: &InputShapes) -> Result<Facts> {
    let graph = model.graph();
    let dir = model.path.parent().and_then(Path::to_str);
    let parse = || tract_onnx::onnx().with_ignore_value_info(true).parse(&model.proto, dir);
    let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse))
        .map_err(|_| Error::NotOnnx { path: model.path.clone(), reason: "tract panicked while reading it (a malformed graph)".into() })?
        .map_err(|e| Error::NotOnnx { path: model.path.clone(), reason: format!("{e:#}") })?;
    if let Some(name) = parsed.unresolved_inputs.first() {
        return Err(Error::NotOnnx {
            path: model.path.clone(),
            reason: format!("tensor {} is used but never defined (a truncated or malformed graph)", Name(name)),
        });
    }
    let mut tract_model = parsed.model;
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let declared: Vec<&pb::ValueInfoProto> =
        graph.input.iter().filter(|i| !initializers.contains(i.name.as_str())).collect();
    for (name, _) in shapes {
        if !declared.iter().any(|i| &i.name == name) {
            let names: Vec<&str> = declared.iter().map(|i| i.name.as_str()).collect();
            return Err(Error::InputShape {
                input: name.clone(),
                reason: format!("the model has no such input (its inputs: {})", names.join(", ")),
            });
        }
    }
    for (ix, outlet) in tract_model.input_outlets().map_err(shape_error)?.to_vec().into_iter().enumerate() {
        let name = tract_model.node(outlet.node).name.clone();
        let Some(input) = declared.iter().find(|i| i.name == name) else { continue };
        let (dtype, shape) = input_fact(input, shapes)?;
        check_size(&name, dtype, &shape)?;
        let dt = dtype.to_tract().ok_or_else(|| Error::InputShape {
            input: name.clone(),
            reason: format!("element type {dtype} is not supported"),
        })?;
        let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        tract_model.set_input_fact(ix, InferenceFact::dt_shape(dt, dims)).map_err(shape_error)?;
    }
    super::prepare::analyse(&mut tract_model, "the model")?;

    let mut facts = Facts::new();
    let mut missing = Vec::new();
    for (name, outlet) in &parsed.outlets_by_name {
        let fact = tract_model.outlet_fact(*outlet).map_err(shape_error)?;
        let dtype = fact.datum_type.concretize().and_then(ElemType::from_tract);
        let shape = fact.shape.concretize().and_then(|dims| dims.iter().map(|d| d.to_i64().ok().map(|v| v as u64)).collect::<Option<Vec<u64>>>());
        match (dtype, shape) {
            (Some(dtype), Some(shape)) => {
                check_size(name, dtype, &shape)?;
                facts.insert(name.clone(), Fact { dtype, shape, value: fact.value.concretize() });
            }
            _ => missing.push(name.clone()),
        }
    }
    let typed = super::prepare::typed(tract_model, "the model")?;
    if !missing.is_empty() {
        for node in typed.nodes() {
            for (ix, output) in node.outputs.iter().enumerate() {
                let Some(label) = typed.outlet_label(OutletId::new(node.id, ix)) else { continue };
                let shape: Option<Vec<u64>> = output.fact.shape.as_concrete().map(|s| s.iter().map(|&d| d as u64).collect());
                if let (Some(dtype), Some(shape)) = (ElemType::from_tract(output.fact.datum_type), shape) {
                    check_size(label, dtype, &shape)?;
                    facts.entry(label.to_string()).or_insert(Fact { dtype, shape, value: None });
                }
            }
        }
    }
    Ok(facts)
}

fn shape_error(e: TractError) -> Error {
    Error::ShapeInference(format!("{e:#}"))
}

/// The type and shape of a model input: the user's shape, else the declared one.
fn input_fact(input: &pb::ValueInfoProto, shapes: &InputShapes) -> Result<(ElemType, Vec<u64>)> {
    let bad = |reason: String| Error::InputShape { input: input.name.clone(), reason };
    let Some(pb::type_proto::Value::TensorType(tt)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(bad("is not a tensor".into()));
    };
    let dtype = ElemType::from_onnx(tt.elem_type).ok_or_else(|| bad(format!("unknown element type {}", tt.elem_type)))?;
    let declared: Option<Vec<Option<u64>>> = tt.shape.as_ref().map(|s| {
        s.dim
            .iter()
            .map(|d| match d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => Some(v as u64),
                _ => None,
            })
            .collect()
    });
    let show = |dims: &[Option<u64>]| -> String {
        dims.iter().map(|d| d.map(|v| v.to_string()).unwrap_or("?".into())).collect::<Vec<_>>().join(",")
    };
    if let Some((_, given)) = shapes.iter().find(|(n, _)| n == &input.name) {
        if let Some(declared) = &declared {
            let fits = declared.len() == given.len() && declared.iter().zip(given).all(|(d, g)| d.is_none_or(|d| d == *g));
            if !fits {
                return Err(bad(format!(
                    "shape {} does not fit the declared shape [{}]",
                    given.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
                    show(declared)
                )));
            }
        }
        if given.contains(&0) {
            return Err(bad("a dimension of 0 leaves nothing to compute".into()));
        }
        return Ok((dtype, given.clone()));
    }
    let declared = declared.ok_or_else(|| bad(format!("has no declared shape; pass --input-shape {0}=D1,D2,... ({0}= for a scalar)", input.name)))?;
    let mut shape = Vec::with_capacity(declared.len());
    for (axis, dim) in declared.iter().enumerate() {
        match (dim, axis) {
            (Some(v), _) => shape.push(*v),
            (None, 0) => shape.push(1),
            (None, _) => {
                return Err(bad(format!(
                    "dimension {axis} of [{}] is dynamic; pass --input-shape {}=<dims>",
                    show(&declared),
                    input.name
                )));
            }
        }
    }
    Ok((dtype, shape))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Constant,
    Folded,
    Compute,
    Dead,
}

struct Builder<'a> {
    proto: &'a GraphProto,
    facts: Facts,
    graph: Graph,
}

impl<'a> Builder<'a> {
    fn new(proto: &'a GraphProto, facts: Facts) -> Self {
        let graph = Graph { tensors: vec![], nodes: vec![], inputs: vec![], outputs: vec![], folded: vec![], by_name: HashMap::new() };
        Builder { proto, facts, graph }
    }

    fn add_tensor(&mut self, name: &str, dtype: ElemType, shape: Vec<u64>, kind: TensorKind) -> TensorId {
        let id = self.graph.tensors.len();
        self.graph.tensors.push(Tensor { name: name.to_owned(), dtype, shape, kind, producer: None, consumers: vec![] });
        self.graph.by_name.insert(name.to_owned(), id);
        id
    }

    fn fact(&self, name: &str, node: &str) -> Result<Fact> {
        self.facts.get(name).cloned().ok_or_else(|| {
            Error::ShapeInference(format!("the type or shape of tensor {} (made by node {}) could not be resolved", Name(name), Name(node)))
        })
    }

    fn build(mut self) -> Result<Graph> {
        let proto = self.proto;
        for (ix, init) in proto.initializer.iter().enumerate() {
            let dtype = ElemType::from_onnx(init.data_type).ok_or_else(|| {
                Error::ShapeInference(format!("initializer {} has unknown element type {}", Name(&init.name), init.data_type))
            })?;
            let shape = init.dims.iter().map(|&d| d.max(0) as u64).collect();
            self.add_tensor(&init.name, dtype, shape, TensorKind::Initializer(ix));
        }
        for input in &proto.input {
            if self.graph.by_name.contains_key(&input.name) {
                continue;
            }
            let fact = self.fact(&input.name, "input")?;
            let id = self.add_tensor(&input.name, fact.dtype, fact.shape, TensorKind::Input);
            self.graph.inputs.push(id);
        }
        let roles = self.roles();
        for (ix, node) in proto.node.iter().enumerate() {
            match roles[ix] {
                Role::Constant => {
                    let output = node.output.first().ok_or_else(|| Error::ShapeInference(format!("Constant node {} has no output", Name(&node_name(node)))))?;
                    let fact = self.fact(output, &node_name(node))?;
                    self.add_tensor(output, fact.dtype, fact.shape, TensorKind::Constant(ix));
                }
                Role::Folded => {
                    for output in node.output.iter().filter(|s| !s.is_empty()) {
                        let fact = self.fact(output, &node_name(node))?;
                        let value = fact.value.expect("folded nodes have values");
                        self.add_tensor(output, fact.dtype, fact.shape, TensorKind::Folded(self.graph.folded.len()));
                        self.graph.folded.push(value);
                    }
                }
                Role::Compute => self.add_node(ix, node)?,
                Role::Dead => {}
            }
        }
        for output in &proto.output {
            let id = self.graph.by_name.get(&output.name).copied().ok_or_else(|| {
                Error::ShapeInference(format!("graph output {} is not made by any node", Name(&output.name)))
            })?;
            self.graph.outputs.push(id);
        }
        Ok(self.graph)
    }

    /// What each ONNX node becomes: a weight, folded values, a computing node, or nothing (its outputs are
    /// never read).
    fn roles(&self) -> Vec<Role> {
        let proto = self.proto;
        let outputs: HashSet<&str> = proto.output.iter().map(|o| o.name.as_str()).collect();
        let foldable = |node: &NodeProto| {
            let outs: Vec<&String> = node.output.iter().filter(|s| !s.is_empty()).collect();
            !outs.is_empty()
                && outs.iter().all(|o| {
                    !outputs.contains(o.as_str())
                        && self.facts.get(o.as_str()).is_some_and(|f| {
                            f.shape.iter().product::<u64>() * f.dtype.size() <= FOLD_LIMIT
                                && f.dtype.to_tract().is_some_and(|dt| dt != DatumType::String && f.value.as_ref().is_some_and(|v| v.cast_to_dt(dt).is_ok()))
                        })
                })
        };
        let mut roles: Vec<Role> = proto
            .node
            .iter()
            .map(|node| {
                if node.op_type == "Constant" && node.domain.is_empty() {
                    Role::Constant
                } else if foldable(node) {
                    Role::Folded
                } else {
                    Role::Compute
                }
            })
            .collect();
        let mut needed: HashSet<String> = outputs.iter().map(|s| s.to_string()).collect();
        for (ix, node) in proto.node.iter().enumerate().rev() {
            if roles[ix] != Role::Compute {
                continue;
            }
            if !node.output.iter().any(|o| needed.contains(o)) {
                roles[ix] = Role::Dead;
                continue;
            }
            needed.extend(node.input.iter().filter(|s| !s.is_empty()).cloned());
            needed.extend(outer_references(node));
        }
        roles
    }

    fn add_node(&mut self, proto_index: usize, node: &NodeProto) -> Result<()> {
        let name = node_name(node);
        let id = self.graph.nodes.len();
        let mut inputs = Vec::new();
        let mut input_names: Vec<&str> = node.input.iter().map(String::as_str).filter(|s| !s.is_empty()).collect();
        let implicit = outer_references(node);
        input_names.extend(implicit.iter().map(String::as_str));
        for input in input_names {
            let tensor = self.graph.by_name.get(input).copied().ok_or_else(|| {
                Error::ShapeInference(format!("node {} reads tensor {}, which is not defined before it", Name(&name), Name(&input)))
            })?;
            if !inputs.contains(&tensor) {
                inputs.push(tensor);
                self.graph.tensors[tensor].consumers.push(id);
            }
        }
        let mut outputs = Vec::new();
        for output in node.output.iter().filter(|s| !s.is_empty()) {
            let fact = self.fact(output, &name)?;
            let tensor = self.add_tensor(output, fact.dtype, fact.shape, TensorKind::Activation);
            self.graph.tensors[tensor].producer = Some(id);
            outputs.push(tensor);
        }
        let flops = cost::flops(node, &inputs.iter().map(|&t| &self.graph.tensors[t]).collect::<Vec<_>>(), &outputs.iter().map(|&t| &self.graph.tensors[t]).collect::<Vec<_>>());
        let operands = node.input.iter().map(|i| if i.is_empty() { None } else { self.graph.by_name.get(i).copied() }).collect();
        let int_attributes = node
            .attribute
            .iter()
            .filter(|a| a.r#type == pb::attribute_proto::AttributeType::Int as i32)
            .map(|a| (a.name.clone(), a.i))
            .collect();
        let ints_attributes = node
            .attribute
            .iter()
            .filter(|a| a.r#type == pb::attribute_proto::AttributeType::Ints as i32)
            .map(|a| (a.name.clone(), a.ints.clone()))
            .collect();
        let string_attributes = node
            .attribute
            .iter()
            .filter(|a| a.r#type == pb::attribute_proto::AttributeType::String as i32)
            .map(|a| (a.name.clone(), String::from_utf8_lossy(&a.s).into_owned()))
            .collect();
        let op_type = node.op_type.clone();
        self.graph.nodes.push(Node { name, op_type, proto_index, inputs, outputs, flops, operands, int_attributes, ints_attributes, string_attributes });
        Ok(())
    }
}

/// Names that a node's subgraphs read from the enclosing graph (the implicit inputs of If, Loop and Scan).
fn outer_references(node: &NodeProto) -> Vec<String> {
    let mut refs = Vec::new();
    for sub in subgraphs(node) {
        let mut defined: HashSet<&str> = sub.input.iter().map(|i| i.name.as_str()).collect();
        defined.extend(sub.initializer.iter().map(|i| i.name.as_str()));
        for inner in &sub.node {
            for name in inner.input.iter().filter(|s| !s.is_empty()) {
                if !defined.contains(name.as_str()) && !refs.contains(name) {
                    refs.push(name.clone());
                }
            }
            for name in outer_references(inner) {
                if !defined.contains(name.as_str()) && !refs.contains(&name) {
                    refs.push(name);
                }
            }
            defined.extend(inner.output.iter().map(String::as_str));
        }
    }
    refs
}
