"""Timers: host clock, CUDA events (CuPy, torch), the median of repeated runs."""
import contextlib
import statistics
import time


def host_once(fn):
    """Milliseconds of fn() by the host clock (cpu work, or GPU work followed by a sync)."""
    t0 = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t0)


def cupy_once(fn):
    """Milliseconds between CUDA events recorded around fn() on CuPy's current stream."""
    import cupy
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    fn()
    end.record()
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end)


def torch_once(fn):
    import torch
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def median_ms(fn, once, steps, warmup, budget_s=None):
    """Median of up to `steps` timed calls after `warmup` untimed ones; stops early (after at
    least one) once the timed calls add up to `budget_s` seconds."""
    times = []
    for i in range(warmup + max(1, steps)):
        ms = once(fn)
        if i >= warmup:
            times.append(ms)
            if budget_s and sum(times) > 1e3 * budget_s:
                break
    return statistics.median(times)


BLOCK = 5        # timed calls of one side in a row (blocks_ms)
SETTLE_S = 0.02  # the pause before each block: idle OpenMP threads spin a few ms


def blocks_ms(fns, once, steps, warmup, budget_s=None, block=BLOCK, settle_s=SETTLE_S,
              sleep=time.sleep):
    """Medians of several calls timed in blocks that take turns (a x block, b x block, a x
    block, ...), each block after a pause of settle_s and `warmup` untimed calls; None in
    `fns` stays None. In turn, so that a load that comes and goes falls on all alike; in
    blocks, after a pause, because each side's idle threads keep a core busy for a while:
    the process holds two OpenMP runtimes (PyTorch's own libgomp, and the system's that
    Numba's threading layer loads), each with a pool whose threads spin a few ms after
    their last loop, on the core the other side's thread needs. Config B's step on 2
    threads, batch 64 and 32: timed call by call in turn, ours 9.3 and 4.7 ms, PyTorch's
    10.5 and 6.0; in blocks, 9.1 and 4.4, 9.5 and 5.5; each alone, 9.2 and 4.4, 9.8 and
    5.5."""
    live = [f for f in fns if f is not None]
    times = {id(f): [] for f in live}
    while min(len(t) for t in times.values()) < max(1, steps):
        for f in live:
            sleep(settle_s)
            for _ in range(warmup):
                once(f)
            for _ in range(min(block, max(1, steps) - len(times[id(f)]))):
                times[id(f)].append(once(f))
        if budget_s and sum(map(sum, times.values())) > 1e3 * budget_s:
            break
    return [statistics.median(times[id(f)]) if f is not None else None for f in fns]


@contextlib.contextmanager
def tf32(torch, on):
    """TF32 for cuDNN convs and cuBLAS matmuls on or off (the legacy flags), then restored."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
