//! Runs the optimised model's nodes in the order of the segment's ONNX file.
//!
//! NetLess plans a segment's memory along the order it writes the segment's nodes in (docs/memory-model.md,
//! "Working bytes"). tract would pick its own order, which can hold far more: on ppocr_v4_det at 800x608 it
//! ran the feature pyramid's lateral convolutions as soon as their inputs existed and kept their outputs,
//! 9-22 MiB of maps, alive through the rest of the backbone. Each node of the optimised model takes the
//! position of the ONNX node it comes from (tract names a node it derives `<onnx name>.<suffix>`), and the
//! plan runs them in that order.

use std::collections::HashMap;

use tract_onnx::prelude::{Arc, TractResult, TypedModel, TypedRunnableModel};
use tract_onnx::tract_core::plan::SimplePlan;
use tract_onnx::tract_core::runtime::RunOptions;

/// The runnable plan of `model`, its nodes in the order of `onnx_nodes` (the segment file's node names).
pub fn runnable(model: TypedModel, onnx_nodes: &[String]) -> TractResult<Arc<TypedRunnableModel>> {
    let order = file_order(&model, onnx_nodes);
    // every node after the one before it: implied where it reads that node, stated otherwise
    let deps: Vec<(usize, usize)> = order
        .windows(2)
        .filter(|pair| !model.node(pair[1]).inputs.iter().any(|i| i.node == pair[0]))
        .map(|pair| (pair[1], pair[0]))
        .collect();
    let outputs = model.outputs.clone();
    let options = RunOptions { skip_order_opt_ram: true, ..Default::default() };
    #[allow(deprecated)]
    let plan = SimplePlan::build_with_outputs_and_deps(model, &outputs, &deps, &options)?;
    Ok(Arc::new(plan))
}

/// A topological order of `model`'s nodes that takes, among the nodes ready to run, the one from the
/// earliest ONNX node first (nodes from no ONNX node, such as inputs and constants, last among them).
fn file_order(model: &TypedModel, onnx_nodes: &[String]) -> Vec<usize> {
    let position: HashMap<&str, usize> = onnx_nodes.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    let rank = |name: &str| {
        let mut name = name;
        loop {
            if let Some(&p) = position.get(name) {
                return p;
            }
            match name.rfind('.') {
                Some(dot) => name = &name[..dot],
                None => return usize::MAX,
            }
        }
    };
    let nodes = model.nodes();
    let mut waiting: Vec<usize> = nodes.iter().map(|n| distinct_inputs(n.inputs.iter().map(|i| i.node)).len()).collect();
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for node in nodes {
        for input in distinct_inputs(node.inputs.iter().map(|i| i.node)) {
            readers[input].push(node.id);
        }
    }
    let mut ready: std::collections::BTreeSet<(usize, usize)> =
        nodes.iter().filter(|n| waiting[n.id] == 0).map(|n| (rank(&n.name), n.id)).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some((_, id)) = ready.pop_first() {
        order.push(id);
        for &reader in &readers[id] {
            waiting[reader] -= 1;
            if waiting[reader] == 0 {
                ready.insert((rank(&nodes[reader].name), reader));
            }
        }
    }
    order
}

fn distinct_inputs(inputs: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut inputs: Vec<usize> = inputs.collect();
    inputs.sort_unstable();
    inputs.dedup();
    inputs
}
