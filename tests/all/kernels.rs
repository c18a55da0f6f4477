//! NetLess's own wasm matrix kernels (components/segment/src/kernels.rs), run in the real runtime
//! against a naive product computed here: shapes that are not multiples of the 4x16 tile, a
//! reduction of one step, and each fused step tract hands the kernel (bias per column and per row,
//! activation, residual add, strided stores).

use netless::runtime::Tensor;
use prost::Message;

use crate::common;
use crate::onnx_builder::{int_attribute, ints_attribute, model, node, value, weight};
use netless::onnx::pb::GraphProto;

/// Runs a one-input model in the wasm runtime.
fn run(graph: GraphProto, input: Tensor) -> Option<Vec<f32>> {
    let runtime = common::runtime()?;
    let bytes = model(graph).encode_to_vec();
    let mut segment = common::engine().load_segment(runtime, &bytes, common::roomy()).unwrap();
    Some(segment.infer(vec![input]).unwrap().remove(0).to_f32().unwrap())
}

fn values(t: &netless::onnx::pb::TensorProto) -> &[f32] {
    &t.float_data
}

fn input(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 7919 % 211) as f32 / 211.0) - 0.5).collect()
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(((*g as f64) - w).abs() <= 1e-5 * scale, "{what}: element {i} is {g}, naive {w}");
    }
}

/// `relu(x · W + b) + x · W2 + c`, x of shape [m, k], b of [n] and c of [m, 1]: the biases and
/// Relu fuse into the kernel, and the second product's sum is a residual add of a stored tile.
#[test]
fn matmul_with_bias_relu_and_residual_matches_a_naive_product_on_odd_shapes() {
    let shapes = [(1, 1, 1), (1, 7, 5), (3, 1, 17), (2, 3, 5), (4, 7, 9), (5, 13, 7), (4, 16, 16), (17, 33, 19), (3, 30, 20), (9, 64, 31), (33, 5, 65), (6, 1, 48), (2, 300, 3)];
    for (m, k, n) in shapes {
        let w = weight("w", &[k, n], 1);
        let w2 = weight("w2", &[k, n], 2);
        let b = weight("b", &[n], 3);
        let c = weight("c", &[m, 1], 4);
        let graph = GraphProto {
            name: "mm".into(),
            node: vec![
                node("MatMul", &["x", "w"], &["p"]),
                node("Add", &["p", "b"], &["q"]),
                node("Relu", &["q"], &["r"]),
                node("MatMul", &["x", "w2"], &["p2"]),
                node("Add", &["r", "p2"], &["s"]),
                node("Add", &["s", "c"], &["y"]),
            ],
            input: vec![value("x", &[m, k])],
            output: vec![value("y", &[m, n])],
            initializer: vec![w.clone(), w2.clone(), b.clone(), c.clone()],
            ..Default::default()
        };
        let (m, k, n) = (m as usize, k as usize, n as usize);
        let x = input(m * k);
        let Some(got) = run(graph, Tensor::from_f32("x", vec![m as u64, k as u64], &x)) else {
            return;
        };
        let dot = |w: &[f32], i: usize, j: usize| (0..k).map(|l| x[i * k + l] as f64 * w[l * n + j] as f64).sum::<f64>();
        let want: Vec<f64> = (0..m * n)
            .map(|ij| {
                let (i, j) = (ij / n, ij % n);
                (dot(values(&w), i, j) + values(&b)[j] as f64).max(0.0) + dot(values(&w2), i, j) + values(&c)[i] as f64
            })
            .collect();
        assert_close(&got, &want, &format!("MatMul m={m} k={k} n={n}"));
    }
}

/// A 3x3 convolution with padding and a bias over odd channel counts and sizes: tract packs the
/// image on the fly (im2col) and adds the bias per row of the output (per channel).
#[test]
fn conv_matches_a_naive_convolution_on_odd_channels() {
    for (c, o, h, w) in [(1, 1, 1, 1), (3, 5, 7, 9), (7, 17, 5, 6), (16, 3, 11, 4)] {
        let kernel = weight("k", &[o, c, 3, 3], 5);
        let bias = weight("b", &[o], 6);
        let mut conv = node("Conv", &["x", "k", "b"], &["y"]);
        conv.attribute = vec![ints_attribute("pads", &[1, 1, 1, 1]), ints_attribute("kernel_shape", &[3, 3]), int_attribute("group", 1)];
        let graph = GraphProto {
            name: "conv".into(),
            node: vec![conv],
            input: vec![value("x", &[1, c, h, w])],
            output: vec![value("y", &[1, o, h, w])],
            initializer: vec![kernel.clone(), bias.clone()],
            ..Default::default()
        };
        let (c, o, h, w) = (c as usize, o as usize, h as usize, w as usize);
        let x = input(c * h * w);
        let Some(got) = run(graph, Tensor::from_f32("x", vec![1, c as u64, h as u64, w as u64], &x)) else {
            return;
        };
        let k = values(&kernel);
        let mut want = vec![0f64; o * h * w];
        for (oc, plane) in want.chunks_mut(h * w).enumerate() {
            for (yx, out) in plane.iter_mut().enumerate() {
                let (y, xx) = ((yx / w) as isize, (yx % w) as isize);
                let mut sum = values(&bias)[oc] as f64;
                for ic in 0..c {
                    for (dy, dx) in (0..9).map(|t| (t / 3 - 1, t % 3 - 1)) {
                        let (sy, sx) = (y + dy, xx + dx);
                        if (0..h as isize).contains(&sy) && (0..w as isize).contains(&sx) {
                            let kv = k[((oc * c + ic) * 3 + (dy + 1) as usize) * 3 + (dx + 1) as usize] as f64;
                            sum += kv * x[(ic * h + sy as usize) * w + sx as usize] as f64;
                        }
                    }
                }
                *out = sum;
            }
        }
        assert_close(&got, &want, &format!("Conv c={c} o={o} {h}x{w}"));
    }
}

/// Empty products: no rows, no reduction (the result is the bias alone) and no columns.
#[test]
fn matmul_on_empty_shapes_gives_the_bias_or_nothing() {
    for (m, k, n) in [(0, 5, 7), (3, 0, 4), (2, 6, 0)] {
        let w = weight("w", &[k, n], 7);
        let b = weight("b", &[n], 8);
        let graph = GraphProto {
            name: "empty".into(),
            node: vec![node("MatMul", &["x", "w"], &["p"]), node("Add", &["p", "b"], &["y"])],
            input: vec![value("x", &[m, k])],
            output: vec![value("y", &[m, n])],
            initializer: vec![w, b.clone()],
            ..Default::default()
        };
        let (m, k, n) = (m as usize, k as usize, n as usize);
        let Some(got) = run(graph, Tensor::from_f32("x", vec![m as u64, k as u64], &input(m * k))) else {
            return;
        };
        let want: Vec<f64> = (0..m * n).map(|ij| values(&b)[ij % n] as f64).collect();
        assert_close(&got, &want, &format!("MatMul m={m} k={k} n={n}"));
    }
}
