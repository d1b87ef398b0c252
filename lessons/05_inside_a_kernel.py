"""Lesson 5: inside a kernel -- threads, tiles and breakpoints in the CUDA simulator.

Numba's CUDA simulator runs the same kernel source as the GPU, one Python thread per CUDA
thread. Here it shows which thread computes which output of the plain conv kernel
(kernels.conv.conv_forward_v1) and what it reads, which shared-memory tiles the tiled GEMM
(kernels.linear.linear_forward_v2) loads at each step, and how to stop inside a kernel
in the debugger.

    python lessons/05_inside_a_kernel.py [--no-pause] [--device cpu|sim|cuda] [--out DIR]

The walk-through always runs in the simulator (--device cpu and auto switch to it). With
--device cuda it re-runs itself with --device sim in a subprocess (the simulator and the
real GPU cannot share a process), then runs the same kernel on the GPU and compares.
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _lesson import Lesson  # noqa: E402

# The simulator must be on before numba.cuda is first imported: pick it here, first thing.
lesson = Lesson(__doc__, device_override=lambda name: "cuda" if name == "cuda" else "sim")

import inspect  # noqa: E402
import threading  # noqa: E402

import numpy as np  # noqa: E402

from kernels import conv, linear  # noqa: E402
from numba import config  # noqa: E402

x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
w = np.random.default_rng(1).standard_normal((3, 2, 3, 3)).astype(np.float32)
b = np.array([0.1, 0.2, 0.3], np.float32)

if lesson.device.name == "cuda":
    print("\nThis lesson steps through kernels in Numba's CUDA simulator, which cannot share a "
          "process with the real GPU: running it with --device sim in a subprocess.\n")
    argv = [sys.executable, os.path.abspath(__file__), "--device", "sim", "--out", lesson.args.out]
    env = dict(os.environ, MINIVGG_DEVICE="sim")
    rc = subprocess.call(argv + (["--no-pause"] if not lesson.pause else []), env=env)
    lesson.step("The same kernel on the real GPU")
    import cupy
    y = cupy.empty((1, 3, 4, 4), dtype=cupy.float32)
    conv.forward(cupy.asarray(x), cupy.asarray(w), cupy.asarray(b), y, 1, 1, version=1)
    diff = np.abs(y.get() - conv.forward_ref(x, w, b, 1, 1)).max()
    print(f"conv_forward_v1 on the GPU vs forward_ref: max abs difference {diff:.2e}")
    lesson.done()
    sys.exit(rc)


LOG = []  # (blockIdx, threadIdx, array name, index, 'read' | 'write')


class Recorded(np.ndarray):
    """A NumPy array that logs every element read and write made by a simulated thread.
    The simulator hands kernels NumPy arrays and keeps their subclass, so this sees exactly
    what each thread touches."""
    name = "?"

    def __getitem__(self, idx):
        _record(self.name, idx, "read")
        return np.ndarray.__getitem__(self, idx)

    def __setitem__(self, idx, value):
        _record(self.name, idx, "write")
        np.ndarray.__setitem__(self, idx, value)


def recorded(a, name):
    """A view of `a` whose element accesses inside kernels go to LOG under `name`."""
    return a.view(type(f"Recorded_{name}", (Recorded,), {"name": name}))


def _record(name, idx, op):
    t = threading.current_thread()
    if hasattr(t, "threadIdx"):  # a simulated CUDA thread (not the simulator's own copying)
        idx = tuple(int(i) for i in idx) if isinstance(idx, tuple) else (int(idx),)
        LOG.append((tuple(t.blockIdx), tuple(t.threadIdx), name, idx, op))


def source(kernel):
    """The Python source of a @cuda.jit kernel (simulator or real)."""
    fn = getattr(kernel, "fn", None) or getattr(kernel, "py_func")
    return inspect.getsource(fn)


# -- 1 ------------------------------------------------------------------------------------------
lesson.step("The simulator")
lesson.say(f"""NUMBA_ENABLE_CUDASIM=1 (read when numba.cuda is first imported; minivgg's
backend.set_device("sim") or MINIVGG_DEVICE=sim sets it for you) makes @cuda.jit return a
simulated kernel: the launch kernel[grid, block](...) runs the kernel's Python source once
per CUDA thread, each in its own Python thread, block after block, with cuda.threadIdx,
cuda.blockIdx, shared memory and cuda.syncthreads() behaving as on a GPU. Arrays are NumPy.
It is slow (keep shapes tiny) and it accepts some code a real GPU compiler rejects
(minivgg's tests also compile every kernel to PTX), but it is the same source, and it can
be printed from and stopped in.

numba.config.ENABLE_CUDASIM in this process: {config.ENABLE_CUDASIM}""")

# -- 2 ------------------------------------------------------------------------------------------
lesson.step("The plain conv kernel: one thread per output element")
print(source(conv.conv_forward_v1))
N, C, H, W = x.shape
K, _, R, S = w.shape
P = Q = 4
THREADS = conv.THREADS
n_out = N * K * P * Q
lesson.say(f"""A tiny case: x {x.shape}, w {w.shape}, stride 1, pad 1 -> y (1, 3, 4, 4): {n_out}
outputs. The launcher (conv.forward(..., version=1)) launches ceil({n_out} / {THREADS}) = 1
block of {THREADS} threads; thread i = blockIdx.x * {THREADS} + threadIdx.x computes the i-th
element of y in memory order:

    q = i % Q      p = (i // Q) % P      k = (i // (P*Q)) % K      n = i // (K*P*Q)

and threads {n_out}..{THREADS - 1} return at once (the `if i >= N*K*P*Q` guard).""")

# Run it with recording arrays: every read of x and w, every write to y, by every thread.
LOG.clear()
y = recorded(np.full((N, K, P, Q), np.nan, np.float32), "y")
conv.conv_forward_v1[1, THREADS](recorded(x, "x"), recorded(w, "w"), b, y, np.int32(1),
                                 np.int32(1))
y = np.asarray(y)
conv_log = list(LOG)
writes = {th[0]: idx for _, th, name, idx, op in conv_log if op == "write"}
x_reads = {}
for _, th, name, idx, op in conv_log:
    if name == "x":
        x_reads.setdefault(th[0], []).append(idx)


def derived(i):
    return (i // (K * P * Q), (i // (P * Q)) % K, (i // Q) % P, i % Q)


mismatches = sum(writes.get(i) != derived(i) for i in range(n_out))
rows = []
for i in [0, 1, 2, 3, 4, 5, 15, 16, 27, 47]:
    n, k, p, q = derived(i)
    reads = x_reads[i]
    rr, cc = sorted({r[2] for r in reads}), sorted({r[3] for r in reads})
    rows.append(("(0,0,0)", f"({i},0,0)", f"y[{n},{k},{p},{q}]",
                 f"x[0, 0..{C - 1}, {rr[0]}..{rr[-1]}, {cc[0]}..{cc[-1]}]",
                 f"{len(reads)} of {C * R * S}", "yes" if writes.get(i) == derived(i) else "NO"))
print()
lesson.table(("blockIdx", "threadIdx", "writes", "reads (recorded)", "x reads", "formula ok"),
             rows)
print(f"\nthreads that wrote an output: {len(writes)} of {THREADS} launched (the other "
      f"{THREADS - len(writes)} return at the guard before touching any array)")
print(f"thread -> output mapping: {n_out - mismatches} of {n_out} threads wrote exactly the "
      f"element the formula gives")
ref = conv.forward_ref(x, w, b, 1, 1)
print(f"conv_forward_v1 vs forward_ref: max abs difference {np.abs(y - ref).max():.2e}")
print(f"thread 0 (corner y[0,0,0,0]) read {len(x_reads[0])} elements of x; thread 5 "
      f"(interior y[0,0,1,1]) read {len(x_reads[5])}")
lesson.say("""A corner output reads 2 x 2 pixels per channel, an interior one 3 x 3: the
padding costs no memory traffic. Neighbouring threads (q, q+1) read neighbouring pixels,
so a warp's loads of x are close together in memory (coalesced).""")

# -- 3 ------------------------------------------------------------------------------------------
lesson.step("The tiled GEMM: shared-memory tiles, step by step")
TPB = linear.TPB
Nl, Il, Ol = 4, 40, 20
xl = np.random.default_rng(2).standard_normal((Nl, Il)).astype(np.float32)
wl = np.random.default_rng(3).standard_normal((Ol, Il)).astype(np.float32)
bl = np.zeros(Ol, np.float32)
grid = (-(-Ol // TPB), -(-Nl // TPB))
print(source(linear.linear_forward_v2))
lesson.say(f"""y = x w^T + b with x ({Nl}, {Il}), w ({Ol}, {Il}): a GEMM with reduction length
I = {Il}. Blocks of {TPB} x {TPB} threads, each block owns a {TPB} x {TPB} tile of y; grid
(ceil(O/{TPB}), ceil(N/{TPB})) = {grid}. Each block walks the reduction {TPB} at a time:
ceil({Il}/{TPB}) = {-(-Il // TPB)} steps. At step t every thread loads ONE element of x into sA
and ONE of w into sB (zero outside the matrices), syncthreads, then adds {TPB} products out of
shared memory.""")
print()
rows = []
for by in range(grid[1]):
    for bx in range(grid[0]):
        row0, col0 = by * TPB, bx * TPB
        for t in range(-(-Il // TPB)):
            k0 = t * TPB
            kr = f"{k0}..{min(k0 + TPB, Il) - 1}"
            rows.append((f"({bx},{by})", t, f"x[{row0}..{min(row0 + TPB, Nl) - 1}, {kr}]",
                         f"w[{col0}..{min(col0 + TPB, Ol) - 1}, {kr}]",
                         f"y[{row0}..{min(row0 + TPB, Nl) - 1}, {col0}..{min(col0 + TPB, Ol) - 1}]"))
lesson.table(("block", "step", "sA <- (zero elsewhere)", "sB <- w^T tile of", "adds into"), rows)

LOG.clear()
yl = np.empty((Nl, Ol), np.float32)
linear.linear_forward_v2[grid, (TPB, TPB)](recorded(xl, "x"), recorded(wl, "w"), bl, yl)
got = {}
for blk, th, name, idx, op in LOG:
    if op == "read":  # x[n, i] or w[o, i]: the step is i // TPB
        got.setdefault((blk[:2], idx[1] // TPB), set()).add((name,) + idx)
ok = 0
for ((bx, by), t), idxs in sorted(got.items()):
    ks = range(t * TPB, min(t * TPB + TPB, Il))
    want = {("x", n, i) for n in range(by * TPB, min(by * TPB + TPB, Nl)) for i in ks}
    want |= {("w", o, i) for o in range(bx * TPB, min(bx * TPB + TPB, Ol)) for i in ks}
    ok += idxs == want
print(f"\nrecorded loads: {ok} of {len(got)} (block, step) pairs loaded exactly the tiles above")
print(f"linear_forward_v2 vs forward_ref: max abs difference "
      f"{np.abs(yl - linear.forward_ref(xl, wl, bl)).max():.2e}")
reads_v2 = sum(1 for _, _, _, _, op in LOG if op == "read")

LOG.clear()
yl1 = np.empty((Nl, Ol), np.float32)
linear.linear_forward_v1[grid, (TPB, TPB)](recorded(xl, "x"), recorded(wl, "w"), bl, yl1)
reads_v1 = sum(1 for _, _, _, _, op in LOG if op == "read")
lesson.say(f"""\nWhy tiles: the plain kernel (linear_forward_v1) makes each thread read its whole
row of x and its whole row of w from global memory: {reads_v1} loads here (recorded) for
{Nl * Il + Ol * Il} distinct elements. The tiled one loads each tile once per block and
reuses it {TPB} times from shared memory: {reads_v2} loads -- every x element once per block
column ({grid[0]}), every w element once per block row ({grid[1]}). On a GPU, global memory
traffic is what limits a GEMM; tiles cut it by the tile size.""")
print(f"global loads: v1 {reads_v1}, v2 {reads_v2}")

# -- 4 ------------------------------------------------------------------------------------------
lesson.step("A breakpoint inside a kernel")
lesson.say("""Under the simulator a kernel is Python, so pdb works in it. Put a conditional
breakpoint in the kernel source (every thread runs the line; stop only one), e.g. in
kernels/conv/v1.py, conv_forward_v1, just before the store:

        if n == 0 and k == 1 and p == 2 and q == 3:
            breakpoint()                  # or: import pdb; pdb.set_trace()
        y[n, k, p, q] = acc

and run anything that launches it on the simulator:

    MINIVGG_DEVICE=sim python -m pytest tests/test_conv.py -k forward -x
    NUMBA_ENABLE_CUDASIM=1 python my_script.py

At the (Pdb) prompt the kernel's names are there, and so is the fake cuda module:

    (Pdb) p cuda.threadIdx, cuda.blockIdx, i
    (Pdb) p n, k, p, q, acc
    (Pdb) c

(Remove it before compiling for a GPU: the real compiler rejects breakpoint().)
Below we do exactly that on a copy of conv_forward_v1's source; in a terminal you land in
pdb, otherwise a hook prints what pdb would show.""")
src = source(conv.conv_forward_v1).split("\n")
src = [line for line in src if not line.strip().startswith("@cuda.jit")]
store = next(i for i, line in enumerate(src) if line.strip() == "y[n, k, p, q] = acc")
indent = src[store][:len(src[store]) - len(src[store].lstrip())]
src[store:store] = [indent + "if n == 0 and k == 1 and p == 2 and q == 3:",
                    indent + "    breakpoint()"]
namespace = dict(vars(conv))
exec(compile("\n".join(src), "<conv_forward_v1 with a breakpoint>", "exec"), namespace)
kernel = conv.cuda.jit(namespace["conv_forward_v1"])

seen = {}


def show(*args, **kwargs):
    """What pdb would show at the breakpoint: the thread and its variables."""
    f = sys._getframe(1)
    cuda = f.f_globals["cuda"]
    seen.update(threadIdx=tuple(cuda.threadIdx), blockIdx=tuple(cuda.blockIdx),
                **{v: np.asarray(f.f_locals[v]).item() for v in ("i", "n", "k", "p", "q", "acc")})
    print(f"(breakpoint) cuda.threadIdx = {seen['threadIdx']}, cuda.blockIdx = "
          f"{seen['blockIdx']}, i = {seen['i']}, (n, k, p, q) = "
          f"{(seen['n'], seen['k'], seen['p'], seen['q'])}, acc = {seen['acc']:.6f}")


if lesson.pause:
    print("\nStopping in pdb now. Try:  p cuda.threadIdx, cuda.blockIdx, i   then  c")
    sys.breakpointhook = sys.__breakpointhook__
else:
    sys.breakpointhook = show
yb = np.empty((1, 3, 4, 4), np.float32)
kernel[1, THREADS](x, w, b, yb, np.int32(1), np.int32(1))
sys.breakpointhook = sys.__breakpointhook__
if seen:
    print(f"forward_ref's y[0, 1, 2, 3] = {ref[0, 1, 2, 3]:.6f}: the thread's acc is that "
          f"value (bias included) just before its store")
    print(f"breakpoint thread: {seen['threadIdx'][0]} (formula: i = 1*16 + 2*4 + 3 = 27)")

# -- 5 ------------------------------------------------------------------------------------------
lesson.step("Figure: the thread grid over the output")
plt = lesson.plt()
fig, axes = plt.subplots(1, K + 1, figsize=(4 * (K + 1), 3.8))
for k in range(K):
    ax = axes[k]
    ids = np.arange(k * P * Q, (k + 1) * P * Q).reshape(P, Q)
    ax.imshow(ids, cmap="viridis", vmin=0, vmax=n_out - 1)
    for p in range(P):
        for q in range(Q):
            ax.text(q, p, f"t{ids[p, q]}", ha="center", va="center", color="w", fontsize=9)
    ax.set_title(f"y[0, {k}]: which threadIdx.x writes it")
    ax.set_xticks(range(Q))
    ax.set_yticks(range(P))
ax = axes[K]
counts = np.zeros((H, W), int)
for _, th, name, idx, op in conv_log:
    if name == "x" and th[0] == 27:
        counts[idx[2], idx[3]] += 1
ax.imshow(counts, cmap="Greys", vmin=0, vmax=C + 1)
for (r, c), v in np.ndenumerate(counts):
    ax.text(c, r, str(v), ha="center", va="center", color="tab:red")
ax.set_title("reads of x per pixel by thread 27\n(y[0, 1, 2, 3]: channels x taps)")
ax.set_xticks(range(W))
ax.set_yticks(range(H))
lesson.save(fig, "05_inside_a_kernel.png")

lesson.done("""What it means: a kernel is a function of (blockIdx, threadIdx). Once the
mapping from thread to output is clear -- and the simulator lets you watch it -- the rest
is ordinary loops, plus shared memory and syncthreads when threads cooperate.""")
