//! tract's optimisation, run so that no weight exists twice and the heap does not fragment.
//!
//! A wasm memory never shrinks, so the high-water mark of preparing the model is the instance's size
//! for its whole life. tract's passes replace a weight by a new constant (reshaped, transposed, packed
//! for the matmul kernel) made while the old one is still held, and drop the old one only when the
//! model is next compacted, after a whole sweep of the pass. Two things here keep the mark near the
//! weights:
//! - before every pass, [`FoldInPlace`] folds each large weight's chain of reshapes, transpositions
//!   and packing from the weight itself, once the model has let go of it: a reshape keeps its buffer,
//!   and a packed kernel is placed where its weight was (see [`fold`]);
//! - every other pass stops its sweep after a patch that makes a large constant, so tract compacts
//!   the model, freeing the constant it replaced, before the next one is made;
//! - a pass that rewrites the model directly (codegen's merge of same-role matmul axes) folds the
//!   reshapes it adds with tract's `prop_consts`, which copies a weight it still holds: large weights
//!   are hidden from such a pass and their new reshapes left to [`FoldInPlace`] (see [`Hidden`]).
//!
//! The passes and their order are otherwise tract's own.

use tract_onnx::prelude::{
    Arc, InferenceModel, InferenceModelExt, IntoArcTensor, IntoTValue, OutletId, TValue, TVec,
    Tensor, TractResult, TypedFact, TypedModel, TypedNode, TypedOp, tvec,
};
use tract_onnx::tract_core::internal::format_err;
use tract_onnx::tract_core::model::TypedModelPatch;
use tract_onnx::tract_core::ops::change_axes::{AxisOp, IntoShape};
use tract_onnx::tract_core::ops::dummy::Dummy;
use tract_onnx::tract_core::ops::identity::Identity;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::matmul::pack::OptMatMulPack;
use tract_onnx::tract_core::optim::{Optimizer, OptimizerSession, TypedPass};

/// Constants at least this large end a sweep, so the one they replace is freed at once.
const LARGE_CONST_BYTES: usize = 64 << 10;

/// Types, declutters and optimises `model` as `into_optimized` does, one copy of each weight at a time.
pub fn optimize(model: InferenceModel) -> TractResult<TypedModel> {
    let mut model = model.into_typed()?;
    frugal(Optimizer::declutter()).optimize(&mut model)?;
    model.optimize_with_session(&mut frugal(Optimizer::codegen()).session())?;
    Ok(model)
}

fn frugal(optimizer: Optimizer) -> Optimizer {
    let wrapped = optimizer.passes.into_iter().map(|pass| {
        Box::new(StopAfterLargeConst {
            pass,
            stopped: false,
        }) as Box<dyn TypedPass>
    });
    Optimizer {
        passes: wrapped
            .flat_map(|pass| [Box::new(FoldInPlace) as Box<dyn TypedPass>, pass])
            .collect(),
        steps: optimizer.steps,
    }
}

/// Folds, for every large weight, the chain of reshapes, transpositions and packing that consumes
/// only it, before the pass after it could fold that chain with the weight still held.
#[derive(Clone, Debug)]
struct FoldInPlace;

impl TypedPass for FoldInPlace {
    fn reset(&mut self) -> TractResult<()> {
        Ok(())
    }

    fn next(
        &mut self,
        _session: &mut OptimizerSession,
        _model: &TypedModel,
    ) -> TractResult<Option<TypedModelPatch>> {
        Ok(None)
    }

    fn run_direct(&mut self, model: &mut TypedModel) -> TractResult<bool> {
        let mut changed = false;
        let mut freed_up_to = None;
        loop {
            let mut pending = Vec::new();
            for id in 0..model.nodes.len() {
                if let Some(chain) = foldable_chain(model, id)? {
                    pending.push((id, chain));
                }
            }
            let Some((id, chain)) = pending.iter().min_by_key(|(id, _)| weight_buffer(model, *id).start) else {
                return Ok(changed);
            };
            let buffer = weight_buffer(model, *id);
            let hole_below = freed_up_to.is_some_and(|end: usize| {
                (end..=end + ALLOCATOR_GAP_BYTES).contains(&buffer.start)
            });
            let freed = fold(model, *id, chain, hole_below)?;
            freed_up_to = freed.then_some(buffer.end);
            model.compact()?;
            changed = true;
        }
    }
}

/// The nodes after constant `id` that can be computed from it alone, in order, if it is a large
/// weight that nothing else reads: its reshapes and transpositions and the packing of the kernel,
/// none making more bytes than the weight (a packed kernel excepted).
fn foldable_chain(model: &TypedModel, id: usize) -> TractResult<Option<Vec<usize>>> {
    let node = &model.nodes[id];
    let Some(weight) = node.op_as::<Const>().map(Const::val) else {
        return Ok(None);
    };
    if weight.is_exotic()
        || bytes(weight) < LARGE_CONST_BYTES
        || model.outputs.iter().any(|o| o.node == id)
    {
        return Ok(None);
    }
    let mut chain = Vec::new();
    let mut at = id;
    while let Some(next) = model.single_succ(at)? {
        let fact = model.outlet_fact(OutletId::new(next.id, 0))?;
        let grows = fact
            .mem_size()
            .to_i64()
            .map_or(true, |m| m as usize > bytes(weight));
        if next.inputs.len() != 1
            || next.outputs.len() != 1
            || !(next.op_is::<AxisOp>()
                || next.op_is::<IntoShape>()
                || next.op_is::<Identity>()
                || next.op_is::<OptMatMulPack>())
            || (grows && !fact.is_exotic())
            || model.outputs.iter().any(|o| o.node == at)
        {
            break;
        }
        chain.push(next.id);
        at = next.id;
    }
    Ok((!chain.is_empty()).then_some(chain))
}

/// Replaces constant `id` and `chain` by the chain's value, computed from the weight itself once the
/// model has let go of it: reshapes keep its buffer, and a step that makes a new buffer frees it.
///
/// When the last step makes the new buffer from the weight's own (a packing or a transposition right
/// after the weight), the buffer is copied aside and freed first, so that the allocator puts the new
/// constant where the weight was. It is about the weight's size (within 1/64: a packed kernel's
/// alignment) and borrows the few bytes it lacks from the hole that the weight right below it left
/// (weights fold from the lowest address up), so this is done only when there is such a
/// `hole_below`; otherwise the weight is folded directly, one copy less, and leaves its own hole
/// for the next. Returns whether the weight's buffer was freed.
fn fold(model: &mut TypedModel, id: usize, chain: &[usize], hole_below: bool) -> TractResult<bool> {
    let eval = |model: &TypedModel, node: usize, value: TVec<TValue>| {
        model.nodes[node]
            .op
            .eval_out_of_plan(value)?
            .ok_or_else(|| {
                format_err!(
                    "`{}` cannot be computed ahead of time",
                    model.nodes[node].name
                )
            })
    };
    let (&last, before) = chain.split_last().expect("a chain has a node");
    let weight = model.nodes[id]
        .op_as::<Const>()
        .expect("a constant")
        .val()
        .clone();
    let buffer = weight.as_bytes().as_ptr();
    let new_buffer = !in_place(&model.nodes[last]);
    let in_its_place = hole_below
        && new_buffer
        && model
            .outlet_fact(OutletId::new(last, 0))?
            .mem_size()
            .to_i64()
            .is_ok_and(|m| m as usize <= bytes(&weight) + bytes(&weight) / 64);
    release(model, id);
    let mut value = tvec![match Arc::try_unwrap(weight) {
        Ok(owned) => owned.into_tvalue(),
        Err(shared) => TValue::from_const(shared),
    }];
    for &node in before {
        value = eval(model, node, value)?;
    }
    if in_its_place && value[0].as_bytes().as_ptr() == buffer {
        value = tvec![(*value[0]).clone().into_tvalue()];
    }
    let mut value = eval(model, last, value)?;
    let exotic = model
        .outlet_fact(OutletId::new(last, 0))?
        .exotic_fact
        .clone();
    let mut patch = TypedModelPatch::default();
    let value: Arc<Tensor> = value.remove(0).into_arc_tensor();
    let wire = patch.wire_node(
        &model.nodes[last].name,
        Const::new_with_opt_exotic_fact(value, exotic)?,
        &[],
    )?[0];
    patch.shunt_outside(model, OutletId::new(last, 0), wire)?;
    patch.apply(model)?;
    Ok(new_buffer)
}

/// Whether `node` only changes the shape of its input, keeping its buffer.
fn in_place(node: &TypedNode) -> bool {
    node.op_is::<IntoShape>()
        || node.op_is::<Identity>()
        || node
            .op_as::<AxisOp>()
            .is_some_and(|op| !matches!(op, AxisOp::Move(..)))
}

/// Drops the model's hold on constant `id`'s value; the node is left for compaction to remove.
fn release(model: &mut TypedModel, id: usize) {
    let node = &mut model.nodes[id];
    node.op = Box::new(Dummy);
    release_node(node);
}

/// Forgets the value a node's fact records.
fn release_node(node: &mut TypedNode) {
    node.outputs[0].fact.konst = None;
    node.outputs[0].fact.uniform = None;
}

/// The addresses of constant `id`'s bytes.
fn weight_buffer(model: &TypedModel, id: usize) -> std::ops::Range<usize> {
    let bytes = model.nodes[id].op_as::<Const>().expect("a constant").val().as_bytes().as_ptr_range();
    bytes.start as usize..bytes.end as usize
}

/// How far apart two blocks allocated one after the other may lie: the allocator's block header and
/// alignment.
const ALLOCATOR_GAP_BYTES: usize = 256;

fn bytes(t: &Tensor) -> usize {
    t.len() * t.datum_type().size_of()
}

/// A pass whose sweep ends after its first patch that makes a large constant.
#[derive(Clone, Debug)]
struct StopAfterLargeConst {
    pass: Box<dyn TypedPass>,
    stopped: bool,
}

impl TypedPass for StopAfterLargeConst {
    fn reset(&mut self) -> TractResult<()> {
        self.stopped = false;
        self.pass.reset()
    }

    fn next(
        &mut self,
        session: &mut OptimizerSession,
        model: &TypedModel,
    ) -> TractResult<Option<TypedModelPatch>> {
        if self.stopped {
            return Ok(None);
        }
        let patch = self.pass.next(session, model)?;
        self.stopped = patch.as_ref().is_some_and(makes_large_const);
        Ok(patch)
    }

    fn run_direct(&mut self, model: &mut TypedModel) -> TractResult<bool> {
        let hidden = Hidden::take(model);
        let changed = self.pass.run_direct(model);
        hidden.restore(model);
        changed
    }
}

/// Large weights taken out of sight of a pass: each constant node's op becomes a [`Dummy`] with no
/// known value, which tract's constant folding leaves alone, and gets its op and fact back by name
/// (a pass may renumber nodes) once the pass is done; one the pass left unused is dropped.
struct Hidden(Vec<(String, Box<dyn TypedOp>, TypedFact)>);

impl Hidden {
    fn take(model: &mut TypedModel) -> Hidden {
        let mut hidden = Vec::new();
        for node in &mut model.nodes {
            let large = node
                .op_as::<Const>()
                .is_some_and(|c| !c.val().is_exotic() && bytes(c.val()) >= LARGE_CONST_BYTES)
                && node.outputs[0].fact.uniform.is_none();
            if large {
                let fact = node.outputs[0].fact.clone();
                release_node(node);
                let op = std::mem::replace(&mut node.op, Box::new(Dummy));
                hidden.push((node.name.clone(), op, fact));
            }
        }
        Hidden(hidden)
    }

    fn restore(self, model: &mut TypedModel) {
        for (name, op, fact) in self.0 {
            if let Some(node) = model.nodes.iter_mut().find(|n| n.name == name && n.op_is::<Dummy>()) {
                node.op = op;
                node.outputs[0].fact = fact;
            }
        }
    }
}

fn makes_large_const(patch: &TypedModelPatch) -> bool {
    patch.model.nodes.iter().any(|node| {
        node.op_as::<Const>()
            .is_some_and(|c| c.val().is_exotic() || bytes(c.val()) >= LARGE_CONST_BYTES)
    })
}
