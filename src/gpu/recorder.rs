//! A [`Launcher`] that writes down what it is asked to queue, so what a program queues is known,
//! and tested, without a GPU.

use std::cell::{Cell, RefCell};

use cudarc::driver::LaunchConfig;

use super::{arg_pointers, kernel_params, resolve, Arg, GemmCall, KernelFile, KernelId, Launcher, MAX_ARGS};
use crate::error::Result;

/// Records launches and GEMMs instead of running them.
///
/// Made by [`Recorder::new`] it resolves a kernel table as a GPU does, once, to each kernel's
/// declared parameter count, and every launch then checks its arguments against it (a missing
/// or extra argument would only show on a GPU, as garbage or a fault). A default recorder
/// records without a table.
#[derive(Default)]
pub struct Recorder {
    pub launches: RefCell<Vec<(&'static str, LaunchConfig)>>,
    /// The number of arguments each launch passed.
    pub arg_counts: RefCell<Vec<usize>>,
    pub gemms: RefCell<Vec<GemmCall>>,
    /// The table's parameter counts, by [`KernelId`] index (empty: no table).
    params: Vec<usize>,
    /// Names looked up in the kernel files: the table's, when the recorder was made.
    lookups: Cell<usize>,
}

impl Recorder {
    /// A recorder that resolves the kernel table `names` against `files`, as `Gpu::new` does.
    pub fn new(files: &[KernelFile], names: &[&'static str]) -> Result<Recorder> {
        let lookups = Cell::new(0);
        let params = resolve(names, |k| {
            lookups.set(lookups.get() + 1);
            files.iter().find_map(|(_, src)| kernel_params(src, k))
        })?;
        Ok(Recorder { params, lookups, ..Recorder::default() })
    }

    /// How many kernel names were looked up in the kernel files since the recorder was made.
    pub fn lookups(&self) -> usize {
        self.lookups.get()
    }

    /// Forgets what was recorded, keeping the room it took (so recording the same work again
    /// allocates nothing).
    pub fn clear(&self) {
        self.launches.borrow_mut().clear();
        self.arg_counts.borrow_mut().clear();
        self.gemms.borrow_mut().clear();
    }
}

impl Launcher for Recorder {
    /// Packs the arguments as a GPU launch does, and checks their count where there is a table.
    fn launch(&self, kernel: KernelId, cfg: LaunchConfig, args: &[&dyn Arg]) {
        let mut slots = [std::ptr::null_mut(); MAX_ARGS];
        let passed = arg_pointers(args, &mut slots).len();
        if !self.params.is_empty() {
            let declared = self.params[kernel.index()];
            assert_eq!(passed, declared, "kernel {} declares {declared} parameters", kernel.name());
        }
        self.launches.borrow_mut().push((kernel.name(), cfg));
        self.arg_counts.borrow_mut().push(passed);
    }
    fn gemm(&self, g: &GemmCall) {
        self.gemms.borrow_mut().push(*g);
    }
    fn reduction_scratch(&self) -> u64 {
        1 << 48
    }
}
