//! Running ONNX models in native tract: the reference the split is checked against.

use std::collections::HashMap;

use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;

use crate::onnx::ElemType;
use crate::plan::file::TensorSpec;
use crate::{Error, Result};

/// An ONNX model prepared for native tract, with its tensor contract.
pub struct NativeModel {
    what: String,
    runnable: std::sync::Arc<TypedRunnableModel>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<(String, ElemType)>,
}

impl NativeModel {
    /// Prepares `proto` (named `what` in errors) for inputs of the given types and shapes.
    pub fn new(proto: &ModelProto, what: &str, inputs: &[TensorSpec]) -> Result<NativeModel> {
        let fail = |e: TractError| Error::Tract { what: what.into(), reason: format!("{e:#}") };
        let mut model = tract_onnx::onnx().with_ignore_value_info(true).model_for_proto_model(proto).map_err(fail)?;
        let mut ordered = Vec::new();
        for (ix, outlet) in model.input_outlets().map_err(fail)?.to_vec().into_iter().enumerate() {
            let name = model.node(outlet.node).name.clone();
            let spec = inputs.iter().find(|s| s.name == name).ok_or_else(|| Error::Tensor {
                name: name.clone(),
                reason: format!("{what} needs this input but none was given"),
            })?;
            let dt = spec.dtype.to_tract().ok_or_else(|| Error::Tensor { name: name.clone(), reason: format!("type {} unsupported", spec.dtype) })?;
            let dims: Vec<usize> = spec.shape.iter().map(|&d| d as usize).collect();
            model.set_input_fact(ix, InferenceFact::dt_shape(dt, dims)).map_err(fail)?;
            ordered.push(spec.clone());
        }
        let graph = proto.graph.as_ref().ok_or_else(|| Error::Tract { what: what.into(), reason: "no graph".into() })?;
        let outputs = graph
            .output
            .iter()
            .map(|o| {
                let code = match o.r#type.as_ref().and_then(|t| t.value.as_ref()) {
                    Some(tract_onnx::pb::type_proto::Value::TensorType(t)) => t.elem_type,
                    None => 0,
                };
                (o.name.clone(), ElemType::from_onnx(code).unwrap_or(ElemType::F32))
            })
            .collect();
        let mut model = model.into_optimized().map_err(fail)?;
        netless_checks::wrap(&mut model);
        let runnable = model.into_runnable().map_err(fail)?;
        Ok(NativeModel { what: what.into(), runnable, inputs: ordered, outputs })
    }

    /// Runs on the named tensors in `env` (extra tensors are ignored); returns outputs in declared order,
    /// converted to their declared element types.
    pub fn run(&self, env: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>> {
        let fail = |e: TractError| Error::Tract { what: self.what.clone(), reason: format!("{e:#}") };
        let outputs = self.runnable.run(self.feed(env)?).map_err(fail)?;
        self.outputs
            .iter()
            .zip(outputs)
            .map(|((name, dtype), value)| {
                let dt = dtype.to_tract().unwrap_or(DatumType::F32);
                let tensor = value.into_tensor();
                let tensor = if tensor.datum_type() == dt { tensor } else { tensor.cast_to_dt(dt).map_err(fail)?.into_owned() };
                Ok((name.clone(), tensor))
            })
            .collect()
    }

    /// Runs the model timing every node of the plan: `(operator, nanoseconds)` in execution order.
    pub fn profile(&self, env: &HashMap<String, Tensor>) -> Result<Vec<(String, u64)>> {
        let fail = |e: TractError| Error::Tract { what: self.what.clone(), reason: format!("{e:#}") };
        let mut times = Vec::new();
        let mut state = self.runnable.spawn().map_err(fail)?;
        state
            .run_plan_with_eval(self.feed(env)?, |context, op_state, node, input| {
                let started = std::time::Instant::now();
                let output = tract_onnx::tract_core::plan::eval(context, op_state, node, input);
                times.push((node.op().name().to_string(), started.elapsed().as_nanos() as u64));
                output
            })
            .map_err(fail)?;
        Ok(times)
    }

    fn feed(&self, env: &HashMap<String, Tensor>) -> Result<TVec<TValue>> {
        let mut values = TVec::new();
        for spec in &self.inputs {
            let tensor = env.get(&spec.name).ok_or_else(|| Error::Tensor {
                name: spec.name.clone(),
                reason: format!("{} needs this input but none was given", self.what),
            })?;
            let shape: Vec<u64> = tensor.shape().iter().map(|&d| d as u64).collect();
            if shape != spec.shape {
                return Err(Error::Tensor { name: spec.name.clone(), reason: format!("shape {shape:?}, expected {:?}", spec.shape) });
            }
            values.push(tensor.clone().into_tvalue());
        }
        Ok(values)
    }
}
