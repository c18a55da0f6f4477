//! Operators whose index inputs tract trusts, wrapped so that a bad index is an error naming the
//! node instead of a panic (a trap in a segment): token ids, gather and scatter positions can come
//! from the caller. Shared by the segment runtime and the host's native reference.
//!
//! Wrapped: `Gather`, `GatherElements`, `GatherND`, `ScatterND` and `ScatterElements`. Every index
//! must lie in `-len..len` of the axis it indexes, and index shapes must fit the data; negative
//! `GatherND` / `ScatterND` indices, which ONNX allows and tract does not take, are resolved first.
#![deny(missing_docs)]

use std::fmt;

use tract_onnx::prelude::{IntoTValue, TValue, TVec, Tensor, TractResult, TypedFact, TypedModel};
use tract_onnx::tract_core::internal::{EvalContext, EvalOp, Op, StaticName, TypedOp};
use tract_onnx::tract_core::ops::array::{Gather, GatherElements, GatherNd, ScatterElements, ScatterNd};
use tract_onnx::tract_core::{as_op, op_as_typed_op};

/// Indices that do not fit the data they index.
#[derive(Debug)]
pub struct BadIndices {
    node: String,
    reason: String,
}

impl fmt::Display for BadIndices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node `{}`: {}", self.node, self.reason)
    }
}

impl std::error::Error for BadIndices {}

/// Replaces every indexing operator of an optimised model by one that checks its indices first.
pub fn wrap(model: &mut TypedModel) {
    for node in &mut model.nodes {
        let op = if let Some(op) = node.op_as::<Gather>() {
            Indexing::Gather(op.clone())
        } else if let Some(op) = node.op_as::<GatherElements>() {
            Indexing::GatherElements(op.clone())
        } else if let Some(op) = node.op_as::<GatherNd>() {
            Indexing::GatherNd(op.clone())
        } else if let Some(op) = node.op_as::<ScatterNd>() {
            Indexing::ScatterNd(op.clone())
        } else if let Some(op) = node.op_as::<ScatterElements>() {
            Indexing::ScatterElements(op.clone())
        } else {
            continue;
        };
        node.op = Box::new(Checked { op, node: node.name.clone() });
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Indexing {
    Gather(Gather),
    GatherElements(GatherElements),
    GatherNd(GatherNd),
    ScatterNd(ScatterNd),
    ScatterElements(ScatterElements),
}

/// A tract indexing operator, run after its indices are checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Checked {
    op: Indexing,
    node: String,
}

impl Checked {
    fn inner(&self) -> &dyn TypedOp {
        match &self.op {
            Indexing::Gather(op) => op,
            Indexing::GatherElements(op) => op,
            Indexing::GatherNd(op) => op,
            Indexing::ScatterNd(op) => op,
            Indexing::ScatterElements(op) => op,
        }
    }

    /// The inputs to run the inner operator on (indices resolved where it needs that), or why not.
    fn checked(&self, mut inputs: TVec<TValue>) -> Result<TVec<TValue>, String> {
        if !inputs.iter().all(|t| t.is_plain()) {
            return Ok(inputs);
        }
        let data = inputs[0].shape().to_vec();
        let indices = inputs[1].cast_to::<i64>().map_err(|e| format!("indices: {e}"))?;
        let plain = indices.try_as_plain_ram().map_err(|e| format!("indices: {e}"))?;
        let (index_shape, values) = (indices.shape().to_vec(), plain.as_slice::<i64>().map_err(|e| format!("indices: {e}"))?);
        match &self.op {
            Indexing::Gather(op) => {
                let len = *data.get(op.axis).ok_or("axis beyond the data's rank")?;
                values.iter().try_for_each(|&i| resolve(i, op.axis, len).map(drop))
            }
            Indexing::GatherElements(GatherElements { axis }) | Indexing::ScatterElements(ScatterElements { axis, .. }) => {
                if let Indexing::ScatterElements(_) = self.op
                    && inputs[2].shape() != index_shape.as_slice()
                {
                    return Err(format!("updates of shape {:?} do not match indices of shape {index_shape:?}", inputs[2].shape()));
                }
                let fits = index_shape.len() == data.len() && index_shape.iter().zip(&data).enumerate().all(|(d, (i, n))| d == *axis || i <= n);
                if !fits || *axis >= data.len() {
                    return Err(format!("indices of shape {index_shape:?} do not fit data of shape {data:?} off axis {axis}"));
                }
                values.iter().try_for_each(|&i| resolve(i, *axis, data[*axis]).map(drop))
            }
            Indexing::GatherNd(GatherNd { batch_dims }) => {
                let depth = tuple_depth(&index_shape, data.len() - (*batch_dims).min(data.len()))?;
                if index_shape.len() <= *batch_dims || data.len() < *batch_dims || index_shape[..*batch_dims] != data[..*batch_dims] {
                    return Err(format!("indices of shape {index_shape:?} do not share the {batch_dims} batch dimensions of data of shape {data:?}"));
                }
                inputs[1] = resolve_tuples(&index_shape, values, &data[*batch_dims..*batch_dims + depth])?;
                Ok(())
            }
            Indexing::ScatterNd(_) => {
                let depth = tuple_depth(&index_shape, data.len())?;
                let expected: Vec<usize> = index_shape[..index_shape.len() - 1].iter().chain(&data[depth..]).copied().collect();
                if inputs[2].shape() != expected.as_slice() {
                    return Err(format!("updates of shape {:?}, but indices of shape {index_shape:?} into data of shape {data:?} need {expected:?}", inputs[2].shape()));
                }
                inputs[1] = resolve_tuples(&index_shape, values, &data[..depth])?;
                Ok(())
            }
        }?;
        Ok(inputs)
    }
}

/// `index` as a position in an axis of `len`, counting negatives from the end.
fn resolve(index: i64, axis: usize, len: usize) -> Result<i64, String> {
    let len = len as i64;
    match (-len..len).contains(&index) {
        true => Ok(if index < 0 { index + len } else { index }),
        false => Err(format!("index {index} is out of range for axis {axis} of size {len} (valid: -{len} to {})", len - 1)),
    }
}

/// The length of the index tuples (the indices' last dimension), at most `rank`.
fn tuple_depth(index_shape: &[usize], rank: usize) -> Result<usize, String> {
    match index_shape.last() {
        Some(&depth) if depth <= rank => Ok(depth),
        _ => Err(format!("indices of shape {index_shape:?}: the last dimension gives the length of each index tuple, at most {rank} here")),
    }
}

/// Index tuples with every coordinate resolved against the axes of `axes`.
fn resolve_tuples(index_shape: &[usize], values: &[i64], axes: &[usize]) -> Result<TValue, String> {
    let resolved = values
        .chunks(axes.len().max(1))
        .flat_map(|tuple| tuple.iter().zip(axes).enumerate().map(|(axis, (&i, &len))| resolve(i, axis, len)))
        .collect::<Result<Vec<i64>, String>>()?;
    Tensor::from_shape(index_shape, &resolved).map(IntoTValue::into_tvalue).map_err(|e| format!("indices: {e}"))
}

impl Op for Checked {
    fn name(&self) -> StaticName {
        format!("Checked{}", self.inner().name()).into()
    }

    op_as_typed_op!();
}

impl EvalOp for Checked {
    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let inputs = self.checked(inputs).map_err(|reason| BadIndices { node: self.node.clone(), reason })?;
        self.inner().eval(ctx, inputs)
    }

    fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
        Ok(Some(self.eval(&EvalContext::out_of_plan(), inputs)?))
    }
}

impl TypedOp for Checked {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.inner().output_facts(inputs)
    }
}
