//! NetLess's own f32 matrix-multiply kernels for wasm32 (simd128, and relaxed-simd's fused
//! multiply-add when the build has it), registered with tract-linalg so that every Conv, MatMul and
//! Gemm of tract's optimised plan runs them.
//!
//! A kernel computes one `MR x NR` tile of the output from packed panels: A as `MR` values per
//! step of the reduction, B as `NR` values per step, in `MR x NR/4` vector accumulators. Each
//! step loads A as whole vectors and broadcasts its lanes with shuffles, which costs fewer loads
//! per multiply-add than broadcasting from memory. Cranelift moves loop-carried vectors through
//! the stack at every back edge of a loop (its disassembly shows every accumulator stored and
//! reloaded each iteration), so the reduction runs four steps per iteration. Tiles of 4x8, 6x8,
//! 4x12, 8x8 and 4x16 were measured (docs/benchmarks.md); 4x16 was fastest on every model. The
//! rest of tract's fused protocol (bias, activations, residual adds, stores to strided outputs)
//! is interpreted here on the same accumulators.
//!
//! The kernels are registered through tract-linalg's public registries: each kernel as an
//! `MmmRoutine`, and an `MmmTier` above tract's own wasm tier that names ours for every f32
//! matrix-matrix product (matrix-vector products keep tract's kernels).

use std::arch::wasm32::*;

use tract_onnx::prelude::DatumType;
use tract_onnx::tract_core::tract_linalg::isa::{Arch, IsaSet};
use tract_onnx::tract_core::tract_linalg::mmm::{
    DynKernel, FusedKerSpec, MatMatMul, OutputStoreKer, Query, Suitable,
};
use tract_onnx::tract_core::tract_linalg::mmm_routines::MmmRoutine;
use tract_onnx::tract_core::tract_linalg::mmm_tiers::MmmTier;
use tract_onnx::tract_core::tract_linalg::pack::PackedFormat;

/// The kernel every f32 matrix-matrix product runs: a tile of 4 rows by 16 columns.
pub const GEMM: &str = "netless_f32_4x16";

fn kernel_4x16() -> Box<dyn MatMatMul> {
    kernel::<4, 16>(GEMM, run::<4, 4>)
}

fn kernel<const MR: usize, const NR: usize>(
    name: &str,
    run: unsafe fn(&[FusedKerSpec<f32>]) -> isize,
) -> Box<dyn MatMatMul> {
    let pack = |r| PackedFormat::new(DatumType::F32, r, 16);
    let mut k = DynKernel::<MR, NR, f32>::new(name, run, pack(MR), pack(NR));
    k.arch = Some(Arch::Wasm32Simd128);
    k.mmm()
}

inventory::submit! { MmmRoutine { make: kernel_4x16 } }

inventory::submit! {
    MmmTier {
        arch: Some(Arch::Wasm32Simd128),
        precedence: 2,
        name: "netless-wasm",
        applies: |_| true,
        preferred,
    }
}

/// Our tile for f32 products with more than one column; `None` leaves the others to tract.
fn preferred(_: &IsaSet, dt: DatumType, query: &Query, _: &[Suitable]) -> Option<&'static str> {
    (dt == DatumType::F32 && query.n != Some(1)).then_some(GEMM)
}

/// `MR` rows of `NV` vectors (`4 * NV` columns) of accumulators.
type Tile<const MR: usize, const NV: usize> = [[v128; NV]; MR];

/// Interprets tract's fused-kernel program on one tile; 0 means done.
///
/// # Safety
/// Every pointer in `spec` must be valid for the tile it describes, as tract guarantees.
unsafe fn run<const MR: usize, const NV: usize>(spec: &[FusedKerSpec<f32>]) -> isize {
    let mut acc: Tile<MR, NV> = [[f32x4_splat(0.0); NV]; MR];
    for op in spec {
        // SAFETY: the pointers come from tract, sized for an `MR x 4*NV` tile.
        unsafe {
            match *op {
                FusedKerSpec::Done => break,
                FusedKerSpec::Clear => acc = [[f32x4_splat(0.0); NV]; MR],
                FusedKerSpec::LoadTile(_, rows) => load(&mut acc, rows),
                FusedKerSpec::ScalarMin(s) => scalar(&mut acc, s, |s, x| f32x4_min(s, x)),
                FusedKerSpec::ScalarMax(s) => scalar(&mut acc, s, |s, x| f32x4_max(s, x)),
                FusedKerSpec::ScalarAdd(s) => scalar(&mut acc, s, |s, x| f32x4_add(s, x)),
                FusedKerSpec::ScalarMul(s) => scalar(&mut acc, s, |s, x| f32x4_mul(s, x)),
                FusedKerSpec::ScalarSub(s) => scalar(&mut acc, s, |s, x| f32x4_sub(s, x)),
                FusedKerSpec::ScalarSubF(s) => scalar(&mut acc, s, |s, x| f32x4_sub(x, s)),
                FusedKerSpec::LeakyRelu(alpha) => leaky_relu(&mut acc, alpha),
                FusedKerSpec::PerRowMin(row) => per_row(&mut acc, row, |s, x| f32x4_min(s, x)),
                FusedKerSpec::PerRowMax(row) => per_row(&mut acc, row, |s, x| f32x4_max(s, x)),
                FusedKerSpec::PerRowAdd(row) => per_row(&mut acc, row, |s, x| f32x4_add(s, x)),
                FusedKerSpec::PerRowMul(row) => per_row(&mut acc, row, |s, x| f32x4_mul(s, x)),
                FusedKerSpec::PerRowSub(row) => per_row(&mut acc, row, |s, x| f32x4_sub(s, x)),
                FusedKerSpec::PerRowSubF(row) => per_row(&mut acc, row, |s, x| f32x4_sub(x, s)),
                FusedKerSpec::PerColMin(col) => per_col(&mut acc, col, |s, x| f32x4_min(s, x)),
                FusedKerSpec::PerColMax(col) => per_col(&mut acc, col, |s, x| f32x4_max(s, x)),
                FusedKerSpec::PerColAdd(col) => per_col(&mut acc, col, |s, x| f32x4_add(s, x)),
                FusedKerSpec::PerColMul(col) => per_col(&mut acc, col, |s, x| f32x4_mul(s, x)),
                FusedKerSpec::PerColSub(col) => per_col(&mut acc, col, |s, x| f32x4_sub(s, x)),
                FusedKerSpec::PerColSubF(col) => per_col(&mut acc, col, |s, x| f32x4_sub(x, s)),
                // Quantisation steps reach an f32 tile only as scalings.
                FusedKerSpec::QScale(shift, policy, mult) => {
                    let scale = tract_onnx::tract_core::tract_linalg::Scaler::from_fuse_params(
                        shift, policy, mult,
                    );
                    scalar(&mut acc, scale.scale, |s, x| f32x4_mul(s, x))
                }
                FusedKerSpec::RoundingShiftRight(shift, _) => {
                    scalar(&mut acc, 2f32.powi(-(shift as i32)), |s, x| f32x4_mul(s, x))
                }
                FusedKerSpec::ShiftLeft(shift) => {
                    scalar(&mut acc, 2f32.powi(shift as i32), |s, x| f32x4_mul(s, x))
                }
                FusedKerSpec::AddUnicast(tile) => add_unicast(&mut acc, tile),
                FusedKerSpec::AddRowColProducts(rows, cols) => {
                    add_outer_product(&mut acc, rows, cols)
                }
                FusedKerSpec::Store(tile) => store(&acc, tile),
                FusedKerSpec::AddMatMul { k, pa, pb, .. } => {
                    add_mat_mul(&mut acc, k, pa.cast(), pb.cast())
                }
            }
        }
    }
    0
}

/// `acc + a * b`, fused into one rounding where the engine has an FMA and the build relaxed-simd.
#[inline(always)]
fn madd(acc: v128, a: v128, b: v128) -> v128 {
    #[cfg(target_feature = "relaxed-simd")]
    {
        f32x4_relaxed_madd(a, b, acc)
    }
    #[cfg(not(target_feature = "relaxed-simd"))]
    {
        f32x4_add(acc, f32x4_mul(a, b))
    }
}

/// The product of the packed panels: for each of the `k` steps, `MR` values of A times `4 * NV`
/// values of B.
#[inline(always)]
unsafe fn add_mat_mul<const MR: usize, const NV: usize>(
    acc: &mut Tile<MR, NV>,
    k: usize,
    a: *const f32,
    b: *const f32,
) {
    // A copy the loop keeps in registers: `acc` itself lives in memory between the steps of the
    // fused program. Cranelift moves loop-carried vectors through the stack at every back edge,
    // so the loop runs four steps per iteration.
    let mut t = *acc;
    let mut step = 0;
    while step + 4 <= k {
        for s in step..step + 4 {
            // SAFETY: the panels hold `k` steps of `MR` and `4 * NV` values.
            unsafe { mat_mul_step(&mut t, a.add(s * MR), b.add(s * 4 * NV)) };
        }
        step += 4;
    }
    for s in step..k {
        // SAFETY: as above.
        unsafe { mat_mul_step(&mut t, a.add(s * MR), b.add(s * 4 * NV)) };
    }
    *acc = t;
}

/// One step of the reduction: `MR` values of A (at `a`) times `4 * NV` values of B (at `b`);
/// `MR` is a multiple of 4.
#[inline(always)]
unsafe fn mat_mul_step<const MR: usize, const NV: usize>(
    t: &mut Tile<MR, NV>,
    a: *const f32,
    b: *const f32,
) {
    // SAFETY: the caller passes panels holding a whole step.
    unsafe {
        let bv: [v128; NV] = std::array::from_fn(|v| v128_load(b.add(4 * v).cast()));
        let mut av = f32x4_splat(0.0);
        for (r, row) in t.iter_mut().enumerate() {
            if r % 4 == 0 {
                av = v128_load(a.add(r).cast());
            }
            let ar = lane(av, r % 4);
            for (x, bv) in row.iter_mut().zip(&bv) {
                *x = madd(*x, ar, *bv);
            }
        }
    }
}

/// Lane `i` of `v` in all four lanes.
#[inline(always)]
fn lane(v: v128, i: usize) -> v128 {
    match i {
        0 => i32x4_shuffle::<0, 0, 0, 0>(v, v),
        1 => i32x4_shuffle::<1, 1, 1, 1>(v, v),
        2 => i32x4_shuffle::<2, 2, 2, 2>(v, v),
        _ => i32x4_shuffle::<3, 3, 3, 3>(v, v),
    }
}

#[inline(always)]
fn scalar<const MR: usize, const NV: usize>(
    acc: &mut Tile<MR, NV>,
    s: f32,
    op: impl Fn(v128, v128) -> v128,
) {
    let s = f32x4_splat(s);
    acc.iter_mut().flatten().for_each(|x| *x = op(s, *x));
}

#[inline(always)]
fn leaky_relu<const MR: usize, const NV: usize>(acc: &mut Tile<MR, NV>, alpha: f32) {
    let alpha = f32x4_splat(alpha);
    let zero = f32x4_splat(0.0);
    for x in acc.iter_mut().flatten() {
        *x = v128_bitselect(*x, f32x4_mul(alpha, *x), f32x4_gt(*x, zero));
    }
}

/// Applies `op(row[r], x)` to every accumulator of row `r`.
#[inline(always)]
unsafe fn per_row<const MR: usize, const NV: usize>(
    acc: &mut Tile<MR, NV>,
    row: *const f32,
    op: impl Fn(v128, v128) -> v128,
) {
    for (r, vs) in acc.iter_mut().enumerate() {
        // SAFETY: `row` holds `MR` values.
        let s = unsafe { v128_load32_splat(row.add(r).cast()) };
        vs.iter_mut().for_each(|x| *x = op(s, *x));
    }
}

/// Applies `op(col[c], x)` to every accumulator of column `c`.
#[inline(always)]
unsafe fn per_col<const MR: usize, const NV: usize>(
    acc: &mut Tile<MR, NV>,
    col: *const f32,
    op: impl Fn(v128, v128) -> v128,
) {
    // SAFETY: `col` holds `4 * NV` values.
    let cv: [v128; NV] = std::array::from_fn(|v| unsafe { v128_load(col.add(4 * v).cast()) });
    for row in acc.iter_mut() {
        for (x, c) in row.iter_mut().zip(&cv) {
            *x = op(*c, *x);
        }
    }
}

/// Adds `rows[r] * cols[c]` to every element.
#[inline(always)]
unsafe fn add_outer_product<const MR: usize, const NV: usize>(
    acc: &mut Tile<MR, NV>,
    rows: *const f32,
    cols: *const f32,
) {
    // SAFETY: `rows` holds `MR` values and `cols` `4 * NV`.
    let cv: [v128; NV] = std::array::from_fn(|v| unsafe { v128_load(cols.add(4 * v).cast()) });
    for (r, row) in acc.iter_mut().enumerate() {
        let s = unsafe { v128_load32_splat(rows.add(r).cast()) };
        for (x, c) in row.iter_mut().zip(&cv) {
            *x = madd(*x, s, *c);
        }
    }
}

/// Loads the tile from `MR x 4*NV` values stored row after row.
#[inline(always)]
unsafe fn load<const MR: usize, const NV: usize>(acc: &mut Tile<MR, NV>, rows: *const f32) {
    for (i, x) in acc.iter_mut().flatten().enumerate() {
        // SAFETY: `rows` holds the whole tile.
        *x = unsafe { v128_load(rows.add(4 * i).cast()) };
    }
}

/// The element at row `r`, column `c` of a strided output tile.
#[inline(always)]
unsafe fn at(tile: &OutputStoreKer, r: usize, c: usize) -> *mut f32 {
    // SAFETY: tract sizes the tile's strides for `MR x NR` f32 values.
    unsafe {
        tile.ptr
            .offset(r as isize * tile.row_byte_stride + c as isize * tile.col_byte_stride)
            .cast()
    }
}

/// Adds a strided `MR x 4*NV` tile of f32 to the accumulators.
#[inline(always)]
unsafe fn add_unicast<const MR: usize, const NV: usize>(
    acc: &mut Tile<MR, NV>,
    tile: OutputStoreKer,
) {
    for (r, row) in acc.iter_mut().enumerate() {
        for (v, x) in row.iter_mut().enumerate() {
            // SAFETY: see `at`.
            let m = unsafe {
                let c = 4 * v;
                f32x4(*at(&tile, r, c), *at(&tile, r, c + 1), *at(&tile, r, c + 2), *at(&tile, r, c + 3))
            };
            *x = f32x4_add(*x, m);
        }
    }
}

/// Writes the accumulators to a strided `MR x 4*NV` output tile.
#[inline(always)]
unsafe fn store<const MR: usize, const NV: usize>(acc: &Tile<MR, NV>, tile: OutputStoreKer) {
    for (r, row) in acc.iter().enumerate() {
        for (v, x) in row.iter().enumerate() {
            let c = 4 * v;
            // SAFETY: see `at`.
            unsafe {
                if tile.col_byte_stride == 4 {
                    v128_store(at(&tile, r, c).cast(), *x);
                } else {
                    *at(&tile, r, c) = f32x4_extract_lane::<0>(*x);
                    *at(&tile, r, c + 1) = f32x4_extract_lane::<1>(*x);
                    *at(&tile, r, c + 2) = f32x4_extract_lane::<2>(*x);
                    *at(&tile, r, c + 3) = f32x4_extract_lane::<3>(*x);
                }
            }
        }
    }
}
