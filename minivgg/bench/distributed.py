"""`python -m minivgg.bench --distributed`: data-parallel training (paper sect. 3.3) on
R = 1, 2, ... processes of this machine -- images/s at the same global batch, the speed-up
and the scaling efficiency (images/s on R processes / (R x images/s on one)).

Each process is one rank of the training loop's step (trainer.py): the cpu preset's net
(VGG-B at width 1/8, FC 128, 32-pixel crops, the shapes set's 10 classes), one BLAS thread,
its slice of a fixed global batch of synthetic images, forward, loss, backward, the one
all-reduce of the gradients (minivgg/distributed.py) and the SGD step. The loader is left
out: its threads would compete with the ranks for the cores and blur what is measured.
R = 1 runs without MPI (the one-process path); the others under mpiexec -n R. Runs
alternate (1, 2, 1, 2, ...) --repeats times and the median is reported, so load from
elsewhere on a shared machine falls on every R alike; the load average is in the notes.

On a machine with several GPUs the same command with --device cuda times the NCCL path;
ours have at most one GPU, so no such table is in benchmarks/RESULTS.md.
"""
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from minivgg.bench.report import markdown_table

HEADER = ("processes", "batch per process", "images/s", "speed-up", "efficiency")


def add_arguments(p):
    g = p.add_argument_group("--distributed (sect. 3.3: data parallelism over MPI processes)")
    g.add_argument("--distributed", action="store_true",
                   help="time the training step on 1 and more processes (see --ranks) at "
                        "the same global batch, on the cpu preset's net")
    g.add_argument("--global-batch", type=int, default=32,
                   help="--distributed: images per step over all processes (the cpu "
                        "preset's batch)")
    g.add_argument("--ranks", type=int, nargs="+", default=[1, 2],
                   help="--distributed: process counts to time")
    g.add_argument("--repeats", type=int, default=3,
                   help="--distributed: runs of each process count, alternating; median")


def worker(batch, steps, warmup, device):
    """One rank's timing: rank 0 prints {"images_per_s": ...} of the whole job."""
    from minivgg import distributed
    world = distributed.init("auto", gpu=device == "cuda")
    with world.guard():  # a failing rank ends the job instead of hanging it
        _time(world, batch, steps, warmup, device)


def _time(world, batch, steps, warmup, device):
    from minivgg import backend
    dev = backend.set_device(device)
    world.use_device(dev)
    if not dev.runs_kernels:
        from minivgg.device_flags import limit_blas_threads
        limit_blas_threads(1)
    step = _step(world, batch)
    for _ in range(warmup):
        step()
    world.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.name == "cuda":
        import cupy
        cupy.cuda.get_current_stream().synchronize()
    slowest = max(world.allgather(time.perf_counter() - t0))
    if world.is_root:
        print(json.dumps(dict(images_per_s=batch * steps / slowest, ranks=world.size,
                              describe=world.describe())), flush=True)


def _step(world, batch):
    """The trainer's step on this rank's slice of a fixed synthetic batch."""
    from minivgg import backend, ops
    from minivgg.bench.cpu import preset_net
    from minivgg.model import VGG
    from minivgg.optim import SGD
    from minivgg.tape import Tensor
    net = preset_net("B", 32, 0.125)
    model = VGG(net.config, net.classes, net.width, net.fc, net.size, dropout=net.dropout,
                init="kaiming", seed=0)
    opt = SGD(model.named_parameters(), net.lr, net.momentum, net.weight_decay)
    start, stop = world.shard(batch)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, net.size, net.size), dtype=np.float32)[start:stop]
    x = backend.to_device(x)
    labels = (np.arange(batch) % net.classes).astype(np.int32)[start:stop]
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        opt.zero_grad()
        ops.softmax_cross_entropy(model(Tensor(x)), labels).backward()
        world.average_gradients(params, (stop - start) / batch)
        opt.step()
    return step


def _run(ranks, args):
    from minivgg import distributed
    cmd = [sys.executable, "-m", "minivgg.bench.distributed", "--worker", "--batch",
           str(args.global_batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--device", args.device]
    if ranks > 1:
        cmd = distributed.mpiexec_command(ranks) + cmd
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        from minivgg.errors import UserError
        raise UserError(f"the {ranks}-process run failed: "
                        f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(lines[-1])


def distributed_section(bench, out):
    """The table: every process count, --repeats alternating runs each, the median."""
    a = bench.args
    a.ranks = sorted(set(a.ranks) | {1})  # the one-process figure is what the rest scale
    if a.repeats < 1 or a.global_batch < max(a.ranks):
        from minivgg.errors import UserError
        raise UserError(f"--repeats must be at least 1 and --global-batch at least the "
                        f"largest of --ranks, got {a.repeats} and {a.global_batch}")
    runs = {r: [] for r in a.ranks}
    load_before = os.getloadavg()
    described = {}
    for i in range(a.repeats):
        for r in a.ranks:
            bench.progress(f"distributed: {r} process(es), run {i + 1}/{a.repeats}")
            result = _run(r, a)
            runs[r].append(result["images_per_s"])
            described[r] = result["describe"]
    load_after = os.getloadavg()
    one, rows = statistics.median(runs[1]), []
    for r in a.ranks:
        ips = statistics.median(runs[r])
        rows.append([str(r), _share(a.global_batch, r), ips, ips / one,
                     f"{100 * ips / (r * one):.0f}%"])
    out(f"\n## Data parallelism (sect. 3.3): the training step on R processes, global "
        f"batch {a.global_batch}, device {a.device}\n")
    out(markdown_table(HEADER, rows))
    out(f"\nVGG-B at width 1/8, 32-pixel inputs (the cpu preset's net), synthetic images, one "
        f"BLAS thread per process; median of {a.repeats} alternating runs of {a.steps} "
        f"steps after {a.warmup}; each run's images/s from its slowest rank. Runs: "
        + "; ".join(f"R={r}: " + ", ".join(f"{v:.0f}" for v in runs[r]) for r in a.ranks)
        + f". Load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after, "
        f"on {os.cpu_count()} logical cores. MPI: {described.get(max(a.ranks))}.")


def _share(batch, ranks):
    from minivgg.data.loader import shard_range
    sizes = sorted({b - a for a, b in (shard_range(batch, r, ranks) for r in range(ranks))})
    return "/".join(str(s) for s in reversed(sizes))


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python -m minivgg.bench.distributed",
                                description="one rank of `python -m minivgg.bench "
                                            "--distributed` (started by it)")
    p.add_argument("--worker", action="store_true", required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    worker(a.batch, a.steps, a.warmup, a.device)
    return 0


if __name__ == "__main__":
    from minivgg.errors import run_cli
    sys.exit(run_cli(main))
