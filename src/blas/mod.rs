//! The one matrix product of the CPU backend: `C = A * B` or `C += A * B` on strided 2-D views.
//!
//! Every convolution and linear layer reduces to this call. Operands are `Layout` views into
//! plain slices, so a channel slice of an activation, a column range of a weight (with the full
//! leading dimension) or a transpose (swapped strides) reaches the product without a copy.
//!
//! The product is our own BLIS-style GEMM (`kernel`): packed panels, cache blocking and a
//! register tile for the widest instruction set the processor has (AVX-512, AVX-512 with BF16
//! products, AVX2 + FMA), chosen at run time, with a portable tile for other CPUs;
//! `SLICEOUT_CPU_ISA` forces one ([`select_kernel`]). It exists
//! because a training step must not allocate: packing space is one fixed buffer per thread,
//! made by [`prepare`] on every rayon worker before the first step (and lazily, once, on a
//! thread that calls in unprepared). The wrapper is the only place that goes unsafe: it checks
//! shapes, that every view lies inside its slice and that the destination view never names one
//! element twice (threads would race on it), then hands raw pointers and strides down.
//!
//! Parallel products cut C along its longer side into column or row blocks, one packed problem
//! each, so both the thin-and-wide products of a convolution (`m` = 16..256 output channels,
//! `n` = tens of thousands of pixels) and their transposes keep every thread busy; a product
//! whose `k` dwarfs `m` and `n` (a weight gradient) cuts `k` instead, into per-thread partial
//! results that are summed afterwards.
//!
//! Operands may be f32 or bf16 ([`Elem`]), each on its own: packing converts `A` and `B` to
//! f32 as it copies them, the sums are f32, and a bf16 `C` is rounded once per element after
//! the whole sum (never k-split: the parts' sum would round twice).

mod kernel;

pub use self::kernel::Kernel;
use self::kernel::{gemm_any, MatMut, MatRef, PackBuf};
use crate::error::{Error, Result};
use crate::ir::{Elem, Layout};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::OnceLock;

/// Products below this many multiply-adds run on the calling thread: rayon's fork/join costs
/// more than it saves there.
const PARALLEL_MACS: usize = 64 * 1024;
/// Blocks per thread when cutting C: more than one lets rayon rebalance when a core is shared,
/// few enough that re-packing the uncut operand per block stays cheap.
const BLOCKS_PER_THREAD: usize = 3;
/// Floats of partial results a thread may hold for a k-split product (4 MiB).
const PARTIAL_LEN: usize = 1 << 20;

thread_local! {
    static PACK: RefCell<Option<PackBuf>> = const { RefCell::new(None) };
    static PARTIAL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Packing buffers created on this thread (tests check that prepared threads make none).
    static PACK_ALLOCS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn note_pack_alloc() {
    PACK_ALLOCS.with(|n| n.set(n.get() + 1));
}

/// Allocates the per-thread packing and partial-sum buffers on every thread of rayon's global
/// pool and on the calling thread, so later products allocate nothing. Call before the first
/// training step; calling again is free.
pub fn prepare() {
    rayon::broadcast(|_| prepare_here());
    prepare_here();
}

fn prepare_here() {
    PACK.with(|p| {
        if let Ok(mut slot) = p.try_borrow_mut() {
            slot.get_or_insert_with(PackBuf::new);
        }
    });
    PARTIAL.with(|p| {
        if let Ok(mut v) = p.try_borrow_mut() {
            if v.len() < PARTIAL_LEN {
                *v = vec![0.0; PARTIAL_LEN];
            }
        }
    });
}

/// Runs `f` with this thread's packing buffer, made here on first use. A re-entrant call (it
/// cannot happen: no product calls rayon while holding the buffer) would get a fresh one.
fn with_pack<R>(f: impl FnOnce(&mut PackBuf) -> R) -> R {
    PACK.with(|p| match p.try_borrow_mut() {
        Ok(mut slot) => f(slot.get_or_insert_with(PackBuf::new)),
        Err(_) => f(&mut PackBuf::new()),
    })
}

/// The kernel every product of this process runs, fixed at the first product or by
/// [`select_kernel`].
static KERNEL: OnceLock<Kernel> = OnceLock::new();

/// The environment variable that forces an instruction set.
pub const ISA_VAR: &str = "SLICEOUT_CPU_ISA";

/// The kernel `SLICEOUT_CPU_ISA` names, or the fastest this processor runs when it is unset or
/// empty. A name that is no kernel, or one this processor cannot run, is refused with the list
/// of those it can.
pub fn kernel_from_env() -> Result<Kernel> {
    let value = match std::env::var(ISA_VAR) {
        Err(std::env::VarError::NotPresent) => return Ok(Kernel::detect()),
        Err(std::env::VarError::NotUnicode(v)) => return Err(isa_refused(&v.to_string_lossy(), "")),
        Ok(v) if v.trim().is_empty() => return Ok(Kernel::detect()),
        Ok(v) => v,
    };
    let name = value.trim().to_ascii_lowercase();
    match Kernel::ALL.iter().find(|(_, n)| *n == name) {
        Some(&(k, _)) if k.supported() => Ok(k),
        Some(_) => Err(isa_refused(&value, " (this processor lacks it)")),
        None => Err(isa_refused(&value, "")),
    }
}

fn isa_refused(value: &str, why: &str) -> Error {
    let runs: Vec<&str> = Kernel::ALL.iter().filter(|(k, _)| k.supported()).map(|(_, n)| *n).collect();
    Error::flag(
        ISA_VAR,
        format!("{value}{why}"),
        format!("one of the instruction sets this processor runs: {}", runs.join(", ")),
    )
}

/// Checks `SLICEOUT_CPU_ISA` and fixes the kernel for the rest of the process; the commands call
/// it before any product, so a bad value is an error rather than a silent fallback.
pub fn select_kernel() -> Result<Kernel> {
    let k = kernel_from_env()?;
    Ok(*KERNEL.get_or_init(|| k))
}

/// The kernel products run: the one [`select_kernel`] fixed, else `SLICEOUT_CPU_ISA`'s when it
/// is valid, else the fastest this processor runs.
pub fn kernel() -> Kernel {
    *KERNEL.get_or_init(|| kernel_from_env().unwrap_or_else(|_| Kernel::detect()))
}

/// Runs `f` compiled for the vectors of the selected instruction set, so the plain loops it
/// inlines (batch norm, im2col) vectorise to 512 or 256 bits rather than the baseline's 128.
/// Rust neither contracts `a * b + c` into an FMA nor reorders a float sum, so every set gives
/// the same bits. Only what is inlined into the wrapper gets its instructions, so mark the
/// closure `#[inline(always)]` and keep its loops in `#[inline(always)]` helpers.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `kernel()` only names a kernel the processor runs.
        match kernel() {
            Kernel::Avx512 | Kernel::Avx512Bf16 => return unsafe { with_avx512(f) },
            Kernel::Avx2 => return unsafe { with_avx2(f) },
            Kernel::Portable => {}
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `C = A * B` (or `C += A * B` when `accumulate`), with `A: [m, k]`, `B: [k, n]`, `C: [m, n]`
/// given as 2-D views of `a`, `b`, `c`, spread over rayon's threads when large enough.
///
/// Panics when the shapes disagree, a view reaches past its slice, or the `C` view overlaps
/// itself: these are planning bugs, never user input.
pub fn gemm<C: Elem, A: Elem, B: Elem>(
    c: &mut [C],
    c_l: Layout,
    a: &[A],
    a_l: Layout,
    b: &[B],
    b_l: Layout,
    accumulate: bool,
) {
    gemm_on(c, c_l, a, a_l, b, b_l, accumulate, true, kernel());
}

/// `gemm` by a given kernel, which must be one this processor runs ([`Kernel::supported`]), for
/// benchmarks that put the instruction sets side by side.
#[allow(clippy::too_many_arguments)]
pub fn gemm_by<C: Elem, A: Elem, B: Elem>(
    kern: Kernel,
    c: &mut [C],
    c_l: Layout,
    a: &[A],
    a_l: Layout,
    b: &[B],
    b_l: Layout,
    accumulate: bool,
) {
    assert!(kern.supported(), "gemm_by: this processor cannot run the {} kernel", kern.name());
    gemm_on(c, c_l, a, a_l, b, b_l, accumulate, true, kern);
}

/// `gemm` on the calling thread only, for callers that already run many products in parallel.
pub fn gemm_serial(c: &mut [f32], c_l: Layout, a: &[f32], a_l: Layout, b: &[f32], b_l: Layout, accumulate: bool) {
    gemm_on(c, c_l, a, a_l, b, b_l, accumulate, false, kernel());
}

#[allow(clippy::too_many_arguments)]
fn gemm_on<C: Elem, A: Elem, B: Elem>(
    c: &mut [C],
    c_l: Layout,
    a: &[A],
    a_l: Layout,
    b: &[B],
    b_l: Layout,
    accumulate: bool,
    threads: bool,
    kern: Kernel,
) {
    assert!(c_l.ndim() == 2 && a_l.ndim() == 2 && b_l.ndim() == 2, "gemm takes 2-D views");
    let (m, k) = (a_l.dim(0), a_l.dim(1));
    let n = b_l.dim(1);
    assert_eq!(b_l.dim(0), k, "gemm: inner dimensions differ");
    assert_eq!(c_l.shape(), &[m, n], "gemm: output shape differs");
    if m == 0 || n == 0 {
        return;
    }
    assert!(c_l.end() <= c.len(), "gemm: C view past its slice");
    assert!(no_self_overlap(&c_l), "gemm: C view overlaps itself");
    if k == 0 {
        // An empty sum: C stays as is, or becomes zero.
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    c[c_l.index(&[i, j])] = C::from_f32(0.0);
                }
            }
        }
        return;
    }
    assert!(a_l.end() <= a.len(), "gemm: A view past its slice");
    assert!(b_l.end() <= b.len(), "gemm: B view past its slice");
    // SAFETY: each view lies inside its slice (checked above), the C view names distinct
    // elements, and `c` is borrowed mutably while `a` and `b` are shared borrows, so C cannot
    // alias A or B; all three borrows outlive the call, threads included.
    let cm = MatMut { ptr: unsafe { c.as_mut_ptr().add(c_l.offset) }, rs: c_l.stride(0), cs: c_l.stride(1) };
    let am = MatRef { ptr: unsafe { a.as_ptr().add(a_l.offset) }, rs: a_l.stride(0), cs: a_l.stride(1) };
    let bm = MatRef { ptr: unsafe { b.as_ptr().add(b_l.offset) }, rs: b_l.stride(0), cs: b_l.stride(1) };
    let macs = m.saturating_mul(n).saturating_mul(k);
    let nthreads = rayon::current_num_threads();
    if !threads || nthreads == 1 || macs <= PARALLEL_MACS {
        with_pack(|buf| unsafe { gemm_any(kern, cm, am, bm, m, n, k, accumulate, buf) });
        return;
    }
    unsafe { gemm_parallel(kern, cm, am, bm, m, n, k, accumulate, nthreads) };
}

/// Splits one checked product over rayon's threads (see the module comment for the cuts).
///
/// # Safety
/// As `gemm_any`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_parallel<C: Elem, A: Elem, B: Elem>(
    kern: Kernel,
    c: MatMut<C>,
    a: MatRef<A>,
    b: MatRef<B>,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    nthreads: usize,
) {
    let macs = m * n * k;
    let by_work = (macs / PARALLEL_MACS).max(1);
    let (mr, nr) = (kern.mr(), kern.nr());
    let (tiles_m, tiles_n) = (m.div_ceil(mr), n.div_ceil(nr));
    // k-heavy: cutting C would give each thread a sliver of a small C and re-pack most of A or
    // B on every thread; cutting k shares the packing and costs one m*n sum per extra part.
    let parts_k = nthreads.min(by_work).min(k / 256);
    let f32_c = c.as_f32().filter(|_| parts_k >= 2 && k >= 4 * (m + n) && m * n * (parts_k - 1) <= PARTIAL_LEN);
    if let Some(c) = f32_c {
        PARTIAL.with(|p| match p.try_borrow_mut() {
            Ok(mut v) => {
                if v.len() < PARTIAL_LEN {
                    *v = vec![0.0; PARTIAL_LEN];
                }
                unsafe { gemm_split_k(kern, c, a, b, m, n, k, accumulate, parts_k, &mut v) };
            }
            // This thread is inside another k-split product (a worker waiting in one picked
            // this one up: two runs sharing the pool). Cutting the same way into a fresh buffer
            // keeps the result's bits independent of scheduling; a lone run never gets here.
            Err(_) => {
                let mut v = vec![0.0; m * n * (parts_k - 1)];
                unsafe { gemm_split_k(kern, c, a, b, m, n, k, accumulate, parts_k, &mut v) };
            }
        });
        return;
    }
    // Cut the longer side: the uncut operand (re-packed by every block) is then the smaller.
    let (tiles, tile, len) = if n >= m { (tiles_n, nr, n) } else { (tiles_m, mr, m) };
    let blocks = (nthreads * BLOCKS_PER_THREAD).min(tiles).min(by_work);
    if blocks < 2 {
        with_pack(|buf| unsafe { gemm_any(kern, c, a, b, m, n, k, accumulate, buf) });
        return;
    }
    (0..blocks).into_par_iter().for_each(|q| {
        let lo = (q * tiles / blocks * tile).min(len);
        let hi = ((q + 1) * tiles / blocks * tile).min(len);
        if lo == hi {
            return;
        }
        with_pack(|buf| unsafe {
            if n >= m {
                gemm_any(kern, c.at(0, lo), a, b.at(0, lo), m, hi - lo, k, accumulate, buf)
            } else {
                gemm_any(kern, c.at(lo, 0), a.at(lo, 0), b, hi - lo, n, k, accumulate, buf)
            }
        });
    });
}

/// `k` cut into `parts`: part 0 writes C itself, part `q > 0` writes an `m x n` row-major block
/// of `partial`, and the blocks are then added into C.
///
/// # Safety
/// As `gemm_any`; `partial` holds at least `(parts - 1) * m * n` floats.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_split_k<A: Elem, B: Elem>(
    kern: Kernel,
    c: MatMut,
    a: MatRef<A>,
    b: MatRef<B>,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    parts: usize,
    partial: &mut [f32],
) {
    let mn = m * n;
    let base = MatMut { ptr: partial.as_mut_ptr(), rs: n, cs: 1 };
    (0..parts).into_par_iter().for_each(|q| {
        let lo = q * k / parts;
        let hi = (q + 1) * k / parts;
        // Part q > 0 owns rows [(q-1)*m, q*m) of `base`, i.e. floats [(q-1)*mn, q*mn) of `partial`; part 0 owns C.
        let (dst, acc) = if q == 0 { (c, accumulate) } else { (unsafe { base.at((q - 1) * m, 0) }, false) };
        with_pack(|buf| unsafe { gemm_any(kern, dst, a.at(0, lo), b.at(lo, 0), m, n, hi - lo, acc, buf) });
    });
    let sums = &partial[..(parts - 1) * mn];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            for q in 0..parts - 1 {
                s += sums[q * mn + i * n + j];
            }
            unsafe { *c.ptr.add(i * c.rs + j * c.cs) += s };
        }
    }
}

/// A sufficient condition for a 2-D view to name each element once: one dimension steps past
/// the whole extent of the other (row-major, column-major and their padded variants).
fn no_self_overlap(l: &Layout) -> bool {
    let (m, n) = (l.dim(0), l.dim(1));
    let (rs, cs) = (l.stride(0), l.stride(1));
    if m <= 1 && n <= 1 {
        return true;
    }
    if m <= 1 {
        return cs >= 1;
    }
    if n <= 1 {
        return rs >= 1;
    }
    (cs >= 1 && rs >= n * cs) || (rs >= 1 && cs >= m * rs)
}

#[cfg(test)]
mod tests;
