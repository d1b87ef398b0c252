"""Lesson 7: memory and compute -- where a VGG spends its bytes and its multiply-adds.

Per-layer activation memory and multiply-adds of configuration D at 224 (model.summary());
activations and compute live in the early layers, parameters in the FC layers; and how the
batch size meets GPU memory: parameters + gradients + momentum + everything the tape keeps
for backward, against an 80 GB H100.

    python lessons/07_memory_and_compute.py [--no-pause] [--device cpu|sim|cuda] [--out DIR]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _lesson import Lesson  # noqa: E402

lesson = Lesson(__doc__)

import numpy as np  # noqa: E402

from minivgg import backend, nn, ops  # noqa: E402
from minivgg.model import VGG, plan  # noqa: E402
from minivgg.tape import Tensor  # noqa: E402

MB, GB = 1024 ** 2, 1e9
H100 = 80e9  # bytes: an 80 GB H100 (about 79.6 GB usable; we keep 80 for round numbers)

# -- 1 ------------------------------------------------------------------------------------------
lesson.step("The claim")
lesson.quote("Multi-GPU training exploits data parallelism, and is carried out by splitting "
             "each batch of training images into several GPU batches, processed in parallel on "
             "each GPU. [...] On a system equipped with four NVIDIA Titan Black GPUs, training a "
             "single net took 2-3 weeks depending on the architecture.", "sect. 3.3")
lesson.say("""A batch of 256 (sect. 3.1) did not fit on one 6 GB Titan Black: the batch was
split over four. Why it does not fit, and what does on an 80 GB H100, follows from two
columns of the summary: activation bytes and multiply-adds per layer.""")

# -- 2 ------------------------------------------------------------------------------------------
lesson.step("Per layer: activations, multiply-adds, parameters (D, 224x224, one image)")
rows = plan("D")
table = []
for r in rows:
    if r.kind in ("conv", "pool", "fc"):
        table.append((r.name, "x".join(map(str, r.out_shape)), f"{r.act_bytes / MB:.2f}",
                      f"{r.madds / 1e6:,.0f}", f"{r.params:,}"))
lesson.table(("layer", "output", "act. MB", "mult-adds (M)", "params"), table)
input_bytes = 3 * 224 * 224 * 4
act = sum(r.act_bytes for r in rows)
madds = sum(r.madds for r in rows)
params = sum(r.params for r in rows)
print(f"\n(ReLU and dropout rows not shown: each output is as large as its layer's, and "
      f"the totals include them)\nD multiply-adds per image: {madds:,} ({madds / 1e9:.2f} G)")
print(f"D activation bytes per image (every layer's output, float32): {act:,} "
      f"({act / MB:.1f} MB)")
print(f"D parameters: {params:,} ({params * 4 / MB:.0f} MB in float32)")
lesson.say("""15.5 G multiply-adds per 224 image forward (the backward pass costs about twice
that again: one GEMM for the input gradient, one for the weight gradient), and 109 MB of
layer outputs per image.""")

# -- 3 ------------------------------------------------------------------------------------------
lesson.step("Where each one goes")
groups = {"block 1 (224x224)": "1", "block 2 (112x112)": "2", "block 3 (56x56)": "3",
          "block 4 (28x28)": "4", "block 5 (14x14)": "5", "FC (fc6-fc8)": "fc"}


def group_of(r):
    """'1'..'5' for the feature layers (the block number in conv3_2, pool3), 'fc' else."""
    if r.index.startswith("classifier"):
        return "fc"
    return next(c for c in r.name if c.isdigit())


shares = []
for label, g in groups.items():
    sel = [r for r in rows if group_of(r) == g]
    a, m, p = (sum(r.act_bytes for r in sel), sum(r.madds for r in sel),
               sum(r.params for r in sel))
    shares.append((label, a, m, p))
lesson.table(("part", "activations", "mult-adds", "parameters"),
             [(lab, f"{100 * a / act:.1f}%", f"{100 * m / madds:.1f}%", f"{100 * p / params:.1f}%")
              for lab, a, m, p in shares])
first_two = sum(a for _, a, _, _ in shares[:2]) / act
fc_params = shares[-1][3] / params
print(f"\nblocks 1-2: {100 * first_two:.0f}% of activation memory; FC layers: "
      f"{100 * fc_params:.0f}% of parameters, {100 * shares[-1][2] / madds:.1f}% of multiply-adds")
lesson.say("""Opposite ends of the net: the first two blocks, at full resolution with few
channels, hold most of the activation memory and a third of the compute, and almost no
parameters; the FC layers hold 89% of the parameters and do under 1% of the work. Memory
per image is set by the bottom of the net, model size by the top.""")

# -- 4 ------------------------------------------------------------------------------------------
lesson.step("What a training step keeps in memory (measured on a small net)")
lesson.say("""Training keeps, besides the weights: a gradient and a momentum buffer per
weight (SGD with momentum, sect. 3.1), and for backward every layer's output -- minivgg's
tape keeps each op's output (conv, ReLU, pool, dropout are separate arrays, nothing is in
place). During backward the tape also keeps each output's gradient (.grad) until the
graph is dropped, so the peak holds two copies of the activations.

    training bytes = 3 x 4 x params  +  N x (input + 2 x activation bytes per image)

Check the per-image part by walking the graph of a real step and adding up the arrays.""")
if lesson.device.name == "sim":
    print("\n(skipped on the simulator: a real step launches hundreds of thousands of simulated "
          "threads; run with --device cpu)")
else:
    small = VGG("D", num_classes=10, width=1 / 16, fc_width=64, input_size=64, dropout=0.5)
    small.train()
    Nb = 2
    x = Tensor(backend.to_device(np.random.default_rng(0).standard_normal((Nb, 3, 64, 64))))
    labels = backend.to_device(np.arange(Nb) % 10, dtype=np.int32)
    loss = ops.softmax_cross_entropy(small(x), labels)
    seen, stack, graph = set(), [loss], []  # collect the graph now: backward() frees it
    while stack:
        t = stack.pop()
        if id(t) not in seen:
            seen.add(id(t))
            stack.extend(t._parents)
            graph.append(t)
    loss.backward()
    data_b, grad_b = 0, 0
    for t in graph:
        if isinstance(t, nn.Parameter):
            continue
        if t.data.base is None:  # owns its memory (flatten's output is a view)
            data_b += t.data.nbytes
        if t.grad is not None:
            grad_b += t.grad.nbytes
    srows = small.summary()
    model_b = Nb * (3 * 64 * 64 * 4 + sum(r.act_bytes for r in srows))
    print(f"\nD at width 1/16, 64x64, batch {Nb}, one training step:")
    print(f"  outputs kept by the tape: {data_b:,} bytes; formula N x (input + sum of "
          f"act_bytes): {model_b:,}")
    print(f"  their gradients:          {grad_b:,} bytes; formula N x sum of act_bytes: "
          f"{Nb * sum(r.act_bytes for r in srows):,}")
    print("  (the differences: the loss, 4 bytes, and flatten's gradient, a copy of "
          "pool5's)")

# -- 5 ------------------------------------------------------------------------------------------
lesson.step("Batch size against an 80 GB H100 (D, 224x224, float32)")
fixed = 3 * 4 * params
per_image = input_bytes + 2 * act
table, curve = [], []
for N in (1, 8, 16, 32, 64, 128, 256, 512, 1024):
    total = fixed + N * per_image
    curve.append((N, total))
    table.append((N, f"{fixed / GB:.2f}", f"{N * per_image / GB:.1f}", f"{total / GB:.1f}",
                  "yes" if total <= H100 else "no"))
lesson.table(("batch", "weights+grads+momentum GB", "activations GB", "total GB", "fits 80 GB"),
             table)
n_max = int((H100 - fixed) // per_image)
print(f"\nper image: {per_image / MB:.0f} MB; fixed: {fixed / GB:.2f} GB")
print(f"largest batch on an 80 GB H100 (model): {n_max}")
print(f"largest batch on a 6 GB Titan Black (model): {int((6e9 - fixed) // per_image)}")
b256 = (fixed + 256 * per_image) / GB
lesson.say(f"""The weights are the small part: {fixed / GB:.1f} GB whatever the batch.
Activations grow with it, ~{per_image / MB:.0f} MB per image in minivgg, so the paper's batch
of 256 needs {b256:.0f} GB: {"it fits one 80 GB H100" if b256 * GB <= H100 else "more than one H100"},
where a 6 GB Titan Black takes {int((6e9 - fixed) // per_image)} images. Ways down: free each
output's gradient as soon as backward has used it, ReLU in place, split the batch and add
up the gradients (sect. 3.3 did that across four GPUs), or lower precision. The kernels'
workspaces and CuPy's allocator come on top of this model.""")

if lesson.device.name == "cuda":
    import cupy
    pool = cupy.get_default_memory_pool()
    full = VGG("D", init="zeros")
    full.train()
    before = pool.used_bytes()
    Nb = 8
    xg = Tensor(backend.to_device(np.zeros((Nb, 3, 224, 224), np.float32)))
    lg = backend.to_device(np.zeros(Nb), dtype=np.int32)
    lossg = ops.softmax_cross_entropy(full(xg), lg)
    lossg.backward()
    cupy.cuda.Stream.null.synchronize()
    used = pool.used_bytes() - before
    print(f"\nmeasured on this GPU, D batch {Nb}: {used / GB:.2f} GB held after backward "
          f"(activations + their gradients + weight gradients); model: "
          f"{(Nb * per_image + 4 * params) / GB:.2f} GB")

# -- 6 ------------------------------------------------------------------------------------------
lesson.step("Figure: per layer, and against the batch size")
plt = lesson.plt()
fig, axes = plt.subplots(2, 2, figsize=(15, 8))
layers = [r for r in rows if r.kind in ("conv", "pool", "fc")]
names = [r.name for r in layers]
for ax, values, title, colour in (
        (axes[0, 0], [r.act_bytes / MB for r in layers], "output MB per image", "tab:green"),
        (axes[0, 1], [r.madds / 1e9 for r in layers], "multiply-adds (G) per image", "tab:blue"),
        (axes[1, 0], [r.params / 1e6 for r in layers], "parameters (M)", "tab:red")):
    ax.bar(range(len(layers)), values, color=colour)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(names, rotation=70, ha="right", fontsize=7)
    ax.set_title(f"D at 224: {title}")
ax = axes[1, 1]
Ns = np.array([n for n, _ in curve])
ax.plot(Ns, [t / GB for _, t in curve], "o-", label="minivgg model: weights x3 + N x per image")
ax.axhline(H100 / GB, color="k", ls="--", label="H100, 80 GB")
ax.axhline(6, color="gray", ls=":", label="Titan Black, 6 GB")
ax.axvline(n_max, color="tab:orange", ls=":", label=f"largest batch: {n_max}")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("batch size")
ax.set_ylabel("training memory (GB)")
ax.set_title("D at 224: training memory against batch size")
ax.legend(fontsize=8)
fig.tight_layout()
lesson.save(fig, "07_memory_and_compute.png")

lesson.done("""What it means: parameters are a top-of-the-net problem (FC), activations and
compute a bottom-of-the-net problem (the first blocks at full resolution). Batch size is
paid for in activations.""")
