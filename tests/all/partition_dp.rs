//! The dynamic program against brute force on small random DAGs: for every order the planner tries, every
//! objective, segment count and memory limit, it finds the same optimum as enumerating every set of cuts.

use netless::onnx::pb::GraphProto;
use netless::onnx::{Graph, OnnxModel};
use netless::plan::order::{Liveness, candidates};
use netless::plan::partition::{Evaluator, Objective, Request, SegmentCost, partition};
use netless::plan::{CostModel, MemoryModel};

use crate::onnx_builder::{model, node, value, weight};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A random DAG of Relu, MatMul (with weights) and Add (residual-like joins) nodes on [1, width] tensors.
fn random_graph(seed: u64) -> Graph {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let widths = [4i64, 16, 64];
    let mut tensors: Vec<(String, i64)> = vec![("x".into(), 16)];
    let mut nodes = Vec::new();
    let mut initializers = Vec::new();
    let count = 4 + rng.below(6);
    for i in 0..count {
        let (a, wa) = tensors[rng.below(tensors.len())].clone();
        let out = format!("t{i}");
        let width = match rng.below(3) {
            0 => {
                nodes.push(node("Relu", &[&a], &[&out]));
                wa
            }
            1 => {
                let wb = widths[rng.below(widths.len())];
                let w = format!("w{i}");
                initializers.push(weight(&w, &[wa, wb], i as u32));
                nodes.push(node("MatMul", &[&a, &w], &[&out]));
                wb
            }
            _ => {
                let same: Vec<String> = tensors.iter().filter(|(_, w)| *w == wa).map(|(n, _)| n.clone()).collect();
                let b = same[rng.below(same.len())].clone();
                nodes.push(node("Add", &[&a, &b], &[&out]));
                wa
            }
        };
        tensors.push((out, width));
    }
    let last = tensors.last().unwrap().clone();
    let mut outputs = vec![value(&last.0, &[1, last.1])];
    if rng.below(2) == 0 && tensors.len() > 2 {
        let extra = tensors[1 + rng.below(tensors.len() - 2)].clone();
        outputs.push(value(&extra.0, &[1, extra.1]));
    }
    let graph = GraphProto { name: "random".into(), node: nodes, initializer: initializers, input: vec![value("x", &[1, 16])], output: outputs, ..Default::default() };
    let bytes = prost::Message::encode_to_vec(&model(graph));
    let onnx = OnnxModel::from_bytes(std::path::Path::new("random.onnx"), &bytes).expect("valid model");
    Graph::analyse(&onnx, &vec![]).expect("analysable model")
}

/// Best primary score over every set of cuts, or None if no set is feasible.
fn brute_force(ev: &Evaluator, request: &Request) -> Option<f64> {
    let n = ev.len();
    let mut best: Option<f64> = None;
    for mask in 0u32..(1 << (n - 1)) {
        let mut bounds = vec![0];
        bounds.extend((1..n).filter(|c| mask & (1 << (c - 1)) != 0));
        bounds.push(n);
        let segments: Vec<SegmentCost> = bounds.windows(2).map(|w| ev.segment(w[0], w[1])).collect();
        if request.segments.is_some_and(|k| k != segments.len()) || segments.len() > request.max_segments {
            continue;
        }
        if segments.iter().any(|s| s.memory > request.max_memory) {
            continue;
        }
        let score = ev.score(&segments, request.objective).0;
        if best.is_none_or(|b| score < b) {
            best = Some(score);
        }
    }
    best
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-12)
}

#[test]
fn dp_matches_brute_force_on_random_dags() {
    let memory = MemoryModel { runtime_overhead: 0, ..MemoryModel::default() };
    let cost = CostModel { ops_per_second: 1e6, bytes_per_second: 1e5, hop_seconds: 1e-4, parallel_shards: 1 };
    let mut compared = 0;
    for seed in 0..60u64 {
        let graph = random_graph(seed);
        let mut rng = Rng(seed + 101);
        for (name, order) in candidates(&graph) {
            let live = Liveness::new(&graph, order);
            let ev = Evaluator::new(&graph, &live, &memory, &cost);
            let n = ev.len();
            let single = (0..n).map(|p| ev.segment(p, p + 1).memory).max().unwrap();
            let whole = ev.segment(0, n).memory;
            for _ in 0..4 {
                let max_memory = single + (rng.next() % (whole.saturating_sub(single) + 1));
                for objective in [Objective::Latency, Objective::Throughput] {
                    for segments in std::iter::once(None).chain((1..=n).map(Some)) {
                        let request = Request { max_memory, segments, objective, max_segments: n };
                        let want = brute_force(&ev, &request);
                        let got = partition(&ev, &request).ok();
                        match (want, &got) {
                            (None, None) => {}
                            (Some(w), Some(segs)) => {
                                let score = ev.score(segs, objective).0;
                                assert!(close(score, w), "seed {seed} order {name} {request:?}: dp {score} vs brute force {w}");
                                assert!(segs.iter().all(|s| s.memory <= max_memory));
                                assert_eq!(segs.first().unwrap().start, 0);
                                assert_eq!(segs.last().unwrap().end, n);
                                assert!(segs.windows(2).all(|w| w[0].end == w[1].start));
                                if let Some(k) = segments {
                                    assert_eq!(segs.len(), k);
                                }
                                compared += 1;
                            }
                            _ => panic!("seed {seed} order {name} {request:?}: dp {got:?} vs brute force {want:?}"),
                        }
                    }
                }
            }
        }
    }
    assert!(compared > 1000, "only {compared} feasible cases compared");
}

/// Every cut's crossing set is exactly the activations made before it (or given as inputs) and needed
/// after it (or returned as outputs).
#[test]
fn crossing_sets_match_their_definition() {
    for seed in 0..60u64 {
        let graph = random_graph(seed);
        for (name, order) in candidates(&graph) {
            let position = |node: usize| order.iter().position(|&n| n == node).unwrap();
            let live = Liveness::new(&graph, order.clone());
            for cut in 0..=order.len() {
                let mut want: Vec<usize> = (0..graph.tensors.len())
                    .filter(|&t| {
                        let tensor = &graph.tensors[t];
                        let before = match tensor.producer {
                            Some(p) => position(p) < cut,
                            None => !tensor.is_weight(),
                        };
                        let after = tensor.consumers.iter().any(|&c| position(c) >= cut) || graph.outputs.contains(&t);
                        before && after
                    })
                    .collect();
                want.sort_unstable();
                let mut got = live.crossing[cut].clone();
                got.sort_unstable();
                assert_eq!(got, want, "seed {seed} order {name} cut {cut}");
            }
        }
    }
}

/// The activations alive while each position runs are the tensors made at or before it (or given as
/// inputs) and needed at or after it (or returned), except the input of a Relu (or an operand of an Add)
/// it is the last to read, which tract overwrites with its output; a MatMul also holds its activation's
/// packed copy, first with the activation, then with its output.
#[test]
fn live_bytes_match_their_definition() {
    let mut written_over = 0;
    for seed in 0..60u64 {
        let graph = random_graph(seed);
        for (name, order) in candidates(&graph) {
            let position = |node: usize| order.iter().position(|&n| n == node).unwrap();
            let live = Liveness::new(&graph, order.clone());
            for (pos, &node) in order.iter().enumerate() {
                let alive = |t: usize| {
                    let tensor = &graph.tensors[t];
                    let born = match tensor.producer {
                        Some(p) => position(p) <= pos,
                        None => !tensor.is_weight(),
                    };
                    born && (tensor.consumers.iter().any(|&c| position(c) >= pos) || graph.outputs.contains(&t))
                };
                let mut want: u64 = (0..graph.tensors.len()).filter(|&t| alive(t)).map(|t| graph.tensors[t].bytes()).sum();
                let n = &graph.nodes[node];
                let bytes = |t: usize| graph.tensors[t].bytes();
                let dies_here = |t: usize| graph.tensors[t].consumers.iter().all(|&c| position(c) <= pos) && !graph.outputs.contains(&t);
                match n.op_type.as_str() {
                    // in place over its input, or over an operand of an Add of two distinct tensors
                    "Relu" | "Add" if n.operands.iter().flatten().count() == n.inputs.len() => {
                        if let Some(&input) = n.inputs.iter().find(|&&t| dies_here(t)) {
                            want -= bytes(input);
                            written_over += 1;
                        }
                    }
                    // the activation is packed for the kernel: held with its packed copy, then the packed
                    // copy with the output
                    "MatMul" => {
                        let (a, out) = (n.inputs[0], n.outputs[0]);
                        let before = want - bytes(out);
                        let freed = if dies_here(a) { bytes(a) } else { 0 };
                        want = (before + bytes(a)).max(before - freed + bytes(a) + bytes(out));
                    }
                    _ => {}
                }
                assert_eq!(live.live_bytes[pos], want, "seed {seed} order {name} position {pos}");
            }
        }
    }
    assert!(written_over > 0, "the random graphs have Relus and Adds that write over an input");
}

/// Each order the planner tries is a topological order of all nodes.
#[test]
fn candidate_orders_are_topological() {
    for seed in 0..60u64 {
        let graph = random_graph(seed);
        for (name, order) in candidates(&graph) {
            assert_eq!(order.len(), graph.nodes.len(), "{name}");
            for (pos, &node) in order.iter().enumerate() {
                for &input in &graph.nodes[node].inputs {
                    if let Some(p) = graph.tensors[input].producer {
                        assert!(order[..pos].contains(&p), "seed {seed} order {name}: node {node} before its input's producer");
                    }
                }
            }
        }
    }
}
