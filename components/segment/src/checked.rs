//! Operators whose index inputs tract trusts, wrapped so that an index out of range is an error
//! naming the node instead of a trap: an embedding's token ids come from the caller.

use std::fmt;

use tract_onnx::prelude::{TValue, TVec, TractResult, TypedFact, TypedModel};
use tract_onnx::tract_core::internal::{EvalContext, EvalOp, Op, StaticName, TypedOp};
use tract_onnx::tract_core::{as_op, op_as_typed_op};
use tract_onnx::tract_core::ops::array::Gather;

/// An index that lies outside the axis it indexes.
#[derive(Debug)]
pub struct OutOfRange {
    node: String,
    index: i64,
    axis: usize,
    len: usize,
}

impl fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node `{}`: index {} is out of range for axis {} of size {} (valid: -{} to {})",
            self.node,
            self.index,
            self.axis,
            self.len,
            self.len,
            self.len as i64 - 1
        )
    }
}

impl std::error::Error for OutOfRange {}

/// Replaces every `Gather` of the optimised model by one that checks its indices first.
pub fn wrap(model: &mut TypedModel) {
    for node in &mut model.nodes {
        if let Some(gather) = node.op_as::<Gather>() {
            node.op = Box::new(CheckedGather { inner: gather.clone(), node: node.name.clone() });
        }
    }
}

/// tract's `Gather`, after checking that every index lies in `-len..len` of its axis.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CheckedGather {
    inner: Gather,
    node: String,
}

impl Op for CheckedGather {
    fn name(&self) -> StaticName {
        "CheckedGather".into()
    }

    op_as_typed_op!();
}

impl EvalOp for CheckedGather {
    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let axis = self.inner.axis;
        if let (true, Some(&len)) = (inputs[0].is_plain(), inputs[0].shape().get(axis)) {
            let indices = inputs[1].to_plain_array_view::<i64>()?;
            if let Some(&index) = indices.iter().find(|&&i| i < -(len as i64) || i >= len as i64) {
                return Err(OutOfRange { node: self.node.clone(), index, axis, len }.into());
            }
        }
        self.inner.eval(ctx, inputs)
    }

    fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
        Ok(Some(self.eval(&EvalContext::out_of_plan(), inputs)?))
    }
}

impl TypedOp for CheckedGather {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.inner.output_facts(inputs)
    }
}
