"""Lesson 12: what the network sees -- ZFNet's deconvnet by hand, occlusion, AlexNet's filters.

A small net trained here on freshly drawn shapes (about a minute on a CPU; --quick: a few
steps, the same code, no result; --weights CKPT: a net trained by minivgg.train instead).
Then one activation of one of its feature maps sent back to the pixels by hand, layer by
layer, as Zeiler & Fergus's deconvnet does it -- unpooling to the max-pool's switches,
rectification, the transposed filters -- with minivgg's own backward kernels; a grey
square slid over the image (occlusion sensitivity); and the first layer's kernels with
their colourfulness (AlexNet sect. 6.1, Fig. 3). `python -m minivgg.visualise` does all of
this for any checkpoint and folder.

    python lessons/12_what_the_network_sees.py [--quick] [--weights CKPT] [--no-pause]
                                               [--device cpu|sim|cuda] [--out DIR]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _lesson import Lesson  # noqa: E402


def _flags(p):
    p.add_argument("--quick", action="store_true", help="a few training steps only")
    p.add_argument("--weights", metavar="CKPT", help="a checkpoint of minivgg.train")


lesson = Lesson(__doc__, add_arguments=_flags)

import numpy as np  # noqa: E402

from minivgg import backend, data, ops  # noqa: E402
from minivgg.data.shapes import render_shape  # noqa: E402
from minivgg.evaluate import Net  # noqa: E402
from minivgg.tape import Tensor  # noqa: E402
from minivgg.visualise import common, deconv, filters, occlusion  # noqa: E402

QUICK = lesson.args.quick
MEAN, STD = [128.0] * 3, [64.0] * 3
if lesson.device.name == "sim":
    lesson.say("""Training and the occlusion's hundreds of forward passes would take hours
    on the simulator: this lesson runs on the cpu device, the same ops in NumPy (and loops
    compiled for the CPU; lesson 5 steps through the kernels themselves).""")
    backend.set_device("cpu")


CLASSES = ["circle", "cross", "square", "star"]  # four of the shapes: learned in a minute


class Drawn:
    """n shapes images (64 x 64) of CLASSES drawn on the fly, with their labels."""

    def __init__(self, n, seed):
        r = np.random.default_rng(seed)
        self.labels = r.integers(0, len(CLASSES), n)
        self.images = [render_shape(CLASSES[c], r, 64)[0] for c in self.labels]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def train_here(steps, batch=32):
    """B-5x5 (five 5x5 conv layers, sect. 4.1) at width 1/8 on 32 x 32 crops of drawn
    shapes rescaled to S in [32, 40]: SGD with momentum 0.9, lr 0.04 after 50 warm-up
    steps, lowered along a cosine to 0 (the cpu preset's schedule)."""
    from minivgg.model import VGG
    from minivgg.optim import SGD
    train = Drawn(min(3200, batch * steps), seed=1)
    loader = data.Loader(train, batch, True, crop=32, scale=(32, 40), mean_rgb=MEAN,
                         std_rgb=STD, workers=1)
    model = VGG("B-5x5", len(CLASSES), width=1 / 8, fc_width=64, input_size=32, dropout=0,
                init="kaiming", seed=0)
    opt, done = SGD(model.named_parameters(), 0.04, 0.9, 5e-4), 0
    while done < steps:
        for x, y in loader.batches(done // len(loader)):
            opt.lr = 0.04 * min(1.0, (done + 1) / 50) * 0.5 * (1 + np.cos(np.pi * done / steps))
            opt.zero_grad()
            ops.softmax_cross_entropy(model(Tensor(backend.to_device(x))), y).backward()
            opt.step()
            done += 1
            if done == steps:
                break
    meta = dict(mean_rgb=MEAN, std_rgb=STD, classes=CLASSES,
                settings=dict(scale_jitter=(32, 40), scale=None))
    return Net("trained here", model.eval(), meta, [36])


def accuracy(net, ds):
    views = [common.view(img, net) for img, _ in (ds[i] for i in range(len(ds)))]
    probs = common.probabilities(net, common.batch(views, net.meta))
    return float((probs.argmax(axis=1) == ds.labels).mean())


# -- 1 ------------------------------------------------------------------------------------
lesson.step("The claim, and a net to look into")
lesson.quote("Another way to probe the network's visual knowledge is to consider the feature "
             "activations induced by an image at the last, 4096-dimensional hidden layer.",
             "sect. 6.1", source="Krizhevsky, Sutskever & Hinton, NIPS 2012")
lesson.say("""AlexNet looked at its net from the outside (its kernels, its predictions, its
nearest neighbours). Zeiler & Fergus (2013) looked inside: a deconvolutional network maps
one feature activation back to the input pixels that caused it, and a grey square slid
over the image shows which part of it the classifier depends on.""")
if lesson.args.weights:
    net = common.load(lesson.args.weights)
    lesson.say(f"The net: {lesson.args.weights} ({net.model.config}).")
else:
    steps = 3 if QUICK else 500
    net = train_here(steps)
    val = Drawn(40 if QUICK else 500, seed=2)
    print(f"trained here: B-5x5 at width 1/8 on {', '.join(CLASSES)}, {steps} steps of 32; "
          f"validation accuracy {100 * accuracy(net, val):.1f}% on {len(val)} new images")
    if QUICK:
        print("(--quick: 3 steps -- the same code path, nothing to read in the pictures)")
model, rows = net.model, common.feature_rows(net.model)

# -- 2 ------------------------------------------------------------------------------------
lesson.step("One activation back to the pixels, layer by layer")
rng = np.random.default_rng(12)
img, box64, _ = render_shape("star", rng, 64, d=40)
v = common.view(img, net)
x = common.batch([v], net.meta)
convs = [i for i, r in enumerate(rows) if r.kind == "conv"]
upto = convs[1] + 1  # the second conv layer's ReLU
steps = deconv.record(list(model.features)[:upto + 1], x, model.input_channels)
y = backend.to_host(steps[-1].y.data)
k = int(y[0].reshape(y.shape[1], -1).max(axis=1).argmax())  # the map this image excites most
p, q = np.unravel_index(y[0, k].argmax(), y[0, k].shape)
print(f"layer {rows[upto].name}: {y.shape[1]} maps of {y.shape[2]}x{y.shape[3]}; the strongest "
      f"activation of this star is map {k} at ({p}, {q}): {y[0, k, p, q]:.3f}")
lesson.say("""Every other activation of the layer is set to 0; the one left goes down
through the layers in reverse. Each line: the layer undone, the shape, how many values are
non-zero after it.""")
signal = np.zeros(y.shape, np.float32)
signal[0, k, p, q] = y[0, k, p, q]
signal, table = backend.to_device(signal), []


def switches_hold(step, before, after):
    """Every unpooled value sits where its window's maximum was (row-major first)."""
    xin, w, s = backend.to_host(step.x.data)[0], step.module.window, step.module.stride
    want, b = np.zeros_like(xin), backend.to_host(before)[0]
    for c, i, j in zip(*np.nonzero(b)):
        win = xin[c, i * s:i * s + w, j * s:j * s + w]
        di, dj = np.unravel_index(win.argmax(), win.shape)
        want[c, i * s + di, j * s + dj] += b[c, i, j]
    return np.array_equal(want, backend.to_host(after)[0])


for step in reversed(steps):
    before = signal
    signal = deconv.undo(step, signal)
    m, host = step.module, backend.to_host(signal)
    what = type(m).__name__
    note = ""
    if what == "MaxPool2d":
        note = f"unpooling to the switches; every value at its switch: " \
               f"{'yes' if switches_hold(step, before, signal) else 'NO'}"
    elif what == "ReLU":
        note = f"rectification: {int((backend.to_host(before) < 0).sum())} negative values -> 0"
    elif isinstance(m, deconv.nn.Conv2d):
        note = f"the transposed filters {tuple(m.weight.shape)} (conv backward-data)"
    table.append((what, "x".join(map(str, host.shape[1:])), int(np.count_nonzero(host)), note))
lesson.table(["undone", "signal (C x H x W)", "non-zero", ""], table, ["<", ">", ">", "<"])
by_hand = backend.to_host(signal)[0]
px, *_ = deconv.project_strongest(model, x, upto, k)
print(f"by hand vs visualise.deconv.project_strongest: max abs difference "
      f"{np.abs(by_hand - px[0]).max():.3g}")
y0, x0, y1, x1 = common.receptive_box(rows, upto, p, q)
nz = np.argwhere(np.abs(by_hand).sum(axis=0) > 0)
inside = (nz[:, 0] >= y0).all() and (nz[:, 0] < y1).all() and (nz[:, 1] >= x0).all() and \
    (nz[:, 1] < x1).all()
print(f"receptive field of ({p}, {q}): rows [{y0}, {y1}), columns [{x0}, {x1}); every "
      f"non-zero pixel of the projection inside it: {'yes' if inside else 'NO'}")
grad_steps = deconv.record(list(model.features)[:upto + 1], x, model.input_channels)
seed = np.zeros(y.shape, np.float32)
seed[0, k, p, q] = y[0, k, p, q]
grad_steps[-1].y.backward(backend.to_device(seed))
grad = backend.to_host(grad_steps[0].x.grad)[0]
model.zero_grad()
cos = float((grad * by_hand).sum() / max(1e-30, np.linalg.norm(grad) * np.linalg.norm(by_hand)))
print(f"the gradient (ReLU backward masks instead of rectifying): cosine with the projection "
      f"{cos:.3f}")
lesson.say("""The unpooling and the transposed filtering are the max-pool's and the conv's
backward-data kernels, unchanged; only the ReLUs differ from backpropagation: the deconvnet
rectifies the signal coming down, the gradient masks it by where the forward activation was
positive. Both stay inside the unit's receptive field.""")

# -- 3 ------------------------------------------------------------------------------------
lesson.step("Occlusion: a grey square slid over the image")
classes = list(net.meta["classes"])
p_all = common.probabilities(net, x)[0]
label = classes.index("star") if "star" in classes else int(p_all.argmax())
name, p0 = classes[label], p_all[label]
size, stride = 8, (8 if QUICK else 2)
prob, best, _ = occlusion.sensitivity(net, x, label, size, stride)
zero, _, _ = occlusion.sensitivity(net, x, label, 0, 8)
print(f"p({name}) unoccluded: {p0:.3f}; with a size-0 square, max difference over "
      f"{zero.size} positions: {np.abs(zero - p0).max():.2g}")
i, j = np.unravel_index(prob.argmin(), prob.shape)
Q, crop = net.scales[0], net.crop
off = (Q - crop) // 2
bx = [c * Q / 64 - off for c in box64]  # the star's box in the view: rescale, then crop
cy, cx = i * stride + size / 2, j * stride + size / 2
on_star = bx[1] - size / 2 <= cy <= bx[3] + size / 2 and \
    bx[0] - size / 2 <= cx <= bx[2] + size / 2
print(f"{size}px square, stride {stride}: {prob.shape[0]}x{prob.shape[1]} positions; lowest "
      f"p({name}) {prob.min():.3f} with the square centred at ({cy:.0f}, {cx:.0f}); the "
      f"star's box is x [{bx[0]:.0f}, {bx[2]:.0f}), y [{bx[1]:.0f}, {bx[3]:.0f}): the square "
      f"{'covers part of' if on_star else 'is off'} the star there")
print("most probable class under the square, over the positions: "
      + ", ".join(f"{classes[c]} {np.mean(best == c):.0%}" for c in np.unique(best)))
lesson.say("""Where the square hides the star, the net loses it; where it hides
background, little changes. The most probable class at each position (ZFNet's Fig. 7e)
says what the net sees instead.""")

# -- 4 ------------------------------------------------------------------------------------
lesson.step("The first layer's kernels and their colour")
lesson.quote("The network has learned a variety of frequency- and orientation-selective "
             "kernels, as well as various colored blobs.", "sect. 6.1",
             source="Krizhevsky, Sutskever & Hinton, NIPS 2012")
m = filters.measure(model, net.meta)
from minivgg.model import VGG  # noqa: E402
d = model.definition()
fresh = filters.measure(VGG(**dict(d, init="kaiming")), net.meta)
print(f"{m['layer']}: {len(m['scores'])} kernels of {m['filters'].shape[2]}x"
      f"{m['filters'].shape[3]}; mean colourfulness trained {np.mean(m['scores']):.3f}, at "
      f"initialisation {np.mean(fresh['scores']):.3f} (independent random channels: "
      f"sqrt(2/3) = {filters.RANDOM_KERNEL:.3f})")
lesson.say("""Colourfulness is ||w - mean over R, G, B of w|| / ||w||: 0 for a kernel that
weighs the three colours alike (it sees brightness only), 1 for pure colour opponency
(red minus green), about 0.82 for a random kernel. Compare the trained number with the
initial one: the shapes' colours are drawn at random, so colour says nothing about the
class, and a minute of training leaves the kernels about as colourful as they started.
AlexNet saw its two towers split, one colour-agnostic and one colour-specific, on
ImageNet; `python -m minivgg.visualise filters CKPT` measures it per tower on a trained
AlexNet (the README has the numbers of one trained here).""")

plt = lesson.plt()
fig = plt.figure(figsize=(11, 5.2))
panels = [(v, f"the view ({crop}x{crop})"),
          (common.display(by_hand.transpose(1, 2, 0)), f"deconvnet: {rows[upto].name} map {k}"),
          (common.display(grad.transpose(1, 2, 0)), "the gradient, for comparison")]
for n, (im, title) in enumerate(panels):
    ax = fig.add_subplot(2, 4, n + 1)
    ax.imshow(im, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")
ax = fig.add_subplot(2, 4, 4)
ax.imshow(v)
ax.imshow(prob, extent=occlusion.cell_extent(*prob.shape, size, stride), cmap="jet", vmin=0,
          vmax=1, alpha=0.5)
ax.set_xlim(-0.5, crop - 0.5)
ax.set_ylim(crop - 0.5, -0.5)
ax.set_title(f"p({name}) under a {size}px grey square", fontsize=8)
ax.axis("off")
n = len(m["filters"])
for i in range(n):
    ax = fig.add_subplot(2, n, n + i + 1)
    ax.imshow(filters.kernel_image(m["filters"][i]), interpolation="nearest")
    ax.set_title(f"{m['scores'][i]:.2f}", fontsize=6)
    ax.axis("off")
fig.suptitle("Lesson 12: a projection, an occlusion map, the first layer's kernels "
             "(colourfulness above each)", fontsize=9)
lesson.save(fig, "12_what_the_network_sees.png")
lesson.done("""The deconvnet is backpropagation with the ReLUs rectifying the signal instead
of masking it: its unpooling and transposed filtering are the backward kernels. Occlusion
asks the classifier itself, one square at a time. `python -m minivgg.visualise` runs both,
and AlexNet's filters, top-5 panels and nearest neighbours, on any checkpoint.""")
