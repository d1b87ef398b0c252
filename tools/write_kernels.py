"""Writes the kernels that are written by a program, not by hand:

    python tools/write_kernels.py

kernels/conv/outer3x3_8x32.py and outer3x3_5x16.py: kernels/conv/outer3x3.py's
kernel_source() for its AVX-512 and AVX2 blocks (256 and 80 running sums, one variable
each, for LLVM's SLP vectorizer: outer3x3.py says why).
tests/test_cpu_fast.py fails while a written file differs from what this would write."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kernels.conv.outer3x3 import BLOCKS, kernel_source, written_file  # noqa: E402


def written():
    """{path: source} for every written kernel file."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {os.path.join(root, "kernels", "conv", written_file(*block) + ".py"):
            kernel_source(*block) for block in BLOCKS.values()}


if __name__ == "__main__":
    for path, source in written().items():
        with open(path, "w") as f:
            f.write(source)
        print(f"wrote {os.path.relpath(path)}")
