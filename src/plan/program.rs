//! A program: a schedule with its memory plan, ready to run on a backend. Building one runs the
//! planner and (always, it is cheap) the invariant checker, so a backend may trust that buffers
//! live at the same step never overlap. Sizes and offsets are bytes of each buffer's element
//! type, so fp32 and bf16 steps are planned alike.

use crate::plan::{self, Lifetime, Placement};
use crate::schedule::Schedule;

pub struct Program {
    /// Unique in the process: what a backend holding state for one program (`GemmWeight::Kept`
    /// copies in its arena) tells programs apart by.
    pub id: u64,
    pub schedule: Schedule,
    pub lifetimes: Vec<Lifetime>,
    pub placement: Placement,
    /// (offset, len) of each buffer: the offset in 4-byte words (offsets are 256-byte aligned),
    /// the length in elements of the buffer's dtype (floats in an fp32 program).
    pub locs: Vec<(usize, usize)>,
}

impl Program {
    pub fn new(schedule: Schedule) -> Program {
        if let Err(e) = schedule.validate() {
            panic!("invalid schedule: {e}");
        }
        let lifetimes = schedule.lifetimes();
        let placement = plan::plan_greedy(&lifetimes, plan::ALIGN);
        if let Err(e) = plan::check(&lifetimes, &placement, plan::ALIGN) {
            panic!("planner produced overlapping buffers: {e}");
        }
        let locs = placement.offsets.iter().zip(&schedule.buffers).map(|(&o, b)| (o / 4, b.len)).collect();
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Program { id, schedule, lifetimes, placement, locs }
    }

    pub fn arena_bytes(&self) -> usize {
        self.placement.arena_bytes
    }
}
