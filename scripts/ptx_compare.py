"""Whether the CUDA kernels of two revisions compile to the same PTX, kernel by kernel, without a
GPU: a refactor of the kernels (or of common.cu) that must not change what runs on the card can
be checked on any machine with NVRTC (`pip install nvidia-cuda-nvrtc`).

    python3 scripts/ptx_compare.py OLD_REV [NEW_REV]     # NEW_REV defaults to the working tree

Each kernel file is compiled as `gpu::kernel_source` builds it (common.cu first) with the
backend's options (`--fmad=false`) for compute_90. Per `.entry`, the PTX is compared as the
multiset of its instructions with registers, labels and the mangled names of shared arrays
replaced by placeholders: equal means the same instructions in a different order or naming
(what a template wrapper or reordered loads give); different is printed with a short diff.
Kernels present in only one revision are listed. Exit status 1 when any kernel differs.
"""
import ctypes
import difflib
import glob
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nvrtc():
    dirs = [os.environ.get("SLICEOUT_CUDA_LIB_DIR", ""), "/usr/local/cuda/lib64"]
    dirs += [os.path.join(p, "nvidia", "cu13", "lib") for p in sys.path]
    for d in dirs:
        lib = os.path.join(d, "libnvrtc.so.13")
        if os.path.exists(lib):
            # NVRTC opens its builtins library by name: make its folder findable.
            ctypes.CDLL(os.path.join(d, "libnvrtc-builtins.so.13.0"), mode=ctypes.RTLD_GLOBAL)
            return ctypes.CDLL(lib)
    sys.exit("libnvrtc.so.13 not found (pip install nvidia-cuda-nvrtc, or set SLICEOUT_CUDA_LIB_DIR)")


def compile_ptx(lib, src, name):
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(), 0, None, None):
        sys.exit(f"{name}: nvrtcCreateProgram failed")
    opts = [b"--gpu-architecture=compute_90", b"--fmad=false"]
    if lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts)):
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        sys.exit(f"{name} does not compile:\n{log.value.decode()}")
    size = ctypes.c_size_t()
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetPTX(prog, ptx)
    return ptx.value.decode()


def read(rev, path):
    if rev is None:
        with open(os.path.join(ROOT, path)) as f:
            return f.read()
    out = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:{path}"], capture_output=True, text=True)
    return out.stdout if out.returncode == 0 else None


def kernel_files(rev):
    if rev is None:
        return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "src/ops/*/*.cu")))
    out = subprocess.run(["git", "-C", ROOT, "ls-tree", "-r", "--name-only", rev, "src/ops"], capture_output=True,
                         text=True, check=True).stdout
    return sorted(p for p in out.split() if p.endswith(".cu"))


def entries(lib, rev):
    common = read(rev, "src/gpu/common.cu")
    found = {}
    for path in kernel_files(rev):
        ptx = compile_ptx(lib, common + "\n" + read(rev, path), path)
        for m in re.finditer(r"\.visible \.entry (\w+)\((.*?)\n\}\n", ptx, re.S):
            found[m.group(1)] = m.group(2)
    return found


def instructions(name, body):
    body = re.sub(r"//.*", "", body).replace(f"{name}_param_", "P_")
    body = re.sub(r"_ZZ\w+", "SHARED", body)
    return [re.sub(r"[%$][\w]+", "R", line).strip() for line in body.splitlines() if line.strip()]


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    old_rev, new_rev = sys.argv[1], (sys.argv[2] if len(sys.argv) == 3 else None)
    lib = nvrtc()
    old, new = entries(lib, old_rev), entries(lib, new_rev)
    differ = 0
    for name in sorted(set(old) | set(new)):
        if name not in old or name not in new:
            print(f"{name:28} only in {'the new' if name in new else 'the old'} revision")
            continue
        a, b = instructions(name, old[name]), instructions(name, new[name])
        if sorted(a) == sorted(b):
            print(f"{name:28} same ({len(a)} instructions)")
            continue
        differ += 1
        print(f"{name:28} DIFFERENT")
        print("\n".join(list(difflib.unified_diff(a, b, lineterm="", n=1))[2:40]))
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
