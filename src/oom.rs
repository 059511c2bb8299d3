//! Running out of memory ends the binary with one line and status 1, not SIGABRT: Rust's
//! handler for a failed allocation prints its own message and aborts, and customising it is
//! not stable, so the binary's global allocator ([`ExitOnOom`]) catches the failure first.
//!
//! Code that handles a failed allocation itself (`try_reserve` with a message naming what it
//! was for) runs inside [`fallible`], where the allocator returns the failure as usual.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    /// Set while this thread runs code that handles a failed allocation itself.
    static FALLIBLE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, whose allocations may fail and be handled by it (e.g. a `try_reserve`), with the
/// failure returned to it rather than ending the process.
pub fn fallible<T>(f: impl FnOnce() -> T) -> T {
    let before = FALLIBLE.with(|c| c.replace(true));
    let result = f();
    FALLIBLE.with(|c| c.set(before));
    result
}

/// `len` zeros, or `None` when the allocator refuses.
pub fn zeroed(len: usize) -> Option<Vec<f32>> {
    let mut v = Vec::new();
    fallible(|| v.try_reserve_exact(len)).ok()?;
    v.resize(len, 0.0);
    Some(v)
}

/// The system allocator, except that an allocation failing outside [`fallible`] writes one line
/// naming its size to stderr and exits with status 1.
pub struct ExitOnOom;

// SAFETY: every call is passed to `System` unchanged; only a null result is acted on.
unsafe impl GlobalAlloc for ExitOnOom {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(System.alloc(layout), layout.size())
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(System.alloc_zeroed(layout), layout.size())
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(System.realloc(ptr, layout, new_size), new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

fn check(ptr: *mut u8, size: usize) -> *mut u8 {
    if ptr.is_null() && !FALLIBLE.try_with(Cell::get).unwrap_or(false) {
        exit_out_of_memory(size);
    }
    ptr
}

/// Set by the first thread to run out of memory: it alone says so and exits.
static EXITING: AtomicBool = AtomicBool::new(false);

/// Says that `size` bytes could not be allocated and exits with status 1, allocating nothing
/// (the message is built on the stack and written straight to file descriptor 2).
fn exit_out_of_memory(size: usize) -> ! {
    if EXITING.swap(true, Ordering::SeqCst) {
        // Another thread is saying it and exiting: one line, not one per thread.
        loop {
            // SAFETY: waits for a signal; the process ends first.
            unsafe { libc::pause() };
        }
    }
    let mut line = Line { buf: [0; 256], len: 0 };
    line.push(b"error: out of memory: could not allocate ");
    line.number(size as u64);
    line.push(b" bytes (");
    // MiB with one decimal, rounded down.
    let tenths = size as u128 * 10 / (1 << 20);
    line.number((tenths / 10) as u64);
    line.push(b".");
    line.number((tenths % 10) as u64);
    line.push(b" MiB); a process memory limit (ulimit -v) may be the cause\n");
    // SAFETY: the buffer holds `len` initialised bytes; `_exit` ends the process at once, which
    // is what is wanted with the heap unusable (no destructors, no buffered output flushed).
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::_exit(1)
    }
}

/// A fixed buffer a message is built in without allocating.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_in_decimal() {
        let mut line = Line { buf: [0; 256], len: 0 };
        for n in [0u64, 7, 10, 1_048_576, u64::MAX] {
            line.len = 0;
            line.number(n);
            assert_eq!(&line.buf[..line.len], n.to_string().as_bytes());
        }
    }

    #[test]
    fn fallible_restores_the_flag() {
        assert!(!FALLIBLE.with(Cell::get));
        let inner = fallible(|| fallible(|| FALLIBLE.with(Cell::get)) && FALLIBLE.with(Cell::get));
        assert!(inner);
        assert!(!FALLIBLE.with(Cell::get));
    }
}
