//! The per-segment data component: a core module holding the blob in a data segment, wrapped as a
//! component exporting `netless:inference/segment-data`.
//!
//! `read` returns a pointer into the data segment, so the component copies nothing itself; the
//! canonical ABI lifts the bytes straight out of its memory. Reads past the end are clamped.

use wasm_encoder::{
    CodeSection, ConstExpr, DataSection, ExportKind, ExportSection, Function, FunctionSection,
    Instruction, MemArg, MemorySection, MemoryType, Module, TypeSection, ValType,
};
use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::Resolve;

use super::{INFERENCE_WIT, SEGMENT_DATA};

/// Where the blob starts in linear memory; bytes 0..8 are the return area of `read`.
const BLOB_OFFSET: u32 = 8;
const PAGE: u64 = 64 * 1024;

/// Why a data component could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DataComponentError {
    /// The blob does not fit a 32-bit linear memory.
    #[error("blob of {size} bytes does not fit a data component (at most {max} bytes)")]
    BlobTooLarge {
        /// Size of the blob.
        size: u64,
        /// Largest blob a data component can hold.
        max: u64,
    },
    /// wit-component refused the module (a bug in this generator).
    #[error("encoding the data component: {0:#}")]
    Encode(anyhow::Error),
}

/// Builds the data component serving `blob` through `netless:inference/segment-data@0.1.0`.
pub fn build(blob: &[u8]) -> Result<Vec<u8>, DataComponentError> {
    let max = u64::from(u32::MAX) + 1 - u64::from(BLOB_OFFSET);
    let len = blob.len() as u64;
    if len > max {
        return Err(DataComponentError::BlobTooLarge { size: len, max });
    }
    let mut module = core_module(blob).finish();
    let mut resolve = Resolve::default();
    let encode = DataComponentError::Encode;
    let package = resolve
        .push_str("inference.wit", INFERENCE_WIT)
        .map_err(encode)?;
    let world = resolve
        .select_world(&[package], Some("segment-data-provider"))
        .map_err(encode)?;
    wit_component::embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)
        .map_err(encode)?;
    ComponentEncoder::default()
        .module(&module)
        .map_err(encode)?
        .validate(true)
        .encode()
        .map_err(encode)
}

/// The core module: `size() -> i64` and `read(offset: i64, len: i32) -> i32` (a return-area
/// pointer to the `(ptr, len)` of the list), over one memory initialised with the blob.
fn core_module(blob: &[u8]) -> Module {
    let len = blob.len() as u64;
    let pages = (u64::from(BLOB_OFFSET) + len).div_ceil(PAGE).max(1);

    let mut types = TypeSection::new();
    types.ty().function([], [ValType::I64]);
    types
        .ty()
        .function([ValType::I64, ValType::I32], [ValType::I32]);
    let mut functions = FunctionSection::new();
    functions.function(0);
    functions.function(1);
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: pages,
        maximum: Some(pages),
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut exports = ExportSection::new();
    exports.export("memory", ExportKind::Memory, 0);
    exports.export(&format!("{SEGMENT_DATA}#size"), ExportKind::Func, 0);
    exports.export(&format!("{SEGMENT_DATA}#read"), ExportKind::Func, 1);

    let mut code = CodeSection::new();
    let mut size = Function::new([]);
    size.instruction(&Instruction::I64Const(len as i64));
    size.instruction(&Instruction::End);
    code.function(&size);
    code.function(&read_function(len));

    let mut data = DataSection::new();
    data.active(
        0,
        &ConstExpr::i32_const(BLOB_OFFSET as i32),
        blob.iter().copied(),
    );

    let mut module = Module::new();
    module
        .section(&types)
        .section(&functions)
        .section(&memories)
        .section(&exports)
        .section(&code)
        .section(&data);
    module
}

/// `read(offset, want)`: `start = min(offset, len)`, `n = min(len - start, want)`; writes
/// `(BLOB_OFFSET + start, n)` to the return area at 0 and returns 0.
fn read_function(len: u64) -> Function {
    use Instruction as I;
    let len = len as i64;
    let (offset, want, start) = (0, 1, 2);
    let word = |at| MemArg {
        offset: at,
        align: 2,
        memory_index: 0,
    };
    let mut f = Function::new([(1, ValType::I64)]);
    for i in [
        // start = offset < len ? offset : len
        I::LocalGet(offset),
        I::I64Const(len),
        I::LocalGet(offset),
        I::I64Const(len),
        I::I64LtU,
        I::Select,
        I::LocalSet(start),
        // *0 = BLOB_OFFSET + start
        I::I32Const(0),
        I::LocalGet(start),
        I::I32WrapI64,
        I::I32Const(BLOB_OFFSET as i32),
        I::I32Add,
        I::I32Store(word(0)),
        // *4 = (len - start) < want ? (len - start) : want
        I::I32Const(0),
        I::I64Const(len),
        I::LocalGet(start),
        I::I64Sub,
        I::LocalGet(want),
        I::I64ExtendI32U,
        I::I64Const(len),
        I::LocalGet(start),
        I::I64Sub,
        I::LocalGet(want),
        I::I64ExtendI32U,
        I::I64LtU,
        I::Select,
        I::I32WrapI64,
        I::I32Store(word(4)),
        I::I32Const(0),
        I::End,
    ] {
        f.instruction(&i);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(bytes: &[u8]) {
        let mut validator =
            wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
        validator.validate_all(bytes).expect("valid component");
    }

    #[test]
    fn builds_a_valid_component_for_empty_and_small_blobs() {
        for blob in [&b""[..], b"hello", &[7u8; 70_000]] {
            let component = build(blob).unwrap();
            assert!(wasmparser::Parser::is_component(&component));
            validate(&component);
        }
    }
}
