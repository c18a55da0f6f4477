//! Constant padding written straight into the output tensor.
//!
//! tract's `Pad` builds its output as an ndarray and then copies it into a tensor, so it holds the
//! padded output twice while it runs. Every convolution with padding pads its input this way in the
//! wasm runtime (its kernel reads patches from the padded input), so that second copy was the
//! largest buffer of many segments: ppocr_v4_det's head at 800x608 held 22.8 MiB more in one Pad of
//! an 11.4 MiB map. [`replace`] swaps every constant `Pad` of an optimised model for [`Direct`].

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ndarray::{IxDyn, SliceInfo, SliceInfoElem};
use tract_onnx::tract_core::ops::array::{Pad, PadMode};

/// Replaces every constant-mode `Pad` of `model` by [`Direct`].
pub fn replace(model: &mut TypedModel) {
    for node in &mut model.nodes {
        let Some(pad) = node.op_as::<Pad>() else { continue };
        if let PadMode::Constant(value) = &pad.mode {
            node.op = Box::new(Direct {
                pad: pad.clone(),
                value: value.clone(),
            });
        }
    }
}

/// tract's constant `Pad`, computed into one newly allocated tensor.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct Direct {
    pad: Pad,
    value: Arc<Tensor>,
}

impl Direct {
    /// Fills `output` with `value` and copies `input` inside the padding; `T` is any type of the
    /// tensors' element size (the bytes are copied, not interpreted).
    fn fill<T: Datum + Copy>(&self, input: &Tensor, output: &mut Tensor, value: &Tensor) {
        // SAFETY: `T` has the element size of both tensors, and the views cover their shapes.
        let (input, mut output, value) = unsafe {
            (
                input.to_array_view_unchecked::<T>(),
                output.to_array_view_mut_unchecked::<T>(),
                *value.as_slice_unchecked::<T>().first().expect("a pad value"),
            )
        };
        output.fill(value);
        let interior: Vec<SliceInfoElem> = self
            .pad
            .pads
            .iter()
            .map(|&(before, after)| SliceInfoElem::Slice {
                start: before as isize,
                end: (after != 0).then(|| -(after as isize)),
                step: 1,
            })
            .collect();
        let interior = SliceInfo::<_, IxDyn, IxDyn>::try_from(interior).expect("one slice per axis");
        output.slice_mut(interior.as_ref()).assign(&input);
    }
}

impl Op for Direct {
    fn name(&self) -> StaticName {
        "PadDirect".into()
    }

    op_as_typed_op!();
}

impl EvalOp for Direct {
    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let dt = input.datum_type();
        if !dt.is_copy() {
            return self.pad.eval(ctx, inputs);
        }
        let shape: Vec<usize> = input
            .shape()
            .iter()
            .zip(&self.pad.pads)
            .map(|(&d, &(before, after))| d + before + after)
            .collect();
        let value = self.value.cast_to_dt(dt)?;
        // SAFETY: `fill` writes every element before the tensor is used.
        let mut output = unsafe { Tensor::uninitialized_dt(dt, &shape)? };
        match dt.size_of() {
            1 => self.fill::<u8>(input, &mut output, &value),
            2 => self.fill::<u16>(input, &mut output, &value),
            4 => self.fill::<u32>(input, &mut output, &value),
            8 => self.fill::<u64>(input, &mut output, &value),
            _ => return self.pad.eval(ctx, inputs),
        }
        Ok(tvec!(output.into_tvalue()))
    }

    fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
        Ok(Some(self.eval(&EvalContext::out_of_plan(), inputs)?))
    }
}

impl TypedOp for Direct {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.pad.output_facts(inputs)
    }
}
