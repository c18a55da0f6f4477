//! ONNX `PRelu` computed in its input's buffer.
//!
//! tract expands `PRelu(x, slope)` into `x * slope`, `0 > x` and a select of the two: three tensors
//! the size of `x` beside `x` itself, while the node runs (mtcnn_pnet at 480x640 held 37.6 MiB in one
//! 11.6 MiB PRelu). This operator writes `x < 0 ? x * slope : x` over `x` when nothing else reads
//! it (and into one new tensor otherwise), which is what tract's expansion computes.

use tract_onnx::Onnx;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ndarray::Zip;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_hir::internal::{Expansion, InferenceResult, Solver, TensorProxy, expand};
use tract_onnx::tract_hir::infer::{check_input_arity, check_output_arity};

/// The ONNX framework with `PRelu` mapped to [`InPlace`].
pub fn onnx() -> Onnx {
    let mut onnx = tract_onnx::onnx();
    onnx.op_register.insert("PRelu", |_, _| Ok((expand(Prelu), vec![])));
    onnx
}

/// The ONNX node: types and shapes as ONNX defines them, then [`InPlace`].
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct Prelu;

impl Expansion for Prelu {
    fn name(&self) -> StaticName {
        "Prelu".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        name: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let x = inputs[0];
        let mut slope = inputs[1];
        let rank = model.outlet_fact(x)?.rank();
        while model.outlet_fact(slope)?.rank() < rank {
            let axes = model.outlet_fact(slope)?.rank();
            slope =
                model.wire_node(format!("{name}.add-axis-{axes}"), AxisOp::Add(0), &[slope])?[0];
        }
        model.wire_node(name, InPlace, &[x, slope])
    }
}

/// `x < 0 ? x * slope : x`, with `slope` broadcast to `x`, written over `x` when it is not shared.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct InPlace;

impl InPlace {
    fn apply<T: Datum + tract_onnx::tract_core::num_traits::Float>(x: &mut Tensor, slope: &Tensor) -> TractResult<()> {
        let shape = x.shape().to_vec();
        let slope = slope.to_plain_array_view::<T>()?;
        let slope = slope
            .broadcast(&*shape)
            .ok_or_else(|| format_err!("slope of shape {:?} does not broadcast to {shape:?}", slope.shape()))?;
        let mut x = x.to_plain_array_view_mut::<T>()?;
        Zip::from(&mut x).and(&slope).for_each(|x, &s| {
            if *x < T::zero() {
                *x = *x * s;
            }
        });
        Ok(())
    }
}

impl Op for InPlace {
    fn name(&self) -> StaticName {
        "PreluInPlace".into()
    }

    op_as_typed_op!();
}

impl EvalOp for InPlace {
    fn eval(&self, _: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, slope) = args_2!(inputs);
        let mut x = x.into_tensor();
        match x.datum_type() {
            DatumType::F32 => Self::apply::<f32>(&mut x, &slope)?,
            DatumType::F64 => Self::apply::<f64>(&mut x, &slope)?,
            DatumType::F16 => Self::apply::<f16>(&mut x, &slope)?,
            dt => bail!("PRelu of {dt:?} is not supported"),
        }
        Ok(tvec!(x.into_tvalue()))
    }

    fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
        Ok(Some(self.eval(&EvalContext::out_of_plan(), inputs)?))
    }
}

impl TypedOp for InPlace {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.clone())))
    }
}
