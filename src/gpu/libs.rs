//! Finding the CUDA libraries at run time. cudarc (feature `dynamic-loading`) opens each library
//! by bare names (`libcublas.so`, ..., `libcublas.so.13`), so only the loader's search path is
//! searched (`LD_LIBRARY_PATH`, the ldconfig cache). A toolkit under `/usr/local/cuda/lib64`
//! is usually on neither. Before cudarc first touches a library we therefore open the ones we
//! find in the usual folders by full path: glibc's `dlopen` of a bare name returns an already
//! loaded library whose SONAME matches (cudarc's candidate list includes `libX.so.13`, the
//! SONAME), so cudarc then picks ours up without any environment set by hand.
//!
//! Folders searched, in order: `$SLICEOUT_CUDA_LIB_DIR` (colon-separated), `$CUDA_HOME/lib64`,
//! `$CUDA_PATH/lib64`, `/usr/local/cuda/lib64`, `/usr/local/cuda/targets/x86_64-linux/lib`,
//! `/usr/local/nvidia/lib64` (where container runtimes mount the driver), the `nvidia/*/lib`
//! folders of pip's NVIDIA wheels in the usual Python package folders (a virtual environment's
//! first), then any folders the caller adds.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

/// Libraries to preload, dependencies first.
const LIBRARIES: &[&str] =
    &["libcuda.so.1", "libcublasLt.so.13", "libcublas.so.13", "libnvrtc-builtins.so.13.0", "libnvrtc.so.13"];

const RTLD_NOW: c_int = 2;
const RTLD_GLOBAL: c_int = 0x100;

extern "C" {
    // From libc (libloading, which cudarc uses, links the same symbol).
    fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
}

/// Folders tried, in order, before `extra`.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![];
    if let Ok(v) = std::env::var("SLICEOUT_CUDA_LIB_DIR") {
        dirs.extend(std::env::split_paths(&v));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(v) = std::env::var(var) {
            dirs.push(Path::new(&v).join("lib64"));
        }
    }
    dirs.push("/usr/local/cuda/lib64".into());
    dirs.push("/usr/local/cuda/targets/x86_64-linux/lib".into());
    dirs.push("/usr/local/nvidia/lib64".into());
    dirs.extend(pip_dirs());
    dirs
}

/// The `nvidia/*/lib` folders of pip's NVIDIA wheels (`nvidia/cu13/lib`, `nvidia/cublas/lib`,
/// ...) under the Python package folders that exist here.
fn pip_dirs() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = vec![];
    let mut prefixes: Vec<PathBuf> = vec![];
    if let Ok(venv) = std::env::var("VIRTUAL_ENV") {
        prefixes.push(Path::new(&venv).join("lib"));
    }
    if let Ok(home) = std::env::var("HOME") {
        prefixes.push(Path::new(&home).join(".local/lib"));
        prefixes.extend(subdirs(&Path::new(&home).join(".pyenv/versions")).map(|v| v.join("lib")));
    }
    prefixes.extend(["/usr/local/lib", "/usr/lib", "/opt/conda/lib"].map(PathBuf::from));
    for prefix in prefixes {
        // python3.X/{site,dist}-packages, and Debian's python3/dist-packages.
        for python in
            subdirs(&prefix).filter(|d| d.file_name().is_some_and(|n| n.to_string_lossy().starts_with("python3")))
        {
            roots.extend(["site-packages", "dist-packages"].map(|p| python.join(p)));
        }
    }
    roots.iter().flat_map(|r| subdirs(&r.join("nvidia")).map(|d| d.join("lib"))).filter(|d| d.is_dir()).collect()
}

/// The folders directly inside `dir` (none when it cannot be read).
fn subdirs(dir: &Path) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_dir())
}

/// The folders searched, for error messages.
pub fn describe_search() -> String {
    let dirs: Vec<String> = search_dirs().iter().map(|d| d.display().to_string()).collect();
    dirs.join(", ")
}

/// Libraries opened so far (full paths); a library is opened at most once.
static LOADED: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());

/// Opens, by full path, each CUDA library not opened yet that exists in one of the search
/// folders or `extra`. Returns the libraries opened by this process so far (name, path).
/// Never fails: a library not found is left to cudarc's own search.
pub fn preload(extra: &[PathBuf]) -> Vec<(String, PathBuf)> {
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    let dirs: Vec<PathBuf> = search_dirs().into_iter().chain(extra.iter().cloned()).collect();
    for name in LIBRARIES {
        if loaded.iter().any(|(n, _)| n == name) {
            continue;
        }
        for dir in &dirs {
            let path = dir.join(name);
            if !path.is_file() {
                continue;
            }
            let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: a valid C string; the handle is kept open for the process's lifetime.
            let handle = unsafe { dlopen(c.as_ptr(), RTLD_NOW | RTLD_GLOBAL) };
            if !handle.is_null() {
                loaded.push((name.to_string(), path));
                break;
            }
        }
    }
    loaded.clone()
}

/// Runs `f`, turning a panic (cudarc panics when a library or symbol is missing) into `None`.
pub fn catch<T>(f: impl FnOnce() -> T) -> Option<T> {
    catch_message(f).ok()
}

thread_local! {
    /// Set while this thread runs code whose panics [`catch_message`] turns into errors.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic into its message (the first line). The panic prints nothing: the
/// panic hook is wrapped once so that it stays silent on a thread inside this function, and
/// the caller reports the message in its own one line.
pub fn catch_message<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static WRAP_HOOK: Once = Once::new();
    WRAP_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info)
            }
        }));
    });
    let before = QUIET.with(|q| q.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(before));
    result.map_err(|payload| {
        let text = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("a panic without a message");
        text.lines().next().unwrap_or_default().to_string()
    })
}

/// Whether the driver library (`libcuda.so`) can be opened.
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library.
    catch(|| unsafe { cudarc::driver::sys::is_culib_present() }).unwrap_or(false)
}

/// Whether cuBLAS can be opened (after [`preload`]).
pub fn cublas_present() -> bool {
    preload(&[]);
    // SAFETY: only tries to open the library.
    catch(|| unsafe { cudarc::cublas::sys::is_culib_present() }).unwrap_or(false)
}

/// Whether NVRTC can be opened (after [`preload`] with `extra` folders).
pub fn nvrtc_present(extra: &[PathBuf]) -> bool {
    preload(extra);
    // SAFETY: only tries to open the library.
    catch(|| unsafe { cudarc::nvrtc::sys::is_culib_present() }).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pip's NVIDIA wheels in a virtual environment are found, and error messages list them.
    #[test]
    fn pip_wheel_folders_are_searched() {
        let venv = std::env::temp_dir().join(format!("sliceout-venv-{}", std::process::id()));
        let lib = venv.join("lib/python3.12/site-packages/nvidia/cu13/lib");
        std::fs::create_dir_all(&lib).unwrap();
        std::env::set_var("VIRTUAL_ENV", &venv);
        let dirs = search_dirs();
        std::env::remove_var("VIRTUAL_ENV");
        assert!(dirs.contains(&lib), "{dirs:?}");
        assert!(dirs.contains(&PathBuf::from("/usr/local/nvidia/lib64")));
        assert!(describe_search().contains("/usr/local/cuda/lib64"));
        std::fs::remove_dir_all(&venv).unwrap();
    }
}
