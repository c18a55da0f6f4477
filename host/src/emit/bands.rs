//! The graph of one band of a run cut into bands of output rows ([`crate::plan::bands`]): the run's input
//! cropped to the rows the band needs, every node of the run on its rows (a window's padding at the
//! band's edge dropped where the neighbouring rows are there instead), a crop wherever a tensor holds more
//! rows than a node reads, and the band's rows of the run's outputs.

use std::collections::{BTreeSet, HashMap};

use tract_onnx::pb::{NodeProto, TensorProto};

use super::shard::{ints_attribute, slice, weight_proto};
use crate::Result;
use crate::onnx::{Graph, OnnxModel};
use crate::plan::bands::{rows, window};
use crate::plan::shard::ShardPlan;

/// The nodes and initializers of band `j` of `plan`: it reads the run's input whole and returns its rows of
/// every output of the run.
pub fn band_graph(model: &OnnxModel, graph: &Graph, plan: &ShardPlan, j: usize) -> Result<(Vec<NodeProto>, Vec<TensorProto>)> {
    let band = plan.shards[j].range;
    let need = rows(graph, &plan.run, &plan.layout.outputs, band);
    let prefix = format!("netless.band{j}");
    let mut nodes = Vec::new();
    let mut initializers = Vec::new();
    // the rows each tensor holds in the band, and the name it holds them under
    let mut held: HashMap<usize, ((u64, u64), String)> = HashMap::new();
    let input = &graph.tensors[plan.layout.input];
    let input_rows = need[&plan.layout.input];
    let kept = match input_rows == (0, input.shape[2]) {
        true => input.name.clone(),
        false => {
            let kept = format!("{prefix}.input");
            nodes.push(slice(model, &format!("{prefix}.crop.input"), (&input.name, &kept), 2, input_rows, &mut initializers));
            kept
        }
    };
    held.insert(plan.layout.input, (input_rows, kept));
    let mut weights = BTreeSet::new();
    for &id in &plan.run {
        let n = &graph.nodes[id];
        let out = n.outputs[0];
        let out_rows = need[&out];
        let mut proto = model.graph().node[n.proto_index].clone();
        proto.name = format!("{}.band{j}", n.name);
        for (slot, input) in proto.input.iter_mut().enumerate() {
            let Some(t) = n.operands.get(slot).copied().flatten() else { continue };
            if graph.tensors[t].is_weight() {
                weights.insert(t);
                continue;
            }
            let wanted = match window(graph, id) {
                Some(w) => w.input_rows(out_rows, graph.tensors[t].shape[2]),
                None => out_rows,
            };
            let (rows, name) = &held[&t];
            *input = if *rows == wanted {
                name.clone()
            } else {
                let cropped = format!("{prefix}.crop{}", nodes.len());
                let local = (wanted.0 - rows.0, wanted.1 - rows.0);
                nodes.push(slice(model, &format!("{cropped}.slice"), (name, &cropped), 2, local, &mut initializers));
                cropped
            };
        }
        if let Some(w) = window(graph, id) {
            // the band's own padding: what its first and last windows reach beyond the input's rows
            let height = graph.tensors[n.inputs[0]].shape[2];
            let (top_reach, bottom_reach) = (out_rows.0 * w.stride, (out_rows.1 - 1) * w.stride + w.dilation * (w.kernel - 1) + 1);
            let top = w.pad_top.saturating_sub(top_reach);
            let bottom = bottom_reach.saturating_sub(w.pad_top + height);
            let (left, right) = w.pad_columns;
            proto.attribute.retain(|a| a.name != "pads" && a.name != "auto_pad");
            proto.attribute.push(ints_attribute("pads", [top, left, bottom, right].map(|p| p as i64).to_vec()));
        }
        held.insert(out, (out_rows, proto.output[0].clone()));
        nodes.push(proto);
    }
    for (k, &t) in plan.layout.outputs.iter().enumerate() {
        let (rows, name) = &held[&t];
        let local = (band.0 - rows.0, band.1 - rows.0);
        nodes.push(slice(model, &format!("{prefix}.output{k}"), (name, &plan.partial_name(graph, t, j)), 2, local, &mut initializers));
    }
    for w in weights {
        initializers.push(weight_proto(model, graph, w)?);
    }
    Ok((nodes, initializers))
}

