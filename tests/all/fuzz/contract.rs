//! The segment runtime's contract checks, as a host calls them: tensors of any name, type, shape and
//! byte count sent to the real runtime component under the real host. The guest must answer every
//! call with outputs that keep its contract or with an error; a trap or a deadline is a crash.

use netless::runtime::{DType, Limits, Segment, SegmentError, Tensor};
use netless_fuzz::mutate::INTERESTING;
use netless_fuzz::{Rng, Target, fuzz};
use prost::Message;
use std::time::Duration;

use super::corpus;
use crate::onnx_builder::{int_attribute, model, node, typed_value, weight};

const TYPES: [DType; 13] = [
    DType::F32, DType::I64, DType::Boolean, DType::F16, DType::F64, DType::Bf16, DType::U8, DType::I8, DType::U16, DType::I16, DType::U32,
    DType::I32, DType::U64,
];

const NAMES: &[&str] = &["x", "y", "idx", "flag", "", "z", "x ", "ei", "ni", "si", "ci"];

/// `z = x + y` over `f32[n, 3]` and `f32[m, 3]` (sizes known only at run time, so mismatches
/// reach the computation), `g = table[idx]` (indices chosen by the caller), `nf = not flag`.
fn segment_model() -> Vec<u8> {
    let graph = netless::onnx::pb::GraphProto {
        name: "contract".into(),
        node: vec![node("Add", &["x", "y"], &["z"]), node("Gather", &["table", "idx"], &["g"]), node("Not", &["flag"], &["nf"])],
        initializer: vec![weight("table", &[4, 3], 7)],
        input: vec![symbolic(typed_value("x", 1, Some(&[1, 3])), "n"), symbolic(typed_value("y", 1, Some(&[1, 3])), "m"), typed_value("idx", 7, Some(&[2])), typed_value("flag", 9, Some(&[1]))],
        output: vec![symbolic(typed_value("z", 1, Some(&[1, 3])), "k"), typed_value("g", 1, Some(&[2, 3])), typed_value("nf", 9, Some(&[1]))],
        ..Default::default()
    };
    model(graph).encode_to_vec()
}

/// Makes the first dimension of a value symbolic.
fn symbolic(mut value: netless::onnx::pb::ValueInfoProto, name: &str) -> netless::onnx::pb::ValueInfoProto {
    use netless::onnx::pb::{tensor_shape_proto::dimension::Value, type_proto};
    if let Some(type_proto::Value::TensorType(t)) = value.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        t.shape.as_mut().expect("a shape").dim[0].value = Some(Value::DimParam(name.into()));
    }
    value
}

/// Tensors as bytes: per tensor, the name's index in [`NAMES`], the type's index in [`TYPES`], the
/// rank, each dimension (u32) and the data's length (u32) and bytes.
fn encode(tensors: &[Tensor]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in tensors {
        out.push(NAMES.iter().position(|&n| n == t.name).expect("a listed name") as u8);
        out.push(TYPES.iter().position(|&d| d == t.dtype).expect("a listed type") as u8);
        out.push(t.shape.len() as u8);
        for &d in &t.shape {
            out.extend((d as u32).to_le_bytes());
        }
        out.extend((t.data.len() as u32).to_le_bytes());
        out.extend(&t.data);
    }
    out
}

fn decode(mut input: &[u8]) -> Option<Vec<Tensor>> {
    fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = input.split_at_checked(n)?;
        *input = rest;
        Some(head)
    }
    let u32_at = |input: &mut &[u8]| take(input, 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()));
    let mut tensors = Vec::new();
    while !input.is_empty() {
        let name = NAMES[take(&mut input, 1)?[0] as usize % NAMES.len()].to_string();
        let dtype = TYPES[take(&mut input, 1)?[0] as usize % TYPES.len()];
        let rank = take(&mut input, 1)?[0] as usize;
        let shape = (0..rank).map(|_| u32_at(&mut input).map(u64::from)).collect::<Option<Vec<_>>>()?;
        let len = u32_at(&mut input)? as usize;
        let data = take(&mut input, len)?.to_vec();
        tensors.push(Tensor { name, dtype, shape, data });
    }
    Some(tensors)
}

fn seeds() -> Vec<Vec<u8>> {
    let f32s = |name: &str, rows: u64| Tensor::from_f32(name, vec![rows, 3], &vec![0.5; rows as usize * 3]);
    let idx = |values: [i64; 2]| Tensor { name: "idx".into(), dtype: DType::I64, shape: vec![2], data: values.iter().flat_map(|v| v.to_le_bytes()).collect() };
    let flag = Tensor { name: "flag".into(), dtype: DType::Boolean, shape: vec![1], data: vec![1] };
    vec![
        encode(&[f32s("x", 2), f32s("y", 2), idx([0, 3]), flag.clone()]),
        encode(&[flag.clone(), idx([-1, 1]), f32s("y", 1), f32s("x", 5)]),
        encode(&[f32s("x", 0), f32s("y", 1), idx([2, 2]), flag]),
    ]
}

/// A change to one decoded tensor: its name, type, a dimension, its data (resized to fit its shape
/// half of the time, so that inputs get past the checks to the computation), or the list itself.
fn mutate_tensors(input: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    let mut tensors = decode(input)?;
    if tensors.is_empty() {
        return None;
    }
    let i = rng.below(tensors.len());
    match rng.below(7) {
        0 => tensors[i].name = rng.pick(NAMES).to_string(),
        1 => tensors[i].dtype = *rng.pick(&TYPES),
        2 => {
            let t = &mut tensors[i];
            match t.shape.is_empty() || rng.chance(4) {
                true => t.shape.push(*rng.pick(&[0, 1, 2, 3])),
                false => {
                    let d = rng.below(t.shape.len());
                    t.shape[d] = match rng.chance(2) {
                        true => *rng.pick(&[0, 1, 2, 3, 4, 7, 64]),
                        false => *rng.pick(INTERESTING) as u32 as u64,
                    };
                }
            }
        }
        3 => {
            let t = &mut tensors[i];
            let bytes = t.shape.iter().try_fold(t.dtype.size() as u64, |a, &d| a.checked_mul(d)).filter(|&n| n <= 1 << 20)?;
            t.data.resize(bytes as usize, 0);
        }
        4 => {
            let t = &mut tensors[i];
            let size = t.dtype.size();
            if t.data.len() >= size {
                let at = rng.below(t.data.len() / size) * size;
                let value = rng.pick(INTERESTING).to_le_bytes();
                t.data[at..at + size].copy_from_slice(&value[..size]);
            }
        }
        5 => {
            tensors.remove(i);
        }
        _ => {
            let copy = tensors[i].clone();
            tensors.insert(rng.below(tensors.len() + 1), copy);
        }
    }
    Some(encode(&tensors))
}

/// Checks a call's answer: outputs in contract order, of the declared types and fixed dimensions,
/// holding their shapes' bytes; an error the guest reports, not a trap or a timeout.
fn answer(segment: &Segment, result: Result<Vec<Tensor>, SegmentError>) -> Result<(), String> {
    match result {
        Ok(outputs) => {
            let specs = &segment.info().outputs;
            assert_eq!(outputs.len(), specs.len(), "one output per declared output");
            for (t, spec) in outputs.iter().zip(specs) {
                assert_eq!((&t.name, t.dtype), (&spec.name, spec.dtype), "outputs come in contract order with their types");
                assert!(t.shape.len() == spec.shape.len() && t.shape.iter().zip(&spec.shape).all(|(d, s)| s.is_none_or(|s| s == *d)), "output `{}` of shape {:?} keeps {:?}", t.name, t.shape, spec.shape);
                let bytes = t.shape.iter().product::<u64>() * t.dtype.size() as u64;
                assert_eq!(t.data.len() as u64, bytes, "output `{}` holds its shape's bytes", t.name);
            }
            Ok(())
        }
        Err(e @ (SegmentError::Trap { .. } | SegmentError::DeadlineExceeded { .. } | SegmentError::Load { .. })) => panic!("the segment failed instead of answering: {e}"),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn segment_inputs() {
    let Some(runtime) = crate::common::runtime() else {
        return;
    };
    let limits = Limits { memory_bytes: 256 << 20, deadline: Duration::from_secs(30) };
    let mut segment = crate::common::engine().load_segment(runtime, &segment_model(), limits).expect("the segment loads");
    let target = Target { name: "contract", corpus: corpus("contract"), seeds: seeds(), dictionary: &[b"\x00", b"\x03", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80"], mutators: vec![&mutate_tensors] };
    let report = fuzz(target, |input| {
        let tensors = decode(input).ok_or("not a tensor list")?;
        let result = segment.infer(tensors);
        answer(&segment, result)
    });
    assert!(report.accepted > 0 && report.verdicts > 5, "{report:?}");
}

/// Found by this target: tract's Gather trusted its indices, and an index past the table trapped.
#[test]
fn an_index_out_of_range_is_an_invalid_input_naming_the_node() {
    let Some(runtime) = crate::common::runtime() else {
        return;
    };
    let mut segment = crate::common::engine().load_segment(runtime, &segment_model(), crate::common::roomy()).expect("the segment loads");
    let inputs = |index: i64| decode(&seeds()[0]).unwrap().into_iter().map(move |mut t| {
        if t.name == "idx" {
            t.data = [index, -4].iter().flat_map(|v| v.to_le_bytes()).collect();
        }
        t
    });
    let gathered = segment.infer(inputs(3).collect()).expect("indices -4 to 3 of 4 rows are valid");
    assert_eq!(gathered[1].data.len(), 2 * 3 * 4);
    for index in [4, -5, i64::MAX, i64::MIN] {
        let error = segment.infer(inputs(index).collect()).unwrap_err();
        assert!(matches!(error, SegmentError::InvalidInput { .. }), "{error}");
        assert!(error.to_string().contains(&format!("node `g`: index {index} is out of range for axis 0 of size 4")), "{error}");
    }
    assert!(segment.is_live(), "the instance survives a refused input");
}

const TABLE_ROWS: i64 = 4;

/// The indexing operators whose indices the caller gives, over one `f32[4, 3]` table:
/// `ge = GatherElements(table, ei)`, `gn = GatherND(table, ni)`, `sn = ScatterND(table, si, su)` and
/// `se = ScatterElements(table, ci, cu)`, all on axis 0.
fn indexing_model() -> netless::onnx::pb::ModelProto {
    let mut gather_elements = node("GatherElements", &["table", "ei"], &["ge"]);
    gather_elements.attribute.push(int_attribute("axis", 0));
    let mut scatter_elements = node("ScatterElements", &["table", "ci", "cu"], &["se"]);
    scatter_elements.attribute.push(int_attribute("axis", 0));
    let graph = netless::onnx::pb::GraphProto {
        name: "indexing".into(),
        node: vec![gather_elements, node("GatherND", &["table", "ni"], &["gn"]), node("ScatterND", &["table", "si", "su"], &["sn"]), scatter_elements],
        initializer: vec![weight("table", &[TABLE_ROWS, 3], 7), weight("su", &[1, 3], 8), weight("cu", &[1, 3], 9)],
        input: vec![typed_value("ei", 7, Some(&[2, 3])), typed_value("ni", 7, Some(&[2, 1])), typed_value("si", 7, Some(&[1, 1])), typed_value("ci", 7, Some(&[1, 3]))],
        output: vec![typed_value("ge", 1, Some(&[2, 3])), typed_value("gn", 1, Some(&[2, 3])), typed_value("sn", 1, Some(&[TABLE_ROWS, 3])), typed_value("se", 1, Some(&[TABLE_ROWS, 3]))],
        ..Default::default()
    };
    model(graph)
}

fn indices(name: &str, shape: &[u64], values: &[i64]) -> Tensor {
    Tensor { name: name.into(), dtype: DType::I64, shape: shape.to_vec(), data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
}

/// Valid indices (negative ones among them) for every input of [`indexing_model`].
fn indexing_inputs() -> [Tensor; 4] {
    [indices("ei", &[2, 3], &[0, 1, -1, 3, -4, 2]), indices("ni", &[2, 1], &[-1, 2]), indices("si", &[1, 1], &[-2]), indices("ci", &[1, 3], &[1, -1, 3])]
}

/// The outputs of [`indexing_inputs`], worked out from the ONNX definitions of the operators.
fn indexing_expected(model: &netless::onnx::pb::ModelProto) -> Vec<Vec<f32>> {
    let graph = model.graph.as_ref().unwrap();
    let init = |name: &str| graph.initializer.iter().find(|t| t.name == name).unwrap().float_data.clone();
    let (table, su, cu) = (init("table"), init("su"), init("cu"));
    let row = |i: i64| i.rem_euclid(TABLE_ROWS) as usize;
    let ge = [[0, 1, -1], [3, -4, 2]].iter().flat_map(|r| r.iter().enumerate().map(|(j, &i)| table[row(i) * 3 + j]).collect::<Vec<_>>()).collect();
    let gn = [-1, 2].iter().flat_map(|&i| table[row(i) * 3..row(i) * 3 + 3].to_vec()).collect();
    let mut sn = table.clone();
    sn[row(-2) * 3..row(-2) * 3 + 3].copy_from_slice(&su);
    let mut se = table.clone();
    for (j, i) in [1, -1, 3].into_iter().enumerate() {
        se[row(i) * 3 + j] = cu[j];
    }
    vec![ge, gn, sn, se]
}

/// Found by reading tract: GatherElements, GatherND, ScatterND and ScatterElements index without a
/// check (GatherND and ScatterND do not take ONNX's negative indices at all), so a caller's index
/// panicked natively and trapped in a segment. Both now refuse it naming the node, and resolve
/// negative indices as ONNX defines them.
#[test]
fn indexing_operators_check_their_indices_in_the_runtime_and_natively() {
    use netless::native::NativeModel;
    use netless::onnx::ElemType;
    use netless::plan::file::TensorSpec;
    use std::collections::HashMap;
    let Some(runtime) = crate::common::runtime() else {
        return;
    };
    let model = indexing_model();
    let mut segment = crate::common::engine().load_segment(runtime, &model.encode_to_vec(), crate::common::roomy()).expect("the segment loads");
    let specs: Vec<TensorSpec> = indexing_inputs().iter().map(|t| TensorSpec { name: t.name.clone(), dtype: ElemType::I64, shape: t.shape.clone() }).collect();
    let native = NativeModel::new(&model, "indexing", &specs).expect("native tract prepares the model");
    let run_native = |inputs: &[Tensor]| {
        let env: HashMap<String, tract_onnx::prelude::Tensor> = inputs
            .iter()
            .map(|t| {
                let values: Vec<i64> = t.data.chunks(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
                let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
                (t.name.clone(), tract_onnx::prelude::Tensor::from_shape(&shape, &values).unwrap())
            })
            .collect();
        native.run(&env)
    };

    let expected = indexing_expected(&model);
    let outputs = segment.infer(indexing_inputs().to_vec()).expect("valid indices are answered");
    let native_outputs = run_native(&indexing_inputs()).expect("native tract answers valid indices");
    for ((output, (name, tensor)), want) in outputs.iter().zip(&native_outputs).zip(&expected) {
        assert_eq!(output.to_f32().as_ref(), Some(want), "output `{}` of the segment", output.name);
        assert_eq!(tensor.to_plain_array_view::<f32>().unwrap().iter().copied().collect::<Vec<_>>(), *want, "output `{name}` of native tract");
    }

    let bad = [(0, 2, 4, "ge"), (0, 4, -5, "ge"), (1, 0, -5, "gn"), (1, 1, 4, "gn"), (2, 0, 4, "sn"), (2, 0, i64::MIN, "sn"), (3, 2, -5, "se"), (3, 0, i64::MAX, "se")];
    for (input, at, index, node) in bad {
        let mut inputs = indexing_inputs();
        inputs[input].data[at * 8..at * 8 + 8].copy_from_slice(&index.to_le_bytes());
        let message = format!("node `{node}`: index {index} is out of range for axis 0 of size {TABLE_ROWS}");
        let error = segment.infer(inputs.to_vec()).unwrap_err();
        assert!(matches!(error, SegmentError::InvalidInput { .. }) && error.to_string().contains(&message), "{error}");
        let error = run_native(&inputs).expect_err("native tract refuses it too");
        assert!(error.to_string().contains(&message), "{error}");
    }
    assert!(segment.is_live(), "the instance survives refused inputs");
    assert_eq!(segment.infer(indexing_inputs().to_vec()).expect("still answering")[0].to_f32().as_ref(), Some(&expected[0]));
}

/// The indexing operators' checks, fed indices of any value, type and shape.
#[test]
fn indexing_inputs_fuzzed() {
    let Some(runtime) = crate::common::runtime() else {
        return;
    };
    let mut segment = crate::common::engine().load_segment(runtime, &indexing_model().encode_to_vec(), crate::common::roomy()).expect("the segment loads");
    let valid = indexing_inputs();
    let mut reordered = valid.clone();
    reordered.reverse();
    let seeds = vec![encode(&valid), encode(&reordered)];
    let target = Target { name: "contract-indexing", corpus: corpus("contract-indexing"), seeds, dictionary: &[b"\xff\xff\xff\xff\xff\xff\xff\xff", b"\x04\x00\x00\x00\x00\x00\x00\x00", b"\x00\x00\x00\x00\x00\x00\x00\x80"], mutators: vec![&mutate_tensors] };
    let report = fuzz(target, |input| {
        let tensors = decode(input).ok_or("not a tensor list")?;
        let result = segment.infer(tensors);
        answer(&segment, result)
    });
    assert!(report.accepted > 0 && report.verdicts > 3, "{report:?}");
}
