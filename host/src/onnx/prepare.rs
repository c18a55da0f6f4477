//! What the segment runtime will do to a model, done natively first: tract's typing, optimisation
//! and planning, for the whole model (by [`Graph::analyse`](super::Graph::analyse), so `inspect`,
//! `plan` and `split` refuse what cannot run) and for every segment (by `split` before it writes, and
//! by `build` before it assembles a component). A model that passes here is one the runtime can prepare.

use netless_oip::Name;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cnn::{Conv, MaxPool, PaddingSpec, PoolSpec, SumPool};
use tract_onnx::tract_core::ops::logic::IfThenElse;

use super::ElemType;
use crate::{Error, Result};

/// Runs tract's analysis (types and shapes for the input facts set), naming the failing node.
pub fn analyse(model: &mut InferenceModel, what: &str) -> Result<()> {
    guarded(what, || model.analyse(false).map(|_| ()))
}

/// Types, optimises and plans an analysed model, as the runtime would; `what` names it in errors.
/// Returns the typed (not yet optimised) model, whose facts name every tensor.
pub fn typed(model: InferenceModel, what: &str) -> Result<TypedModel> {
    let names = names_by_output(&model);
    let typed = guarded(what, || model.into_typed())?;
    check_windows(&typed, &names, what, &[])?;
    guarded(what, || typed.clone().into_optimized()?.into_runnable())?;
    Ok(typed)
}

/// Prepares a segment's ONNX model exactly as the segment runtime does
/// (`components/segment/src/backend.rs`): outputs that pass an input through are not computed, and
/// inputs get the types and shapes of the segment's contract, given as `(name, type, shape)`.
pub fn segment(proto: &ModelProto, what: &str, inputs: &[(&str, ElemType, &[u64])]) -> Result<()> {
    let graph = proto.graph.as_ref().ok_or_else(|| Error::Unpreparable { what: what.into(), node: String::new(), within: Vec::new(), reason: "it has no graph".into() })?;
    let computed: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).filter(|o| !graph.input.iter().any(|i| i.name == *o)).collect();
    if computed.is_empty() {
        return Ok(());
    }
    guarded(what, || {
        let mut model = tract_onnx::onnx().model_for_proto_model(proto)?;
        let outlets = computed.iter().map(|name| model.find_outlet_label(name).ok_or_else(|| anyhow::anyhow!("the model has no tensor named {} to output", Name(name)))).collect::<TractResult<Vec<_>>>()?;
        model.select_output_outlets(&outlets)?;
        for (slot, outlet) in model.input_outlets()?.to_vec().into_iter().enumerate() {
            let name = model.node(outlet.node).name.clone();
            let (_, dtype, shape) = inputs.iter().find(|(n, ..)| *n == name).ok_or_else(|| anyhow::anyhow!("model input {} is not in the segment's contract", Name(&name)))?;
            let dt = dtype.to_tract().ok_or_else(|| anyhow::anyhow!("input {} has type {dtype}, which tract does not run", Name(&name)))?;
            let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
            model.set_input_fact(slot, InferenceFact::dt_shape(dt, dims))?;
        }
        Ok((names_by_output(&model), model.into_typed()?))
    })
    .and_then(|(names, typed)| {
        check_windows(&typed, &names, what, &[])?;
        guarded(what, || typed.into_optimized()?.into_runnable().map(|_| ()))
    })
}

/// Refuses a pooling or convolution window wider than its input with its padding, in the model and
/// in its If branches. Such a model is invalid ONNX, and tract lists every position of a window before
/// it checks: a kernel of 2^31 on a 4x4 map kept it busy for hours.
/// `names`: the ONNX names of the nodes, by their first output (tract names a typed If `If`).
fn check_windows(model: &TypedModel, names: &HashMap<String, String>, what: &str, within: &[String]) -> Result<()> {
    for node in model.nodes() {
        let op: &dyn TypedOp = node.op.as_ref();
        let spec = op.downcast_ref::<MaxPool>().map(|p| &p.pool_spec).or_else(|| op.downcast_ref::<SumPool>().map(|p| &p.pool_spec)).or_else(|| op.downcast_ref::<Conv>().map(|c| &c.pool_spec));
        if let (Some(spec), Some(input)) = (spec, node.inputs.first()) {
            let shape = model.outlet_fact(*input).map(|f| f.shape.to_tvec()).unwrap_or_default();
            if let Some(reason) = window_too_wide(spec, &shape) {
                return Err(Error::Unpreparable { what: what.into(), node: node.name.clone(), within: within.to_vec(), reason });
            }
        }
        if let Some(branches) = op.downcast_ref::<IfThenElse>() {
            let label = model.outlet_label(OutletId::new(node.id, 0));
            let name = label.and_then(|l| names.get(l)).unwrap_or(&node.name);
            let within = [within, &[name.clone()]].concat();
            check_windows(&branches.then_body, names, what, &within)?;
            check_windows(&branches.else_body, names, what, &within)?;
        }
    }
    Ok(())
}

/// Every node's name, by the label of its first output.
fn names_by_output(model: &InferenceModel) -> HashMap<String, String> {
    model.nodes().iter().filter_map(|n| Some((model.outlet_label(OutletId::new(n.id, 0))?.to_string(), n.name.clone()))).collect()
}

/// Why a window does not fit its input (of known spatial size) on some axis, if it does not.
/// Automatic (SAME) padding fits any window, so there it must span at most twice the input.
fn window_too_wide(spec: &PoolSpec, shape: &[TDim]) -> Option<String> {
    let shape = spec.data_format.shape(shape.to_vec()).ok()?;
    for (axis, (&kernel, dim)) in spec.kernel_shape.iter().zip(shape.hw_dims()).enumerate() {
        let Some(extent) = dim.to_i64().ok().and_then(|v| usize::try_from(v).ok()) else { continue };
        let dilation = spec.dilations.as_ref().and_then(|d| d.get(axis).copied()).unwrap_or(1);
        let field = kernel.saturating_sub(1).saturating_mul(dilation).saturating_add(1);
        let (room, padding) = match &spec.padding {
            PaddingSpec::Explicit(before, after) | PaddingSpec::ExplicitOnnxPool(before, after, _) => {
                let (b, a) = (before.get(axis).copied().unwrap_or(0), after.get(axis).copied().unwrap_or(0));
                (extent.saturating_add(b).saturating_add(a), format!("with its padding {b} + {a}"))
            }
            PaddingSpec::Valid => (extent, "with no padding".to_string()),
            PaddingSpec::SameUpper | PaddingSpec::SameLower => (extent.saturating_mul(2).saturating_add(1), "twice over, with automatic padding".to_string()),
        };
        if field > room {
            return Some(format!("its window spans {field} on spatial axis {axis} (kernel {kernel}, dilation {dilation}), more than its input's {extent} {padding}"));
        }
    }
    None
}

/// Runs a tract step, turning its error (or panic) into [`Error::Unpreparable`] naming the node.
fn guarded<T>(what: &str, step: impl FnOnce() -> TractResult<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(step)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(unpreparable(what, &e)),
        Err(panic) => {
            let message = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
            Err(Error::Unpreparable { what: what.into(), node: String::new(), within: Vec::new(), reason: format!("tract panicked: {message}") })
        }
    }
}

/// The innermost node tract's error chain names (with the nodes around it, for subgraphs), and
/// the chain's root cause.
fn unpreparable(what: &str, e: &TractError) -> Error {
    let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    let mut nodes: Vec<(String, String)> = Vec::new();
    for found in chain.iter().flat_map(|m| nodes_in(m)) {
        if !nodes.contains(&found) {
            nodes.push(found);
        }
    }
    let mut reason = chain.last().cloned().unwrap_or_default();
    if let Some((name, _)) = nodes.iter().find(|(_, op)| op == "If") {
        if reason.contains("output_fact") || reason.contains("unify") {
            reason = format!("the branches of If {} give outputs of different shapes or types, which tract needs to be the same ({reason})", Name(name));
        }
    }
    let (node, within) = match nodes.split_last() {
        None => (String::new(), Vec::new()),
        Some(((inner, _), outer)) => (inner.clone(), outer.iter().map(|(n, _)| n.clone()).collect()),
    };
    Error::Unpreparable { what: what.into(), node, within, reason }
}

/// The nodes and operators a tract message names as `#12 "name" Op`, outermost first.
fn nodes_in(message: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = message;
    while let Some(at) = rest.find('#') {
        rest = &rest[at + 1..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        let Some(quoted) = rest[digits..].strip_prefix(" \"") else { continue };
        if digits == 0 {
            continue;
        }
        let Some(end) = quoted.find('"') else { break };
        let op = quoted[end + 1..].split_whitespace().next().unwrap_or_default().trim_end_matches(':');
        found.push((quoted[..end].to_string(), op.to_string()));
        rest = &quoted[end + 1..];
    }
    found
}

#[cfg(test)]
mod tests {
    use super::nodes_in;

    #[test]
    fn node_names_are_found_in_tract_messages() {
        let found = nodes_in("Failed analyse for node #4 \"choose\" If: Infering facts: Failed analyse for node #0 \"m\" Reduce<Mean>: x");
        assert_eq!(found, [("choose".to_string(), "If".to_string()), ("m".to_string(), "Reduce<Mean>".to_string())]);
        assert!(nodes_in("Condition failed: `a == b`").is_empty());
        assert!(nodes_in("issue #x \"quoted\" and #12 plain").is_empty());
    }
}
