"""Checks sliceout's exported model files with the libraries people load them with, running the
"Use the model elsewhere" snippets of README.md exactly as they are written there.

    python3 scripts/check_export.py DIR            # ONNX Runtime, safetensors, NumPy
    python3 scripts/check_export.py DIR --torch    # PyTorch (needs torch and safetensors)

DIR holds `model.safetensors` and `model.onnx` (`sliceout export`), `logits.safetensors`
(`sliceout eval --logits`) and `test_batch.bin` (the CIFAR-format test split eval read).

Default mode: the README's ONNX Runtime snippet runs on every test image, and on the first
three alone (the batch dimension is dynamic); its logits must equal sliceout eval's within
1e-4. Every tensor of `model.safetensors`, as the safetensors library reads it into NumPy, is
written to `DIR/python_tensors.json` (float32 values as their bit patterns) with the file's
metadata, for tests/it/export.rs to compare with sliceout's own tensors bit for bit.

`--torch`: the README's PyTorch snippet loads `model.safetensors` into scripts/torch/wrn.py's
`WideResNet` with `load_state_dict(strict=True)`; its logits must equal eval's within 1e-4.

Exits 1 (saying why) on any disagreement.
"""
import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(HERE, "..", "README.md")
TOLERANCE = 1e-4


def readme_snippet(marker):
    """The python block of README's "Use the model elsewhere" section that contains `marker`."""
    text = open(README, encoding="utf-8").read()
    section = text.split("## Use the model elsewhere", 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in re.findall(r"```python\n(.*?)```", section, re.S) if marker in b]
    if len(blocks) != 1:
        sys.exit(f"README.md: expected one python snippet with {marker!r} under 'Use the model elsewhere', found {len(blocks)}")
    return blocks[0]


def run_snippet(code, images):
    """Runs a README snippet with `images` defined; returns the `logits` it computes."""
    scope = {"images": images}
    exec(compile(code, "README.md", "exec"), scope)
    return scope["logits"]


def test_batch(path):
    """(pixels as uint8 (N, 3, 32, 32), labels) of a CIFAR-10 binary batch file."""
    data = open(path, "rb").read()
    if len(data) % 3073:
        sys.exit(f"{path}: not a CIFAR-10 batch file")
    n = len(data) // 3073
    labels = [data[i * 3073] for i in range(n)]
    pixels = b"".join(data[i * 3073 + 1 : (i + 1) * 3073] for i in range(n))
    return pixels, labels, n


def compare(what, logits, expected, labels, stored_labels):
    if list(labels) != list(stored_labels):
        sys.exit(f"{what}: the logits file's labels are not the test batch's")
    diff = float(abs(logits - expected).max())
    print(f"{what}: logits of {len(labels)} images, max abs diff {diff:.3g} against sliceout eval")
    if not diff <= TOLERANCE:
        sys.exit(f"{what}: logits differ from sliceout eval's by {diff:.3g} (tolerance {TOLERANCE})")
    return diff


def check_onnx_and_tensors(folder):
    import numpy as np
    import onnxruntime
    from safetensors import safe_open
    from safetensors.numpy import load_file

    pixels, labels, n = test_batch("test_batch.bin")
    images = (np.frombuffer(pixels, dtype=np.uint8).astype(np.float32) / np.float32(255)).reshape(n, 3, 32, 32)
    stored = load_file("logits.safetensors")
    snippet = readme_snippet("onnxruntime")
    compare(f"onnxruntime {onnxruntime.__version__}", run_snippet(snippet, images), stored["logits"], labels, stored["labels"])
    compare("onnxruntime, first 3 images", run_snippet(snippet, images[:3]), stored["logits"][:3], labels[:3], stored["labels"][:3])

    tensors = {}
    for name, array in load_file("model.safetensors").items():
        if array.dtype == np.float32:
            values = array.reshape(-1).view(np.uint32).tolist()
        else:
            values = array.reshape(-1).astype(np.int64).tolist()
        tensors[name] = {"dtype": str(array.dtype), "shape": list(array.shape), "values": values}
    with safe_open("model.safetensors", "np") as f:
        metadata = f.metadata()
    with open(os.path.join(folder, "python_tensors.json"), "w") as out:
        json.dump({"tensors": tensors, "metadata": metadata}, out)
    print(f"safetensors: read {len(tensors)} tensors and {len(metadata)} metadata entries of model.safetensors")


def check_torch():
    import torch
    from safetensors.torch import load_file

    sys.path.insert(0, os.path.join(HERE, "torch"))
    pixels, labels, n = test_batch("test_batch.bin")
    images = (torch.frombuffer(bytearray(pixels), dtype=torch.uint8).float() / 255).reshape(n, 3, 32, 32)
    stored = load_file("logits.safetensors")
    with torch.no_grad():
        logits = run_snippet(readme_snippet("load_state_dict"), images)
    compare(f"torch {torch.__version__} (load_state_dict strict=True)", logits, stored["logits"], labels, stored["labels"].tolist())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", help="folder with model.safetensors, model.onnx, logits.safetensors, test_batch.bin")
    ap.add_argument("--torch", action="store_true", help="check the PyTorch snippet instead")
    args = ap.parse_args()
    folder = os.path.abspath(args.dir)
    os.chdir(folder)
    if args.torch:
        check_torch()
    else:
        check_onnx_and_tensors(folder)


if __name__ == "__main__":
    main()
