"""Rung 3's compiler run (tests/test_ptx.py starts it as its own process, without the
simulator): every kernel through minivgg.bench.ptx, printed as JSON, plus two canaries
that show the local-memory checks can fail.

`--ptxas NAME...` assembles those kernels for sm_90 (`--ptxas-all`: every kernel, for the
static table test). The canaries: "canary.dynamic_local_array", a kernel whose local array
is indexed by a run-time value (so NVVM cannot make it registers: ld.local/st.local in its
PTX), and, under "ptxas_maxrreg32", the first NAME assembled with 32 registers at most (so
ptxas must spill: stack and spill bytes in its report).
"""
import argparse
import json
import os
import sys

os.environ["NUMBA_ENABLE_CUDASIM"] = "0"

from numba import cuda, float32  # noqa: E402

from kernels.common import F1, int32  # noqa: E402
from minivgg.bench.ptx import assemble, compile_all, compile_kernels  # noqa: E402


@cuda.jit
def dynamic_local_array(a, k):
    """The canary: t[k % 16] with k known only at run time needs an addressable array."""
    t = cuda.local.array(16, float32)
    for i in range(16):
        t[i] = a[i]
    a[0] = t[k % 16]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ptxas", nargs="*", default=[], metavar="NAME")
    parser.add_argument("--ptxas-all", action="store_true")
    args = parser.parse_args()
    results = compile_kernels(assemble_names="all" if args.ptxas_all else set(args.ptxas))
    if args.ptxas:
        compile_all("canary.dynamic_local_array", dynamic_local_array.py_func, (F1, int32),
                    results)
        entry = results.get(args.ptxas[0], {}).get("9.0", {})
        if entry.get("ok"):
            entry["ptxas_maxrreg32"] = assemble(entry["ptx"], "-maxrregcount=32")
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
