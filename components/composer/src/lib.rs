//! The pair combinator: a component importing two stages (`first`, `second`) and exporting one
//! `infer-segment` that runs them in sequence. `netless compose` folds it over a pipeline's segments.
//!
//! Tensors flow like the plan's chain: `second` receives everything `first` returns, plus any of the
//! caller's inputs that `second` declares and `first` did not return.

wit_bindgen::generate!({ world: "pair", path: "../../wit" });

use exports::netless::inference::infer_segment::Guest;
use netless::inference::types::{Error, SegmentInfo, Tensor};
use netless::inference::{first, second};

struct Pair;

impl Guest for Pair {
    fn info() -> SegmentInfo {
        let a = first::info();
        let b = second::info();
        SegmentInfo { model: a.model, index: a.index, count: b.index + 1 - a.index, inputs: a.inputs, outputs: b.outputs }
    }

    fn infer(inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
        let wanted = second::info().inputs;
        let first_inputs: Vec<String> = first::info().inputs.into_iter().map(|s| s.name).collect();
        let (for_first, rest): (Vec<Tensor>, Vec<Tensor>) = inputs.into_iter().partition(|t| first_inputs.contains(&t.name));
        let mut middle = first::infer(&for_first)?;
        for t in rest {
            if wanted.iter().any(|s| s.name == t.name) && !middle.iter().any(|m| m.name == t.name) {
                middle.push(t);
            }
        }
        second::infer(&middle)
    }
}

export!(Pair);
