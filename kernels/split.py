"""The cpu device's threads: its conv loops and their GEMMs split a batch's images over n
threads, the caller and n - 1 workers, each on a core of its own (Python threads, which
run at once because Numba's loops here are compiled with nogil=True and NumPy lets go of
the GIL in its copies and products). tests/test_cpu_fast.py checks the split convs against the
reference; `python -m minivgg.bench --device cpu` times them against PyTorch's.

Why each on a core of its own: a worker left to the scheduler often woke on the caller's
core (Linux favours the waker's cache) behind the caller's own part, and the parts ran
one after the other: conv2_2's forward (64 images) took 0.54-0.58 ms on 2 threads against
0.52-0.56 on one, after the first few dozen calls; held apart, 0.34-0.35. An idle worker
waits on a lock: it sleeps.

Why NumPy's BLAS runs one thread a call meanwhile (set_threads): an idle OpenBLAS thread
spins for about 2**28 cycles (~0.1 s) after each call, waiting for more work, on a core
that the workers (or the loader's threads, or PyTorch's in the bench) then get only
between its time slices: timed in turn with ours while our BLAS ran 2 threads, PyTorch's
step of config B (batch 64, 2 threads) took 22.3 ms; 11.1 ms with OpenBLAS's threads
asleep (OPENBLAS_THREAD_TIMEOUT=4). One owner for all of the cpu device's threads.

    set_threads(n)        n threads from now on (BLAS: one a call); threads() reads it
    image_parts(N)        range(N) as threads() slices
    over_images(fn, N, macs)  [fn(part) for part in image_parts(N)], the parts at once
"""
import contextlib
import itertools
import os
from concurrent.futures import ThreadPoolExecutor

# Below this many multiply-adds an op runs on one thread: a split costs about 0.04 ms (the
# workers' wake-ups), more than half of such an op takes (conv5_1's forward at batch 64,
# 9.4M: 0.109 ms on 1 thread, 0.138 on 2; the 1x1 convs': 0.03-0.06 ms, 0.07-0.09 split).
MIN_MACS = 12_000_000

_threads = 1
_pool = None  # the workers, made on the first split that needs them


def threads():
    """How many threads the cpu device's splits use (1 until set_threads)."""
    return _threads


def cores():
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def set_threads(n):
    """Run the cpu device's conv loops and GEMMs on n threads (n >= 1; 0: one a core this
    process may use), NumPy's BLAS on one a call. Returns n as set."""
    global _threads, _pool
    if n == 0:
        n = len(cores())
    if n < 1:
        raise ValueError(f"threads must be 1 or more (0: one a core), not {n}")
    import numpy  # noqa: F401  (loaded, its BLAS is there to limit)
    from threadpoolctl import threadpool_limits
    threadpool_limits(limits=1, user_api="blas")  # kept: the workers own the cores now
    if n != _threads and _pool is not None:
        _pool.shutdown()
        _pool = None
    _threads = n
    return n


def _pin(numbers, where):
    """A worker's first act: onto the next of `where`'s cores (Linux; elsewhere unpinned)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {where[next(numbers) % len(where)]})


@contextlib.contextmanager
def _on_core(core):
    """The calling thread on `core` for a while, then where it may run again."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, mask)


def image_parts(N, n=None):
    """range(N) as up to n (default threads()) contiguous slices, as even as can be; no
    empty slice (one slice of nothing for N = 0)."""
    n = max(1, min(threads() if n is None else n, N))
    bounds = [N * i // n for i in range(n + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def over_images(fn, N, macs):
    """[fn(part) for part in image_parts(N)]: the first part on the calling thread, held on
    the first core meanwhile, the others on the workers, pinned to the other cores; all on
    the calling thread when the op's multiply-adds, `macs`, are fewer than MIN_MACS. fn
    must not split again (the workers would wait on themselves)."""
    global _pool
    parts = image_parts(N) if macs >= MIN_MACS else [slice(0, N)]
    if len(parts) == 1:
        return [fn(parts[0])]
    here, *others = cores()
    if _pool is None:
        _pool = ThreadPoolExecutor(_threads - 1, thread_name_prefix="minivgg-cpu",
                                   initializer=_pin,
                                   initargs=(itertools.count(), others or [here]))
    with _on_core(here):
        futures = [_pool.submit(fn, part) for part in parts[1:]]
        first = fn(parts[0])
        return [first] + [f.result() for f in futures]
