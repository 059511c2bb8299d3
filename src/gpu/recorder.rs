//! A [`Launcher`] that writes down what it is asked to queue, so what a program queues is known,
//! and tested, without a GPU.

use cudarc::driver::LaunchConfig;

use super::{Arg, GemmCall, Launcher};

/// Records launches and GEMMs instead of running them.
#[derive(Default)]
pub struct Recorder {
    pub launches: std::cell::RefCell<Vec<(&'static str, LaunchConfig)>>,
    /// The number of arguments each launch passed (to check against
    /// [`kernel_params`](super::kernel_params)).
    pub arg_counts: std::cell::RefCell<Vec<usize>>,
    pub gemms: std::cell::RefCell<Vec<GemmCall>>,
}

impl Launcher for Recorder {
    fn launch(&self, kernel: &'static str, cfg: LaunchConfig, args: &[&dyn Arg]) {
        self.launches.borrow_mut().push((kernel, cfg));
        self.arg_counts.borrow_mut().push(args.len());
    }
    fn gemm(&self, g: &GemmCall) {
        self.gemms.borrow_mut().push(*g);
    }
    fn reduction_scratch(&self) -> u64 {
        1 << 48
    }
}
