"""`python -m minivgg.bench`: how fast minivgg runs, and what to expect before it runs.

Timed (cli.py; `--device cuda` needs a GPU, `--device cpu` runs anywhere):
    conv.py      every conv pass and kernel version on VGG-16's layers at 224, beside CuPy
                 im2col + cuBLAS (im2col.py) and PyTorch cuDNN
    step.py      the whole training step of configs A-E, beside PyTorch; peak memory
    overhead.py  host time per step against GPU time per step (launch overhead)
    cpu.py       the cpu device's step and every layer (layers.py) side by side with
                 PyTorch on the CPU at 1 and 2 threads (threads.py: threadpoolctl)
Static (`python -m minivgg.bench static`, no GPU needed):
    ptx.py       every kernel through numba.cuda.compile_ptx and ptxas (registers, shared
                 memory, spills); occupancy.py turns those into blocks per SM on an H200
    roofline.py  FLOPs and bytes of VGG-16's conv layers against the H200's ceilings
    geometry.py  blocks per launch and waves over the SMs, recorded from the launchers
Shared: shapes.py (layer shapes, FLOPs, bytes), timing.py, report.py (markdown).

Importing this package imports nothing else (numba.cuda in particular): ptx.py runs as its
own process with the CUDA simulator off.
"""
