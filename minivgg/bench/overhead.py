"""Launch overhead of a training step: how long the host takes to issue one step's
launches against how long the GPU takes to run them. Our kernels are launched from
Python one by one (Numba's dispatcher, then the driver); when the host's time per step
comes near the GPU's, the GPU waits on Python and faster kernels would not help."""
import statistics
import time

from minivgg.bench.report import markdown_table
from minivgg.bench.step import OVERHEAD_HEADER, Net, our_step


def cupy_events():
    """(start, stop) for GPU time: stop() waits for the GPU and returns ms since start()."""
    import cupy
    begin, end = cupy.cuda.Event(), cupy.cuda.Event()

    def stop():
        end.record()
        end.synchronize()
        return cupy.cuda.get_elapsed_time(begin, end)
    return begin.record, stop


def host_events():
    """The same pair by the host clock, for devices whose launches run synchronously."""
    t = []
    return (lambda: t.append(time.perf_counter()),
            lambda: 1e3 * (time.perf_counter() - t[-1]))


def overhead(step, steps, warmup, events=host_events):
    """(launches per step, median host ms per step, median GPU ms per step). The host time
    is the time step() takes to return, which for asynchronous launches is the time to
    issue them; the GPU time runs from before the first launch until the last finishes."""
    from kernels.common import recording
    with recording() as launches:
        step()
    host, gpu = [], []
    for i in range(warmup + max(1, steps)):
        start, stop = events()
        start()
        t0 = time.perf_counter()
        step()
        t1 = time.perf_counter()
        ms = stop()
        if i >= warmup:
            host.append(1e3 * (t1 - t0))
            gpu.append(ms)
    return len(launches), statistics.median(host), statistics.median(gpu)


def overhead_row(cfg, N, launches, host_ms, gpu_ms):
    per_launch = 1e3 * host_ms / launches if launches else None
    return [cfg, str(N), str(launches), host_ms, gpu_ms, per_launch, host_ms / gpu_ms]


def overhead_section(bench, out):
    a, rows = bench.args, []
    for N in a.batch:
        for cfg in a.configs:
            if bench.out_of_time(f"overhead {cfg} N={N}"):
                continue
            bench.progress(f"overhead {cfg} N={N}")
            step = our_step(Net.scaled(cfg, a.size, a.width), N)
            rows.append(overhead_row(cfg, N, *overhead(step, a.steps, bench.warmup,
                                                       cupy_events)))
            del step
            bench.free()
    if rows:
        out(f"\n## Launch overhead of the training step at {a.size} (width {a.width:g})\n")
        out(markdown_table(OVERHEAD_HEADER, rows))
        out("\nhost ms: time for step() to return (Python, Numba's dispatch, the driver: it "
            "issues the launches and does not wait); GPU ms: CUDA events from before the "
            "first launch to after the last. host/GPU near 1 or above: the GPU waits on "
            "the host.")
