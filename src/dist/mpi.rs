//! Open MPI on the CPU through the `mpi` crate: the world communicator's all-reduce.
//!
//! MPI is started with serialized threading: the run's calls come from a thread of the CPU
//! pool (`train::train` runs inside it), never from two threads at once. The default error
//! handler stays: a failed collective (a rank died) ends the whole job, and `mpirun` ends
//! the ranks still running, so no rank waits forever.

use super::Reducer;
use crate::error::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::environment::{Threading, Universe};
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};

pub struct Mpi {
    world: SimpleCommunicator,
    /// The receive side of each sum (MPI reduces from one buffer into another).
    scratch: Vec<f32>,
    /// Finalizes MPI when dropped; kept last so the communicator goes first.
    _universe: Universe,
}

// SAFETY: MPI was started with serialized threading, which allows calls from any thread one
// at a time; `&mut self` on every call that communicates keeps them one at a time.
unsafe impl Send for Mpi {}

impl Mpi {
    pub fn start() -> Result<Mpi> {
        let Some((universe, threading)) = mpi::initialize_with_threading(Threading::Serialized) else {
            return Err(Error::Msg("MPI was started twice in one process".into()));
        };
        if threading < Threading::Serialized {
            return Err(Error::Msg(format!(
                "this MPI library offers {threading:?} threading, the run needs Serialized (calls from one thread at a time)"
            )));
        }
        Ok(Mpi { world: universe.world(), scratch: Vec::new(), _universe: universe })
    }
}

impl Reducer for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn ranks(&self) -> usize {
        self.world.size() as usize
    }

    fn reserve(&mut self, len: usize) {
        if self.scratch.len() < len {
            self.scratch.resize(len, 0.0);
        }
    }

    fn sum(&mut self, data: &mut [f32]) {
        self.reserve(data.len());
        let recv = &mut self.scratch[..data.len()];
        self.world.all_reduce_into(&*data, recv, SystemOperation::sum());
        data.copy_from_slice(recv);
    }

    fn spread(&mut self, value: u64) -> (u64, u64) {
        let (mut lo, mut hi) = (0u64, 0u64);
        self.world.all_reduce_into(&value, &mut lo, SystemOperation::min());
        self.world.all_reduce_into(&value, &mut hi, SystemOperation::max());
        (lo, hi)
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
