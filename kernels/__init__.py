"""One file per layer: the math, a NumPy reference, the Numba CUDA kernels, the launchers.

Imports numpy, numba and math only, never minivgg: a reader can lift a file out whole.
Each module lists `PTX_SIGNATURES`: (kernel, argument types) pairs, exactly the types its
launchers pass, which the test suite compiles to PTX for real GPUs (DESIGN.md, rung 3).
"""
