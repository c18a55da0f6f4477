//! Reading the segment's blob without holding it: the ONNX model is walked through the
//! `segment-data` import, and the bytes of its large initializers are left where they are.
//!
//! [`read_skeleton`] returns the model without those bytes (each large initializer becomes an
//! empty placeholder) and where each one lies in the blob; [`Weight::read`] later copies one
//! tensor straight into the buffer that keeps it, so the runtime never holds two copies of the
//! weights.

use prost::Message;
use prost::encoding::{WireType, decode_varint, encode_key, encode_varint};
use tract_onnx::pb;

use crate::dequantize::Dequantize;
use crate::netless::inference::segment_data;

/// Size of one `segment-data.read`: large enough to amortise the call, small enough to stay cheap.
const READ_CHUNK: u32 = 1 << 20;

/// Initializers whose raw bytes are at least this long stay in the blob until they are read.
const STRIPPED_AT_LEAST: u64 = 4096;

/// `ModelProto.graph`, `GraphProto.initializer`, `TensorProto.raw_data`.
const MODEL_GRAPH: u32 = 7;
const GRAPH_INITIALIZER: u32 = 5;
const TENSOR_RAW_DATA: u32 = 9;

/// A large initializer left in the blob.
pub struct Weight {
    /// The initializer's name.
    pub name: String,
    /// Its ONNX data type.
    pub data_type: i32,
    /// Its dimensions (the placeholder in the skeleton has others).
    pub dims: Vec<i64>,
    /// Where its raw little-endian bytes start in the blob.
    pub offset: u64,
    /// How many bytes they are.
    pub len: u64,
    /// Set when the weight is read as the f32 values of its dequantization.
    pub dequantize: Option<Dequantize>,
}

impl Weight {
    /// Copies the tensor's bytes from the blob into `dst` (exactly `len` bytes long).
    pub fn read(&self, dst: &mut [u8]) -> Result<(), String> {
        if dst.len() as u64 != self.len {
            return Err(format!(
                "initializer `{}`: {} bytes in the blob, {} expected from its type and dims",
                self.name,
                self.len,
                dst.len()
            ));
        }
        self.chunks(|at, chunk| dst[at..at + chunk.len()].copy_from_slice(chunk))
    }

    /// Hands the tensor's bytes to `each` one read at a time, with their offset.
    pub fn chunks(&self, mut each: impl FnMut(usize, &[u8])) -> Result<(), String> {
        let mut at = 0;
        while (at as u64) < self.len {
            let want = (self.len - at as u64).min(u64::from(READ_CHUNK)) as u32;
            let chunk = segment_data::read(self.offset + at as u64, want);
            if chunk.is_empty() || chunk.len() > want as usize {
                return Err(format!("initializer `{}`: the blob ends early", self.name));
            }
            each(at, &chunk);
            at += chunk.len();
        }
        Ok(())
    }
}

/// The model without its large initializers' bytes, and where those are.
pub struct Skeleton {
    /// The decoded model; large initializers are empty placeholders of dims `[0, i]`.
    pub proto: pb::ModelProto,
    /// The large initializers, the `i`-th one with the placeholder of dims `[0, i]`.
    pub weights: Vec<Weight>,
}

/// Walks the blob and decodes everything but the large initializers' bytes.
pub fn read_skeleton() -> Result<Skeleton, String> {
    let size = segment_data::size();
    let mut reader = Reader { size, window: Vec::new(), window_at: 0, pos: 0 };
    let mut weights = Vec::new();
    let mut model = Vec::new();
    reader
        .message(size, &mut model, &mut |reader, field, len, out| {
            if field != MODEL_GRAPH {
                return Ok(false);
            }
            let mut graph = Vec::new();
            let end = reader.pos + len;
            reader.message(end, &mut graph, &mut |reader, field, len, out| {
                if field != GRAPH_INITIALIZER {
                    return Ok(false);
                }
                let tensor = reader.tensor(len, weights.len())?;
                if let Some((bytes, weight)) = tensor {
                    weights.push(weight);
                    put_bytes(out, GRAPH_INITIALIZER, &bytes);
                    Ok(true)
                } else {
                    Ok(false)
                }
            })?;
            put_bytes(out, MODEL_GRAPH, &graph);
            Ok(true)
        })
        .map_err(|e| format!("not an ONNX model ({size} bytes): {e}"))?;
    let proto = pb::ModelProto::decode(model.as_slice())
        .map_err(|e| format!("not an ONNX model ({size} bytes): {e}"))?;
    Ok(Skeleton { proto, weights })
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    encode_key(field, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// A cursor over the blob, through a window of one read.
struct Reader {
    size: u64,
    window: Vec<u8>,
    window_at: u64,
    pos: u64,
}

/// Handles one length-delimited field (`field`, `len` bytes at the cursor) of a message being
/// copied into `out`; returns false to have it copied unchanged.
type Field<'a> = dyn FnMut(&mut Reader, u32, u64, &mut Vec<u8>) -> Result<bool, String> + 'a;

impl Reader {
    fn byte(&mut self) -> Result<u8, String> {
        if self.pos < self.window_at || self.pos >= self.window_at + self.window.len() as u64 {
            if self.pos >= self.size {
                return Err(format!("truncated at byte {}", self.pos));
            }
            let want = (self.size - self.pos).min(u64::from(READ_CHUNK)) as u32;
            self.window = segment_data::read(self.pos, want);
            self.window_at = self.pos;
            if self.window.is_empty() {
                return Err(format!("the blob ends early, at byte {}", self.pos));
            }
        }
        let b = self.window[(self.pos - self.window_at) as usize];
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut bytes = [0u8; 10];
        for (i, slot) in bytes.iter_mut().enumerate() {
            *slot = self.byte()?;
            if *slot < 0x80 {
                return decode_varint(&mut &bytes[..=i]).map_err(|e| e.to_string());
            }
        }
        Err(format!("bad varint before byte {}", self.pos))
    }

    fn copy(&mut self, len: u64, out: &mut Vec<u8>) -> Result<(), String> {
        if self.pos + len > self.size {
            return Err(format!("a field of {len} bytes at byte {} runs past the end", self.pos));
        }
        let end = self.pos + len;
        while self.pos < end {
            self.byte()?;
            let from = (self.pos - 1 - self.window_at) as usize;
            let upto = (end - self.window_at).min(self.window.len() as u64) as usize;
            out.extend_from_slice(&self.window[from..upto]);
            self.pos = self.window_at + upto as u64;
        }
        Ok(())
    }

    /// Copies the fields up to `end` into `out`, letting `handle` take length-delimited ones.
    fn message(&mut self, end: u64, out: &mut Vec<u8>, handle: &mut Field) -> Result<(), String> {
        while self.pos < end {
            let key = self.varint()?;
            let field = (key >> 3) as u32;
            match key & 7 {
                0 => {
                    let v = self.varint()?;
                    encode_varint(key, out);
                    encode_varint(v, out);
                }
                1 => {
                    encode_varint(key, out);
                    self.copy(8, out)?;
                }
                5 => {
                    encode_varint(key, out);
                    self.copy(4, out)?;
                }
                2 => {
                    let len = self.varint()?;
                    let start = self.pos;
                    if !handle(self, field, len, out)? {
                        self.pos = start;
                        encode_varint(key, out);
                        encode_varint(len, out);
                        self.copy(len, out)?;
                    }
                    self.pos = start + len;
                }
                wire => return Err(format!("unsupported wire type {wire} at byte {}", self.pos)),
            }
        }
        if self.pos != end {
            return Err(format!("a message overruns its length, at byte {}", self.pos));
        }
        Ok(())
    }

    /// Reads one `TensorProto` of `len` bytes; if its raw bytes are large, returns it as the
    /// `index`-th placeholder (encoded) and where its bytes are.
    fn tensor(&mut self, len: u64, index: usize) -> Result<Option<(Vec<u8>, Weight)>, String> {
        let end = self.pos + len;
        let mut raw = None;
        let mut rest = Vec::new();
        self.message(end, &mut rest, &mut |reader, field, len, _| {
            if field == TENSOR_RAW_DATA && len >= STRIPPED_AT_LEAST {
                raw = Some((reader.pos, len));
                return Ok(true);
            }
            Ok(false)
        })?;
        let Some((offset, len)) = raw else {
            return Ok(None);
        };
        let mut tensor = pb::TensorProto::decode(rest.as_slice()).map_err(|e| e.to_string())?;
        let weight = Weight {
            name: tensor.name.clone(),
            data_type: tensor.data_type,
            dims: std::mem::replace(&mut tensor.dims, vec![0, index as i64]),
            offset,
            len,
            dequantize: None,
        };
        Ok(Some((tensor.encode_to_vec(), weight)))
    }
}
