"""Writes the kernels that are written by a program, not by hand:

    python tools/write_kernels.py

kernels/conv/outer3x3_8x32.py and outer3x3_5x16.py: kernels/conv/outer3x3.py's
kernel_source() for its AVX-512 and AVX2 blocks (256 and 80 running sums, one variable
each, for LLVM's SLP vectorizer: outer3x3.py says why).
kernels/gemm_outer_8x32.py and gemm_outer_5x16.py: kernels/gemm_outer.py's
kernel_source(), the same blocks for the fully connected layers' forward.
tests/test_cpu_fast.py fails while a written file differs from what this would write."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kernels import gemm_outer  # noqa: E402
from kernels.conv import outer3x3  # noqa: E402


def written():
    """{path: source} for every written kernel file."""
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
    files = {}
    for folder, writer in ((os.path.join(root, "conv"), outer3x3), (root, gemm_outer)):
        for block in outer3x3.BLOCKS.values():
            files[os.path.join(folder, writer.written_file(*block) + ".py")] = \
                writer.kernel_source(*block)
    return files


if __name__ == "__main__":
    for path, source in written().items():
        with open(path, "w") as f:
            f.write(source)
        print(f"wrote {os.path.relpath(path)}")
