//! The one seam to the inference engine: prepare a model once, compute named tensors with it.

use std::time::Instant;

use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::prelude::{InferenceModel, TypedFact};
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::prelude::{
    Arc, DatumType, Framework, InferenceFact, IntoTValue, TValue, TVec,
    Tensor as TractTensor, TypedRunnableModel,
};
use tract_onnx::tract_core::plan::eval;

use crate::blob::{Skeleton, Weight};
use crate::contract::{Contract, type_name};
use crate::exports::netless::inference::profile::NodeTime;
use crate::netless::inference::types::{Error, Tensor, TensorSpec, TensorType};

/// A model optimised and ready to run; outputs that merely pass an input through are not in it.
pub struct Prepared {
    /// `None` when every output is a pass-through input and there is nothing to compute.
    plan: Option<Arc<TypedRunnableModel>>,
    /// For each model input, its position among the contract's (validated, ordered) inputs.
    input_order: Vec<usize>,
    /// Names of the computed outputs, in the contract's output order.
    outputs: Vec<String>,
}

impl Prepared {
    /// Builds the runnable model from the decoded ONNX skeleton, reading each large weight from
    /// the blob into the tensor that keeps it.
    ///
    /// Anything tract cannot translate or optimise is reported as `unsupported`.
    pub fn load(skeleton: Skeleton, contract: &Contract) -> Result<Prepared, Error> {
        let unsupported = |e: tract_onnx::prelude::TractError| Error::Unsupported(format!("{e:#}"));
        let info = &contract.info;
        let outputs: Vec<String> = info
            .outputs
            .iter()
            .filter(|o| !info.inputs.iter().any(|i| i.name == o.name))
            .map(|o| o.name.clone())
            .collect();
        if outputs.is_empty() {
            return Ok(Prepared {
                plan: None,
                input_order: Vec::new(),
                outputs,
            });
        }
        let mut skeleton = skeleton;
        crate::dequantize::at_read(&mut skeleton).map_err(Error::Unsupported)?;
        let Skeleton { proto, weights } = skeleton;
        let mut model = crate::prelu::onnx()
            .model_for_proto_model(&proto)
            .map_err(unsupported)?;
        let file_order = node_names(&proto);
        drop(proto);
        for weight in &weights {
            fill(&mut model, weight)?;
        }
        let outlets = outputs
            .iter()
            .map(|name| {
                model.find_outlet_label(name).ok_or_else(|| {
                    Error::Internal(format!("the model has no tensor named `{name}` to output"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        model.select_output_outlets(&outlets).map_err(unsupported)?;
        let input_order = model
            .input_outlets()
            .map_err(unsupported)?
            .iter()
            .map(|outlet| {
                let name = &model.node(outlet.node).name;
                info.inputs
                    .iter()
                    .position(|i| &i.name == name)
                    .ok_or_else(|| {
                        Error::Internal(format!("model input `{name}` is not in the contract"))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Restate fully known input facts: tract loses them on inputs that are also outputs.
        for (slot, &i) in input_order.iter().enumerate() {
            let spec = &info.inputs[i];
            let dims: Option<Vec<usize>> =
                spec.shape.iter().map(|d| d.map(|d| d as usize)).collect();
            if let (Some(dt), Some(dims)) = (datum_type(spec.ty), dims) {
                let fact = InferenceFact::dt_shape(dt, dims.as_slice());
                model.set_input_fact(slot, fact).map_err(unsupported)?;
            }
        }
        let mut model = crate::optimize::optimize(model).map_err(unsupported)?;
        netless_checks::wrap(&mut model);
        crate::pad::replace(&mut model);
        let plan = crate::order::runnable(model, &file_order).map_err(unsupported)?;
        Ok(Prepared {
            plan: Some(plan),
            input_order,
            outputs,
        })
    }

    /// Runs the model on validated inputs (in contract order) and returns the contract's `outputs`, in
    /// order. An input that is also an output travels on as it came. Every other input's wire bytes
    /// are freed as soon as tract holds the tensor, and the computed outputs move from tract's buffers
    /// to their wire form one at a time, so the call holds a second copy of at most one tensor.
    pub fn run(&self, inputs: Vec<Tensor>, outputs: &[TensorSpec]) -> Result<Vec<Tensor>, Error> {
        let mut inputs: Vec<Option<Tensor>> = inputs.into_iter().map(Some).collect();
        let passed = |name: &str| outputs.iter().any(|o| o.name == name);
        let mut computed = Vec::with_capacity(self.outputs.len());
        if let Some(plan) = &self.plan {
            let results = plan.run(self.feed(&mut inputs, passed)?).map_err(run_error)?;
            for (t, name) in results.into_iter().zip(&self.outputs) {
                computed.push(from_tract(name, t)?);
            }
        }
        let mut computed = computed.into_iter();
        outputs
            .iter()
            .map(|spec| {
                let passed = inputs.iter_mut().find(|t| t.as_ref().is_some_and(|t| t.name == spec.name));
                match passed {
                    Some(passed) => Ok(passed.take().expect("found above")),
                    None => computed.next().ok_or_else(|| {
                        Error::Internal(format!("the model computed no tensor for output `{}`", spec.name))
                    }),
                }
            })
            .collect()
    }

    /// Runs the model as [`Prepared::run`] does, timing every node of the plan.
    pub fn profile(&self, inputs: Vec<Tensor>) -> Result<Vec<NodeTime>, Error> {
        let Some(plan) = &self.plan else {
            return Ok(Vec::new());
        };
        let mut inputs: Vec<Option<Tensor>> = inputs.into_iter().map(Some).collect();
        let feed = self.feed(&mut inputs, |_| false)?;
        let mut times = Vec::new();
        let mut state = plan.spawn().map_err(internal)?;
        state
            .run_plan_with_eval(feed, |context, op_state, node, input| {
                crate::alloc::take_peak_bytes();
                let started = Instant::now();
                let output = eval(context, op_state, node, input);
                let nanos = started.elapsed().as_nanos() as u64;
                times.push(NodeTime {
                    name: node.name.clone(),
                    op: node.op().name().to_string(),
                    nanos,
                    peak_bytes: crate::alloc::take_peak_bytes(),
                    live_bytes: crate::alloc::live_bytes(),
                });
                output
            })
            .map_err(run_error)?;
        Ok(times)
    }

    /// The model's inputs as tract tensors; the wire form of each is dropped once converted unless
    /// `keep` names it.
    fn feed(
        &self,
        inputs: &mut [Option<Tensor>],
        keep: impl Fn(&str) -> bool,
    ) -> Result<TVec<TValue>, Error> {
        self.input_order
            .iter()
            .map(|&i| {
                let wire = inputs[i].as_ref().expect("each input feeds one model input");
                let tensor = to_tract(wire)?;
                if !keep(&wire.name) {
                    inputs[i] = None;
                }
                Ok(tensor.into_tvalue())
            })
            .collect()
    }
}

/// The names tract gives the model's nodes, in file order: the ONNX name, else the first output's.
fn node_names(proto: &tract_onnx::pb::ModelProto) -> Vec<String> {
    let nodes = proto.graph.iter().flat_map(|g| &g.node);
    nodes
        .map(|n| match (n.name.is_empty(), n.output.first()) {
            (true, Some(output)) => output.clone(),
            _ => n.name.clone(),
        })
        .collect()
}

/// Replaces the placeholder constant of `weight` by the weight itself, read from the blob.
fn fill(model: &mut InferenceModel, weight: &Weight) -> Result<(), Error> {
    let at_fault = |m: String| Error::Unsupported(format!("initializer `{}`: {m}", weight.name));
    let dt: DatumType = DataType::try_from(weight.data_type)
        .map_err(|_| at_fault(format!("unknown data type {}", weight.data_type)))?
        .try_into()
        .map_err(|e| at_fault(format!("{e:#}")))?;
    let shape = weight
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| at_fault(format!("negative dimension {d}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if !dt.is_copy() {
        return Err(at_fault(format!("{dt:?} cannot be read as raw bytes")));
    }
    let tensor = match &weight.dequantize {
        Some(dequantize) => dequantize.read(weight, &shape).map_err(Error::Unsupported)?,
        None => {
            // SAFETY: every byte is overwritten from the blob below before the tensor is used.
            let mut tensor = unsafe { TractTensor::uninitialized_dt(dt, &shape) }
                .map_err(|e| at_fault(format!("{e:#}")))?;
            weight.read(tensor.as_bytes_mut()).map_err(Error::Internal)?;
            if dt == DatumType::Bool {
                tensor.as_bytes_mut().iter_mut().for_each(|b| *b = (*b != 0) as u8);
            }
            tensor
        }
    };
    let tensor = Arc::new(tensor);
    let fact = TypedFact::try_from(tensor.clone()).map_err(|e| at_fault(format!("{e:#}")))?;
    let op = Const::new(tensor).map_err(|e| at_fault(format!("{e:#}")))?;
    let node = model
        .node_by_name_mut(&weight.name)
        .map_err(|_| Error::Internal(format!("initializer `{}` has no node", weight.name)))?;
    node.op = Box::new(op);
    node.outputs[0].fact = fact.into();
    Ok(())
}

fn internal(e: tract_onnx::prelude::TractError) -> Error {
    Error::Internal(format!("{e:#}"))
}

/// A run's failure: the caller's fault when an index it gave is out of range, else internal.
fn run_error(e: tract_onnx::prelude::TractError) -> Error {
    match e.chain().find_map(|cause| cause.downcast_ref::<netless_checks::BadIndices>()) {
        Some(bad) => Error::InvalidInput(bad.to_string()),
        None => internal(e),
    }
}

/// The tract type of a WIT tensor type; tract has no bf16.
fn datum_type(ty: TensorType) -> Option<DatumType> {
    Some(match ty {
        TensorType::F16 => DatumType::F16,
        TensorType::F32 => DatumType::F32,
        TensorType::F64 => DatumType::F64,
        TensorType::U8 => DatumType::U8,
        TensorType::I8 => DatumType::I8,
        TensorType::U16 => DatumType::U16,
        TensorType::I16 => DatumType::I16,
        TensorType::U32 => DatumType::U32,
        TensorType::I32 => DatumType::I32,
        TensorType::U64 => DatumType::U64,
        TensorType::I64 => DatumType::I64,
        TensorType::Boolean => DatumType::Bool,
        TensorType::Bf16 => return None,
    })
}

fn to_tract(t: &Tensor) -> Result<TractTensor, Error> {
    let dt = datum_type(t.ty).ok_or_else(|| {
        Error::Unsupported(format!(
            "input `{}`: {} is not supported",
            t.name,
            type_name(t.ty)
        ))
    })?;
    let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
    // SAFETY: the contract checked the byte count against the shape, and booleans are 0 or 1.
    unsafe { TractTensor::from_raw_dt(dt, &shape, &t.data) }
        .map_err(|e| Error::InvalidInput(format!("input `{}`: {e:#}", t.name)))
}

/// The wire form of a computed output; tract's buffer is freed on return.
fn from_tract(name: &str, t: TValue) -> Result<Tensor, Error> {
    let ty = match t.datum_type() {
        DatumType::F16 => TensorType::F16,
        DatumType::F32 => TensorType::F32,
        DatumType::F64 => TensorType::F64,
        DatumType::U8 => TensorType::U8,
        DatumType::I8 => TensorType::I8,
        DatumType::U16 => TensorType::U16,
        DatumType::I16 => TensorType::I16,
        DatumType::U32 => TensorType::U32,
        DatumType::I32 => TensorType::I32,
        DatumType::U64 => TensorType::U64,
        DatumType::I64 => TensorType::I64,
        DatumType::Bool => TensorType::Boolean,
        other => {
            return Err(Error::Unsupported(format!(
                "output `{name}` has type {other:?}"
            )));
        }
    };
    Ok(Tensor {
        name: name.to_string(),
        ty,
        shape: t.shape().iter().map(|&d| d as u64).collect(),
        data: t.as_bytes().to_vec(),
    })
}
