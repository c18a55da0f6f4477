//! The generic NetLess segment runtime: one WASI 0.2 component, built once, that runs any segment.
//!
//! The segment's model comes from the `segment-data` import (a per-segment data component). On the
//! first call the runtime walks that blob ([`blob`]), decodes its contract ([`contract`]) and prepares the model
//! with tract ([`backend`]); both live as long as the instance, so only the first call pays for them.

mod alloc;
mod backend;
mod blob;
mod contract;
mod dequantize;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod kernels;
mod optimize;
mod order;
mod pad;
mod prelu;

use std::cell::OnceCell;

wit_bindgen::generate!({ world: "segment-runtime", path: "../../wit" });

use exports::netless::inference::infer_segment::Guest;
use netless::inference::types::{Error, SegmentInfo, Tensor};

/// What one instance knows about its segment once the blob has been read.
struct Loaded {
    contract: contract::Contract,
    /// The prepared model, or why it could not be prepared (reported by every `infer`).
    model: Result<backend::Prepared, Error>,
}

thread_local! {
    static LOADED: OnceCell<Loaded> = const { OnceCell::new() };
}

/// Runs `f` on the loaded segment, reading and preparing it on the first call.
///
/// A blob that is not an ONNX model has no contract to report, so `info` cannot answer: that is
/// a broken artifact and the instance traps with the reason (the host names the segment).
fn with_loaded<R>(f: impl FnOnce(&Loaded) -> R) -> R {
    LOADED.with(|cell| {
        let loaded = cell.get_or_init(|| {
            let skeleton = blob::read_skeleton().unwrap_or_else(|e| panic!("segment blob: {e}"));
            let contract = contract::Contract::from_proto(&skeleton.proto)
                .unwrap_or_else(|e| panic!("segment contract: {e}"));
            let model = backend::Prepared::load(skeleton, &contract);
            Loaded { contract, model }
        });
        f(loaded)
    })
}

struct Runtime;

impl Guest for Runtime {
    fn info() -> SegmentInfo {
        with_loaded(|loaded| loaded.contract.info.clone())
    }

    fn infer(inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
        alloc::stop_zeroing();
        with_loaded(|loaded| {
            let model = loaded.model.as_ref().map_err(Clone::clone)?;
            let inputs = loaded.contract.validate(inputs)?;
            model.run(inputs, &loaded.contract.info.outputs)
        })
    }
}

impl exports::netless::inference::profile::Guest for Runtime {
    fn infer_profiled(
        inputs: Vec<Tensor>,
    ) -> Result<Vec<exports::netless::inference::profile::NodeTime>, Error> {
        alloc::stop_zeroing();
        with_loaded(|loaded| {
            let model = loaded.model.as_ref().map_err(Clone::clone)?;
            model.profile(loaded.contract.validate(inputs)?)
        })
    }
}

export!(Runtime);
