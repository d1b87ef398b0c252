"""`--device cpu`: the cpu device (the NumPy references through minivgg.ops) side by side
with PyTorch on the CPU, on the nets the cpu training preset trains (32-pixel crops,
width 1/8, FC 128, the shapes set's 10 classes, its dropout and SGD settings):

1. the whole training step of each config at each batch size, with each thread count;
2. every distinct layer of those nets, forward and backward, against PyTorch's op.

Both sides run in this process, timed in turn, a few calls at a time after a pause
(timing.blocks_ms: each side's idle OpenMP threads spin for a while after its loops), so
that load from elsewhere on a shared machine falls on both alike, at the same thread
count: the cpu device's (kernels/threads.py: its compiled loops on Numba's threads,
NumPy's BLAS then one thread a call), the OpenMP runtimes (threadpoolctl: PyTorch's
libgomp and the one Numba's loops run on), torch.set_num_threads PyTorch's pool; the
table says what the libraries reported."""
import os

from kernels import linear
from kernels.conv import outer3x3
from minivgg.bench import layers as layers_mod
from minivgg.bench import threads
from minivgg.bench.report import markdown_table
from minivgg.bench.step import Net, has_torch_twin, our_step, torch_step
from minivgg.bench.timing import BLOCK, blocks_ms, host_once

SHAPES_CLASSES = 10  # the built-in shapes set's classes, what the cpu preset trains on
STEP_TARGET, LAYER_TARGET = 1.25, 1.5  # issue 20's targets


def preset_net(config, size, width):
    """The cpu preset's net for `config` (its FC width, dropout and SGD settings)."""
    from minivgg.train import PRESETS
    p = PRESETS["cpu"]
    return Net(config, size, width, p["fc_width"], SHAPES_CLASSES, p["dropout"], p["lr"],
               p["momentum"], p["weight_decay"])


def thread_counts(bench):
    """The thread counts to run with; [None] (as they are) without threadpoolctl."""
    if threads.threadpoolctl() is None:
        bench.note("threadpoolctl is not installed: thread counts were neither set nor "
                   "checked (pip install threadpoolctl)")
        return [None]
    return bench.args.threads


def step_times(bench, n):
    """{(config, batch): (ours ms, torch ms)} of the whole step at thread count n."""
    a, torch, out = bench.args, bench.torch, {}
    for N in a.batch:
        for cfg in a.configs:
            if bench.out_of_time(f"cpu step {cfg} N={N} threads={n}"):
                continue
            bench.progress(f"cpu step {cfg} N={N} threads={n}")
            net = preset_net(cfg, a.size, a.width)
            fns = [our_step(net, N), torch_step(torch, net, N, "cpu")]
            out[(cfg, str(N))] = blocks_ms(fns, host_once, a.steps, a.warmup, a.max_seconds)
    return out


def layer_times(bench, n):
    """{(layer, input, pass): (ours ms, torch ms)} of every distinct layer at n threads."""
    a, torch, out = bench.args, bench.torch, {}
    nets = [preset_net(cfg, a.size, a.width) for cfg in a.configs if has_torch_twin(cfg)]
    for N in a.batch:
        if bench.out_of_time(f"cpu layers N={N} threads={n}"):
            continue
        bench.progress(f"cpu layers N={N} threads={n}")
        for layer in layers_mod.distinct_layers(nets):
            arrays = layers_mod.inputs(layer, N)
            mine = layers_mod.ours(layer, arrays, nets[0].dropout)
            other = (layers_mod.theirs(torch, layer, arrays, nets[0].dropout) if torch
                     else (None, None))
            for p, (f, g) in zip(("fwd", "bwd"), zip(mine, other)):
                out[(layer.name, layer.describe(N), p)] = blocks_ms(
                    [f, g], host_once, a.steps, a.warmup, a.max_seconds)
    return out


def side_by_side(times, counts):
    """(header tail, rows): per key, ours ms, torch ms and ours / torch at each count."""
    keys = list(dict.fromkeys(k for n in counts for k in times[n]))
    rows = []
    for k in keys:
        row = list(k)
        for n in counts:
            ours, theirs = times[n].get(k, (None, None))
            row += [ours, theirs, ours / theirs if ours and theirs else None]
        rows.append(row)
    tag = {n: f"{n} thr" if n else "as set" for n in counts}
    header = [f"{what} ({tag[n]})" for n in counts for what in ("ours ms", "torch ms", "ratio")]
    return header, rows


def verdict(rows, key_len, counts, target):
    """How many ratios are within target, and the worst, in one line."""
    found = [(r[key_len + 3 * i + 2], r, n) for r in rows for i, n in enumerate(counts)
             if r[key_len + 3 * i + 2] is not None]
    if not found:
        return ""
    worst, row, n = max(found, key=lambda t: t[0])
    within = sum(x <= target for x, _, _ in found)
    return (f"{within} of {len(found)} within {target}x of PyTorch; the worst {worst:.2f}x "
            f"({', '.join(row[:key_len])}, {n or 'default'} thread(s)).")


def cpu_sections(bench, out):
    a, torch = bench.args, bench.torch
    counts = thread_counts(bench)
    branchy = [cfg for cfg in a.configs if not has_torch_twin(cfg)]
    if branchy:
        bench.note(f"{', '.join(branchy)}: timed without PyTorch (no twin of a net with "
                   "branches in the bench) and left out of the layer table")
    choice = threads.blas_choice_note(os.environ)
    if choice:
        bench.note(choice)
    pixels, lanes = outer3x3.block()
    out("\n## Threads\n")
    out("- convs of the cpu device: VGG's 3x3 stride-1 convs by compiled loops, forward "
        "and dx (kernels/conv/direct3x3.py's; outer3x3.py's outer products where channels "
        f"outnumber output columns and there are {lanes} output channels or more, in "
        f"blocks of {pixels} pixels x {lanes}), dw too where "
        "channels are few or on more threads (else NumPy's BLAS); 1x1 convs by NumPy's BLAS")
    out(f"- GEMMs of the other convs (5x5, 11x11, strided): {threads.conv_gemm_side()}")
    out("- fully connected layers: the forward by kernels/gemm_outer.py's outer products "
        f"(blocks of {pixels} rows x {lanes} outputs, strips of outputs shared among the "
        f"threads) from {linear.OUTER_MIN_ROWS} rows, up to {linear.OUTER_MAX_TERMS} inputs "
        f"and from {lanes} outputs, else NumPy's BLAS (on more threads kernels/gemm.py's "
        "dot products); the backward by NumPy's BLAS")
    steps, per_layer = {}, {}
    for n in counts:
        with threads.limited(n, torch):
            out(f"- {n or 'default'} thread(s): ours {threads.ours_side()}; "
                f"PyTorch {threads.torch_side(torch)}")
            steps[n] = step_times(bench, n) if a.configs else {}
            per_layer[n] = layer_times(bench, n) if a.layer_table and a.configs else {}
    net = preset_net(a.configs[0] if a.configs else "A", a.size, a.width)
    what = (f"{a.size} px, width {a.width:g}, FC {net.fc}, {net.classes} classes, "
            f"dropout {net.dropout:g}; median of {a.steps} after {a.warmup} warm-up, "
            f"timed in turn with PyTorch, {BLOCK} at a time")
    if any(steps.values()):
        header, rows = side_by_side(steps, counts)
        out(f"\n## Whole training step on the CPU ({what})\n")
        out(markdown_table(("config", "batch", *header), rows))
        out("\nratio: ours / torch. " + verdict(rows, 2, counts, STEP_TARGET))
    if any(per_layer.values()):
        header, rows = side_by_side(per_layer, counts)
        out(f"\n## Every layer on the CPU, forward and backward ({what})\n")
        out(markdown_table(("layer", "input", "pass", *header), rows))
        out("\nours: minivgg.ops on the cpu device, as a training step calls it (conv "
            "forward keeps its unrolled input for backward when the batch unrolls in one "
            "chunk); torch: the functional op, "
            "backward by torch.autograd.grad; both from the same arrays. The first conv's "
            "input needs no gradient on either side. ratio: ours / torch. "
            + verdict(rows, 3, counts, LAYER_TARGET))
