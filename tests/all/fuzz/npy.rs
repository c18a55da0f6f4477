//! `.npy` inputs, as `verify` and `run` read them (`--input NAME=FILE.npy`).

use netless::onnx::ElemType;
use netless_fuzz::{Target, fuzz};
use tract_onnx::prelude::Tensor;

use super::corpus;

const DICTIONARY: &[&[u8]] = &[
    b"\x93NUMPY\x01\x00", b"\x93NUMPY\x02\x00", b"\x93NUMPY\x03\x00", b"'descr': ", b"'<f4'", b"'>f4'", b"'<i8'", b"'|b1'",
    b"'|u1'", b"'<f2'", b"'fortran_order': True", b"'fortran_order': False", b"'shape': ", b"()", b"(0,)", b"(4294967296, 4294967296)",
    b"(18446744073709551615,)", b"}", b"{", b", ", b"\n",
];

/// Types an input is read as, each tried in turn.
const TYPES: [ElemType; 5] = [ElemType::F32, ElemType::I64, ElemType::Bool, ElemType::U8, ElemType::F64];

fn seeds(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let tensors = [
        Tensor::from_shape(&[2, 3], &[0.5f32, 1.0, -2.0, 3.0, 4.5, 1e-7]).unwrap(),
        Tensor::from_shape(&[4], &[1i64, -2, 3, i64::MAX]).unwrap(),
        Tensor::from_shape(&[2, 2], &[true, false, false, true]).unwrap(),
        Tensor::from_shape(&[], &[7u8]).unwrap(),
        Tensor::from_shape(&[1, 2], &[0.25f64, -8.0]).unwrap(),
    ];
    let mut seeds: Vec<Vec<u8>> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let path = dir.join(format!("seed-{i}.npy"));
            netless::npy::write(&path, "seed", t).unwrap();
            std::fs::read(path).unwrap()
        })
        .collect();
    let header = b"{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }";
    let pad = 64 - (10 + header.len() + 1) % 64;
    let fortran = [b"\x93NUMPY\x01\x00".to_vec(), ((header.len() + pad + 1) as u16).to_le_bytes().to_vec(), header.to_vec(), vec![b' '; pad], b"\n".to_vec(), [1f32, 2., 3., 4., 5., 6.].iter().flat_map(|f| f.to_le_bytes()).collect()].concat();
    seeds.push(fortran);
    seeds
}

#[test]
fn npy_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fuzzed.npy");
    let target = Target { name: "npy", corpus: corpus("npy"), seeds: seeds(dir.path()), dictionary: DICTIONARY, mutators: vec![] };
    let report = fuzz(target, |input| {
        std::fs::write(&file, input).unwrap();
        let mut refused = Vec::new();
        for dtype in TYPES {
            match netless::npy::read(&file, "x", dtype) {
                Ok(tensor) => {
                    let elements: usize = tensor.shape().iter().product();
                    assert_eq!(tensor.len(), elements, "a read tensor holds its shape's elements");
                    return Ok(());
                }
                Err(e) => refused.push(e.to_string().lines().next().unwrap_or_default().to_string()),
            }
        }
        Err(refused.join("; "))
    });
    assert!(report.executions > 100 && report.verdicts > 3, "{report:?}");
}

/// A header that declares more data than the file holds is refused before anything is allocated (it
/// aborted the process with a 32 GiB allocation).
#[test]
fn a_header_declaring_more_than_the_file_holds_is_refused() {
    let path = corpus("npy").join("header-declares-32-gib");
    let err = netless::npy::read(&path, "x", ElemType::F32).unwrap_err().to_string();
    assert!(err.contains("declares shape [4294967296, 2] (34359738368 bytes of f32), but the file holds 16 bytes of data"), "{err}");
}
