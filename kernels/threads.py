"""The cpu device's threads: n of them share the outer loop of its compiled loops (a
`prange`, run by Numba's parallel=True on its threading layer: OpenMP where libgomp is
there, as here), NumPy's BLAS one thread a call meanwhile. tests/test_cpu_fast.py runs
the conv paths and ReLU on 1, 2 and 3 threads against the reference; `python -m
minivgg.bench --device cpu` times them against PyTorch's at 1 and 2.

Each loop is compiled twice (`loops`): as written, where prange runs as range, for one
thread, and with parallel=True, for more; threads() picks which one a call runs. One
owner for every thread of the cpu device:

- NumPy's BLAS runs one thread a call: an idle OpenBLAS thread spins for about 2**28
  cycles (~0.1 s) after each call, waiting for more work, on a core the loops' threads
  (or PyTorch's, in the bench) then get only between its time slices. Timed in turn with
  ours while our BLAS ran 2 threads, PyTorch's step of config B (batch 64, 2 threads)
  took 22.3 ms; 11.1 ms with OpenBLAS's threads asleep (OPENBLAS_THREAD_TIMEOUT=4).
- OpenMP's threads spin too, a few ms after each loop (a loop after a 3 ms pause started
  in 1.5-3 us, after 10 ms in 33 us), but they are the loops' own. (PyTorch's wheel
  brings its own libgomp, so in the bench its ops run on a second pool, which spins
  likewise: bench/timing.py times each side in blocks after a pause.)
- Python threads splitting the batch (tried first): about 0.04 ms to wake a sleeping
  thread, and Linux often woke it on the caller's core unless pinned; conv3_2's forward
  at batch 64 took 0.30 ms on 2 threads that way, 0.21 ms in a prange (0.42 on one).

    set_threads(n)     n threads from now on (BLAS: one a call); threads() reads it
    @loops(...)        njit's options: a loop compiled for one thread and for several
                       (slp=True: with LLVM's SLP vectorizer, see slp_vectorizer)
    layer()            which threading layer Numba runs the loops on
"""
import contextlib
import functools
import os
import types

import numba
from numba import njit

_threads = 1


def threads():
    """How many threads the cpu device's loops run on (1 until set_threads)."""
    return _threads


def cores():
    """How many cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def set_threads(n):
    """Run the cpu device's compiled loops on n threads (n >= 1; 0: one a core), NumPy's
    BLAS on one a call. At most the threads Numba started with (one a core, unless
    NUMBA_NUM_THREADS says otherwise). Returns the count set."""
    global _threads
    import numpy  # noqa: F401  (loaded, its BLAS is there to limit)
    from threadpoolctl import threadpool_limits
    if n < 0:
        raise ValueError(f"threads must be 1 or more (0: one a core), not {n}")
    n = min(n or cores(), numba.config.NUMBA_NUM_THREADS)
    threadpool_limits(limits=1, user_api="blas")  # kept: the loops own the cores now
    numba.set_num_threads(n)
    _threads = n
    return n


def layer():
    """Numba's threading layer: 'omp', 'tbb' or 'workqueue' (the last sleeps between
    loops: slower hand-offs), or 'not started' before set_threads."""
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel loop has run, and set_threads was not called
        return "not started"


def _renamed(fn):
    """fn under another name: Numba's cache files are named by the function, not by its
    options, so a parallel=True compile of fn itself would share (and overwrite) the
    one-thread compile's cache, and either variant could load the other's code."""
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                              fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + "_on_threads"
    return twin


@contextlib.contextmanager
def slp_vectorizer():
    """Numba compiles with LLVM's SLP vectorizer inside this block, as it would everywhere
    with NUMBA_SLP_VECTORIZE=1. Numba leaves it off by default (numba/numba#8852: it
    miscompiled some code in 2023); the loop vectorizer, which is on, only vectorizes an
    innermost loop, so a register-blocked kernel (outer3x3.py: one scalar sum per output
    pixel and channel, packed 16 to a vector register) needs the SLP one. Numba reads the
    setting as it compiles, and keeps a value set in its config module until a NUMBA_
    environment variable changes: each compile first re-reads the environment if any
    NUMBA_ variable changed since the last read (config.py's reload_config), which would
    put the setting back to 0 before the compile reads it (and Numba's cache would keep
    that scalar build). So the environment is re-read here first, then the setting made.
    The compiler's own lock keeps other threads' compiles out meanwhile."""
    from numba.core import config
    from numba.core.compiler_lock import global_compiler_lock
    with global_compiler_lock:
        config.reload_config()
        before, config.SLP_VECTORIZE = config.SLP_VECTORIZE, 1
        try:
            yield
        finally:
            config.SLP_VECTORIZE = before


def _compiles_with_slp(dispatcher):
    """The dispatcher, which now compiles (or loads from its cache) every signature under
    slp_vectorizer: its compile method is what a call with new argument types runs."""
    compile_one = dispatcher.compile

    def compile_with_slp(signature):
        with slp_vectorizer():
            return compile_one(signature)
    dispatcher.compile = compile_with_slp
    return dispatcher


def loops(slp=False, **options):
    """Decorator: the function compiled by njit(**options) for one thread, and by
    njit(parallel=True, **options), whose prange loops share their iterations among
    threads(), for more; each call runs the one that threads() asks for. slp=True: both
    compiled with LLVM's SLP vectorizer on (slp_vectorizer)."""
    def compile_twice(fn):
        one, many = njit(**options)(fn), njit(parallel=True, **options)(_renamed(fn))
        if slp:
            one, many = _compiles_with_slp(one), _compiles_with_slp(many)

        @functools.wraps(fn)
        def run(*args):
            return (many if _threads > 1 else one)(*args)
        run.one, run.many = one, many
        return run
    return compile_twice
