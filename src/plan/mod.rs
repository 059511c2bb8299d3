//! The static memory planner: buffer lifetimes in, arena offsets out.
//!
//! Every activation, gradient and workspace buffer of a step lives in one arena, at an offset
//! fixed before the first step (docs/DESIGN.md, principle 1). Two buffers may share bytes when their
//! lifetimes (inclusive step ranges) do not overlap. The greedy planner, in the spirit of
//! TensorFlow Lite Micro's greedy memory planner:
//!
//! - orders the buffers largest first (ties: earlier first use, then lower index), because the
//!   big ones are the hardest to fit and decide the arena's size;
//! - puts each buffer at the lowest offset, a multiple of `align` ([`ALIGN`] = 256 bytes by
//!   default), where it collides with no already placed buffer whose lifetime overlaps its own
//!   (inclusive ends: a buffer read and written by the same step never aliases);
//! - finds that offset by one sweep over the placed buffers, kept sorted by offset, so each
//!   placement is O(n) and the whole plan O(n^2) worst case (3000 buffers: milliseconds);
//! - skips zero-byte buffers (offset 0, no space, no collisions);
//! - is a heuristic: optimal placement (dynamic storage allocation) is NP-hard, and greedy by
//!   size is the usual good answer.
//!
//! [`plan_linear`] places every buffer after the previous one (no reuse): the baseline that
//! shows what reuse saves. [`check`] verifies any placement independently of how it was made.

pub mod program;
pub mod report;

pub use crate::ir::Lifetime;
pub use program::Program;

/// Default offset alignment in bytes (covers every GPU vector load and cache line).
pub const ALIGN: usize = 256;

/// A plan: one offset per buffer (same order as the input) and the arena size.
#[derive(Clone, Debug)]
pub struct Placement {
    pub offsets: Vec<usize>,
    /// The largest buffer end, rounded up to the alignment.
    pub arena_bytes: usize,
}

/// `x` rounded up to a multiple of `align` (an alignment of 0 counts as 1).
fn align_up(x: usize, align: usize) -> usize {
    let a = align.max(1);
    x.div_ceil(a) * a
}

/// Greedy-by-size placement with reuse; see the module doc.
pub fn plan_greedy(bufs: &[Lifetime], align: usize) -> Placement {
    let mut order: Vec<usize> = (0..bufs.len()).filter(|&i| bufs[i].bytes > 0).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(bufs[i].bytes), bufs[i].first, i));

    let mut offsets = vec![0usize; bufs.len()];
    // Placed buffers as (offset, end, index), sorted by offset: one sweep finds the lowest gap.
    let mut placed: Vec<(usize, usize, usize)> = Vec::with_capacity(order.len());
    let mut max_end = 0usize;
    for &i in &order {
        let b = &bufs[i];
        let mut at = 0usize;
        for &(off, end, j) in &placed {
            if !b.overlaps(&bufs[j]) {
                continue;
            }
            if at + b.bytes <= off {
                // The gap before this neighbour holds it; later neighbours start even higher.
                break;
            }
            at = at.max(align_up(end, align));
        }
        offsets[i] = at;
        let end = at + b.bytes;
        max_end = max_end.max(end);
        let pos = placed.partition_point(|&(off, _, _)| off <= at);
        placed.insert(pos, (at, end, i));
    }
    Placement { offsets, arena_bytes: align_up(max_end, align) }
}

/// Every buffer after the previous one, in input order, no reuse: the baseline.
pub fn plan_linear(bufs: &[Lifetime], align: usize) -> Placement {
    let mut offsets = Vec::with_capacity(bufs.len());
    let mut cursor = 0usize;
    for b in bufs {
        let at = align_up(cursor, align);
        offsets.push(at);
        cursor = at + b.bytes;
    }
    Placement { offsets, arena_bytes: align_up(cursor, align) }
}

/// The bytes needed without any reuse or padding: the sum of the sizes.
pub fn naive_bytes(bufs: &[Lifetime]) -> usize {
    bufs.iter().map(|b| b.bytes).sum()
}

/// Verifies a placement: one offset per buffer, every offset aligned, every buffer inside the
/// arena, and no two buffers live at a common step sharing a byte. Zero-byte buffers take no
/// space and never collide. The error names the offending buffers, their ranges and lives.
pub fn check(bufs: &[Lifetime], placement: &Placement, align: usize) -> Result<(), String> {
    let a = align.max(1);
    let offs = &placement.offsets;
    if offs.len() != bufs.len() {
        return Err(format!("placement has {} offsets for {} buffers", offs.len(), bufs.len()));
    }
    for (i, (b, &off)) in bufs.iter().zip(offs).enumerate() {
        if b.first > b.last {
            return Err(format!("buffer {i}: lifetime {}..{} ends before it starts", b.first, b.last));
        }
        if off % a != 0 {
            return Err(format!("buffer {i}: offset {off} is not a multiple of {a}"));
        }
        let end = off.checked_add(b.bytes);
        if end.is_none_or(|e| e > placement.arena_bytes) {
            return Err(format!(
                "buffer {i}: bytes [{off}, {off}+{}) outside the arena of {} bytes",
                b.bytes, placement.arena_bytes
            ));
        }
    }
    // Sweep by offset: each buffer is compared only with those starting inside it.
    let mut by_off: Vec<usize> = (0..bufs.len()).filter(|&i| bufs[i].bytes > 0).collect();
    by_off.sort_by_key(|&i| (offs[i], i));
    for (k, &i) in by_off.iter().enumerate() {
        let end_i = offs[i] + bufs[i].bytes;
        for &j in &by_off[k + 1..] {
            if offs[j] >= end_i {
                break;
            }
            if bufs[i].overlaps(&bufs[j]) {
                let (lo, hi) = (i.min(j), i.max(j));
                let show = |n: usize| {
                    format!(
                        "buffer {n} bytes [{}, {}) steps {}..{}",
                        offs[n],
                        offs[n] + bufs[n].bytes,
                        bufs[n].first,
                        bufs[n].last
                    )
                };
                return Err(format!(
                    "buffers {lo} and {hi} overlap in memory while both live: {} and {}",
                    show(lo),
                    show(hi)
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn lt(bytes: usize, first: usize, last: usize) -> Lifetime {
        Lifetime { bytes, first, last }
    }

    #[test]
    fn disjoint_lifetimes_share_offset_zero() {
        let bufs = [lt(1024, 0, 1), lt(512, 2, 3), lt(2048, 4, 4)];
        let p = plan_greedy(&bufs, ALIGN);
        assert_eq!(p.offsets, vec![0, 0, 0]);
        assert_eq!(p.arena_bytes, 2048);
        check(&bufs, &p, ALIGN).unwrap();
        assert_eq!(naive_bytes(&bufs), 3584);
    }

    #[test]
    fn overlapping_lifetimes_stack_largest_first() {
        // All live at step 2: the largest goes at 0, then the next, then the smallest.
        let bufs = [lt(256, 0, 2), lt(1024, 1, 3), lt(512, 2, 5)];
        let p = plan_greedy(&bufs, ALIGN);
        assert_eq!(p.offsets, vec![1536, 0, 1024]);
        assert_eq!(p.arena_bytes, 1792);
        check(&bufs, &p, ALIGN).unwrap();
        // Equal sizes: earlier first use goes lower; then lower index.
        let bufs = [lt(512, 3, 4), lt(512, 1, 4), lt(512, 1, 4)];
        let p = plan_greedy(&bufs, ALIGN);
        assert_eq!(p.offsets, vec![1024, 0, 512]);
    }

    #[test]
    fn inclusive_ends_collide() {
        // Buffer 0 dies at step 3, buffer 1 is born at step 3: they must not alias.
        let bufs = [lt(512, 0, 3), lt(512, 3, 5)];
        let p = plan_greedy(&bufs, ALIGN);
        assert_eq!(p.offsets, vec![0, 512]);
        let bufs = [lt(512, 0, 3), lt(512, 4, 5)];
        assert_eq!(plan_greedy(&bufs, ALIGN).offsets, vec![0, 0]);
    }

    #[test]
    fn gap_is_reused_by_a_smaller_later_buffer() {
        // By size: A (2048, steps 0..9) at 0, B (1024, steps 0..2) at 2048, C (768, steps 0..9)
        // at 3072; D (512, steps 5..9) is born after B dies and takes B's slot at 2048,
        // below C, instead of going on top at 3840.
        let bufs = [lt(2048, 0, 9), lt(1024, 0, 2), lt(768, 0, 9), lt(512, 5, 9)];
        let p = plan_greedy(&bufs, ALIGN);
        assert_eq!(p.offsets, vec![0, 2048, 3072, 2048]);
        assert_eq!(p.arena_bytes, 3840);
        check(&bufs, &p, ALIGN).unwrap();
    }

    #[test]
    fn alignment_rounds_offsets_and_arena() {
        // All live together: 300 at 0, 100 at align_up(300) = 512; arena align_up(612) = 768.
        let bufs = [lt(100, 0, 1), lt(300, 0, 1)];
        let p = plan_greedy(&bufs, ALIGN);
        assert_eq!(p.offsets, vec![512, 0]);
        assert_eq!(p.arena_bytes, 768);
        check(&bufs, &p, ALIGN).unwrap();
        let l = plan_linear(&bufs, ALIGN);
        assert_eq!(l.offsets, vec![0, 256]);
        assert_eq!(l.arena_bytes, 768);
        // With alignment 1 they pack tightly.
        let p1 = plan_greedy(&bufs, 1);
        assert_eq!(p1.offsets, vec![300, 0]);
        assert_eq!(p1.arena_bytes, 400);
        // Alignment 0 is treated as 1.
        assert_eq!(plan_greedy(&bufs, 0).offsets, vec![300, 0]);
    }

    #[test]
    fn zero_byte_buffers_take_no_space() {
        let bufs = [lt(0, 0, 5), lt(256, 0, 5), lt(0, 1, 2)];
        let p = plan_greedy(&bufs, ALIGN);
        assert_eq!(p.offsets, vec![0, 0, 0]);
        assert_eq!(p.arena_bytes, 256);
        check(&bufs, &p, ALIGN).unwrap();
        let e = plan_greedy(&[], ALIGN);
        assert_eq!(e.arena_bytes, 0);
    }

    /// Random lifetimes of arbitrary byte sizes (odd ones included), so buffers of any element
    /// type mix, as f32 and bf16 ones do in a bf16 step.
    fn random_bufs(rng: &mut Rng, n: usize, steps: usize) -> Vec<Lifetime> {
        (0..n)
            .map(|_| {
                let bytes = if rng.below(8) == 0 { 0 } else { rng.below(1 << 20) };
                let first = rng.below(steps);
                let last = first + rng.below(steps - first);
                lt(bytes, first, last)
            })
            .collect()
    }

    #[test]
    fn random_plans_are_valid_and_no_worse_than_baselines() {
        let mut rng = Rng::new(42, 99);
        for case in 0..3000 {
            let n = 1 + rng.below(40);
            let steps = 1 + rng.below(30);
            let align = [1, 64, ALIGN, 4096][rng.below(4)];
            let bufs = random_bufs(&mut rng, n, steps);
            let g = plan_greedy(&bufs, align);
            check(&bufs, &g, align).unwrap_or_else(|e| panic!("case {case}: {e}"));
            let l = plan_linear(&bufs, align);
            check(&bufs, &l, align).unwrap_or_else(|e| panic!("case {case} linear: {e}"));
            let padded: usize = bufs.iter().map(|b| align_up(b.bytes, align)).sum();
            assert!(g.arena_bytes <= padded, "case {case}");
            assert!(g.arena_bytes <= l.arena_bytes, "case {case}");
            // Lower bound: the bytes live at the busiest step.
            let peak = (0..steps)
                .map(|s| bufs.iter().filter(|b| b.first <= s && s <= b.last).map(|b| b.bytes).sum::<usize>())
                .max()
                .unwrap();
            assert!(g.arena_bytes >= peak, "case {case}");
        }
    }

    #[test]
    fn large_schedule_is_fast_and_valid() {
        // WRN-28-10 training size: ~3000 buffers over ~2000 steps, mostly short lives.
        let mut rng = Rng::new(7, 99);
        let steps = 2000;
        let bufs: Vec<Lifetime> = (0..3000)
            .map(|_| {
                let first = rng.below(steps);
                let len =
                    if rng.below(10) == 0 { rng.below(steps - first) } else { rng.below(20).min(steps - 1 - first) };
                lt(256 * (1 + rng.below(4096)), first, first + len)
            })
            .collect();
        let t = std::time::Instant::now();
        let p = plan_greedy(&bufs, ALIGN);
        let took = t.elapsed();
        check(&bufs, &p, ALIGN).unwrap();
        // Generous for a shared machine; an O(n^3) planner would take minutes.
        assert!(took.as_secs_f64() < 5.0, "took {took:?}");
        assert!(p.arena_bytes < plan_linear(&bufs, ALIGN).arena_bytes / 2);
    }

    #[test]
    fn check_catches_broken_placements() {
        let bufs = [lt(1024, 0, 4), lt(512, 4, 6), lt(512, 7, 8)];
        let good = plan_greedy(&bufs, ALIGN);
        check(&bufs, &good, ALIGN).unwrap();

        let overlap = Placement { offsets: vec![0, 768, 0], arena_bytes: 2048 };
        let e = check(&bufs, &overlap, ALIGN).unwrap_err();
        assert!(e.contains("buffers 0 and 1"), "{e}");
        assert!(e.contains("[0, 1024)") && e.contains("[768, 1280)"), "{e}");
        assert!(e.contains("steps 0..4") && e.contains("steps 4..6"), "{e}");

        let misaligned = Placement { offsets: vec![0, 1100, 0], arena_bytes: 2048 };
        let e = check(&bufs, &misaligned, ALIGN).unwrap_err();
        assert!(e.contains("buffer 1") && e.contains("1100"), "{e}");

        let outside = Placement { offsets: vec![0, 1024, 0], arena_bytes: 1280 };
        let e = check(&bufs, &outside, ALIGN).unwrap_err();
        assert!(e.contains("buffer 1") && e.contains("outside"), "{e}");

        let short = Placement { offsets: vec![0], arena_bytes: 4096 };
        assert!(check(&bufs, &short, ALIGN).is_err());

        // Zero-byte buffers never collide, wherever they sit.
        let z = [lt(0, 0, 9), lt(512, 0, 9)];
        let p = Placement { offsets: vec![256, 0], arena_bytes: 512 };
        check(&z, &p, ALIGN).unwrap();
    }
}
