//! The pair combinator: a component importing two stages (`first`, `second`) and exporting one
//! `infer-segment` that runs them. `netless compose` folds it over a pipeline's stages, and over the
//! shards of a group.
//!
//! Tensors flow by name: `first` gets the caller's tensors it declares; `second` gets those of
//! `first`'s outputs and of the caller's tensors it declares. The pair returns `second`'s outputs and
//! the outputs of `first` that `second` does not take, so folded over a chain it is `first` then
//! `second`, and folded over the shards of a group (which take the same input and make separate
//! partial outputs) it runs them all and returns every partial.

wit_bindgen::generate!({ world: "pair", path: "../../wit" });

use exports::netless::inference::infer_segment::Guest;
use netless::inference::types::{Error, SegmentInfo, Tensor, TensorSpec};
use netless::inference::{first, second};

struct Pair;

fn declares(specs: &[TensorSpec], name: &str) -> bool {
    specs.iter().any(|s| s.name == name)
}

impl Guest for Pair {
    fn info() -> SegmentInfo {
        let (a, b) = (first::info(), second::info());
        let mut inputs = a.inputs;
        for spec in &b.inputs {
            if !declares(&a.outputs, &spec.name) && !declares(&inputs, &spec.name) {
                inputs.push(spec.clone());
            }
        }
        let mut outputs: Vec<TensorSpec> = a.outputs.into_iter().filter(|o| !declares(&b.inputs, &o.name)).collect();
        outputs.extend(b.outputs);
        SegmentInfo { model: a.model, index: a.index, count: b.index + 1 - a.index, inputs, outputs }
    }

    fn infer(inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
        let (a, b) = (first::info().inputs, second::info().inputs);
        let (for_first, rest): (Vec<Tensor>, Vec<Tensor>) = inputs.into_iter().partition(|t| declares(&a, &t.name));
        let shared: Vec<Tensor> = for_first.iter().filter(|t| declares(&b, &t.name)).cloned().collect();
        let (mut for_second, mut kept): (Vec<Tensor>, Vec<Tensor>) = first::infer(&for_first)?.into_iter().partition(|t| declares(&b, &t.name));
        drop(for_first);
        for t in shared.into_iter().chain(rest) {
            if declares(&b, &t.name) && !for_second.iter().any(|m| m.name == t.name) {
                for_second.push(t);
            }
        }
        kept.extend(second::infer(&for_second)?);
        Ok(kept)
    }
}

export!(Pair);
