"""Writes the kernels that are written by a program, not by hand:

    python tools/write_kernels.py

kernels/conv/outer3x3_8x32.py: kernels/conv/outer3x3.py's kernel_source() (256 running
sums, one variable each, for LLVM's SLP vectorizer: outer3x3.py says why).
tests/test_cpu_fast.py fails while a written file differs from what this would write."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kernels.conv.outer3x3 import LANES, PIXELS, kernel_source  # noqa: E402


def written():
    """{path: source} for every written kernel file."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {os.path.join(root, "kernels", "conv", f"outer3x3_{PIXELS}x{LANES}.py"):
            kernel_source()}


if __name__ == "__main__":
    for path, source in written().items():
        with open(path, "w") as f:
            f.write(source)
        print(f"wrote {os.path.relpath(path)}")
