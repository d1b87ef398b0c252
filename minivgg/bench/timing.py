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


def interleaved_ms(fns, once, steps, warmup, budget_s=None):
    """Medians of several calls timed in turn (a, b, a, b, ...), so that a load that comes
    and goes on a shared machine falls on all of them alike. None in `fns` stays None."""
    live = [f for f in fns if f is not None]
    times = {id(f): [] for f in live}
    for i in range(warmup + max(1, steps)):
        for f in live:
            ms = once(f)
            if i >= warmup:
                times[id(f)].append(ms)
        if i >= warmup and budget_s and sum(map(sum, times.values())) > 1e3 * budget_s:
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
