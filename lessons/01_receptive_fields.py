"""Lesson 1: receptive fields -- why stacks of 3x3 convolutions see far (paper sect. 2.3).

The receptive field of a unit is the patch of input pixels that can change it. This lesson
computes it with the recurrence every summary row of minivgg uses, prints it for every
configuration of Table 1, and then proves it: it backpropagates ONE output unit of a real
VGG through minivgg's own backward pass and measures where the input gradient is nonzero.

    python lessons/01_receptive_fields.py [--no-pause] [--device cpu|sim|cuda] [--out DIR]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _lesson import Lesson, sample_photo  # noqa: E402

lesson = Lesson(__doc__)  # sets the device before numba.cuda is imported

import numpy as np  # noqa: E402

from minivgg import backend, nn  # noqa: E402
from minivgg.model import VGG, plan  # noqa: E402
from minivgg.tape import Tensor  # noqa: E402

TINY = lesson.device.name == "sim"  # the simulator runs one Python thread per CUDA thread

# -- 1 ------------------------------------------------------------------------------------------
lesson.step("The claim")
lesson.quote("It is easy to see that a stack of two 3x3 conv. layers (without spatial pooling "
             "in between) has an effective receptive field of 5x5; three such layers have a "
             "7x7 effective receptive field.", "sect. 2.3")
lesson.say("""A 3x3 filter sees 3x3 pixels of its input. The next 3x3 layer sees 3x3 units
of the first, and neighbouring units of the first are one pixel apart, so it sees one pixel
more on each side: 5x5. Pooling does not add much by itself, but it spreads the units apart
(stride 2), so every later 3x3 layer adds twice as much.""")

# -- 2 ------------------------------------------------------------------------------------------
lesson.step("The recurrence")
lesson.say("""Walk the layers from the input with r (receptive field side, in input pixels)
and j (jump: input pixels between neighbouring units of the current layer), both 1 at the
input. A layer with a k x k window and stride s does

    r <- r + (k - 1) * j        j <- j * s""")
print()
r, j, rows = 1, 1, []
for name, k, s in [("conv 3x3", 3, 1), ("conv 3x3", 3, 1), ("conv 3x3", 3, 1),
                   ("pool 2x2/2", 2, 2), ("conv 3x3", 3, 1)]:
    r0, j0 = r, j
    r, j = r + (k - 1) * j, j * s
    rows.append((name, f"{r0} + ({k}-1)*{j0} = {r}", f"{j0}*{s} = {j}"))
lesson.table(("layer", "r", "j"), rows, ["<", "<", "<"])
lesson.say("""One 3x3 conv: 3. Two: 5. Three: 7 -- the paper's claim. After a pool the jump
is 2, and the next 3x3 conv adds 2 * 2 = 4 pixels instead of 2.""")

# -- 3 ------------------------------------------------------------------------------------------
lesson.step("Receptive field and jump, layer by layer, configurations A to E")
lesson.say("""From minivgg.model.plan (the rows of model.summary()). fc6 is the first FC
layer seen as a 7x7 conv over pool5 (sect. 3.2), so it adds (7 - 1) * 32 = 192 pixels.""")
print()
configs = ["A", "B", "C", "D", "E"]
plans = {c: {row.name: row for row in plan(c)} for c in configs}
cols = ["pool1", "pool2", "pool3", "pool4", "last conv", "pool5", "fc6"]
rows = []
for c in configs:
    p = plans[c]
    last_conv = [n for n in p if n.startswith("conv")][-1]
    cells = [f"{p[n].rf} / {p[n].jump}" for n in ("pool1", "pool2", "pool3", "pool4")]
    cells += [f"{last_conv}: {p[last_conv].rf}", f"{p['pool5'].rf} / {p['pool5'].jump}",
              f"{p['fc6'].rf} / {p['fc6'].jump}"]
    rows.append((c, *cells))
print("each cell: receptive field / jump, in input pixels")
lesson.table(("config",) + tuple(cols), rows)
print("\nConfiguration D, every conv and pool:")
d_rows = [row for row in plan("D") if row.kind in ("conv", "pool", "fc")]
lesson.table(("layer", "kernel", "stride", "output", "rf", "jump"),
             [(row.name, row.kernel, row.stride, "x".join(map(str, row.out_shape)),
               row.rf, row.jump) for row in d_rows if row.name not in ("fc7", "fc8")])
D = plans["D"]
print()
print(f"D conv5_3 receptive field: {D['conv5_3'].rf}")
print(f"D pool5 receptive field: {D['pool5'].rf}")
print(f"D fc6 receptive field: {D['fc6'].rf}")
lesson.say("""A unit of conv5_3 sees 196 x 196 pixels of a 224 x 224 crop -- nearly all of
it -- using only 3x3 filters. A unit of fc6 sees 404 pixels: more than the crop, which is
why, evaluated densely on a larger image (lesson 4), each score sees a 404-pixel window.""")


# -- 4 ------------------------------------------------------------------------------------------
def positive_(model, bias=0.1):
    """Make every weight positive, summing to 1 per output unit, and every bias positive:
    then every ReLU is on and a ramp stays a ramp (see step 4)."""
    for name, p in model.named_parameters():
        a = np.abs(backend.to_host(p.data)).astype(np.float64)
        if name.endswith("weight"):
            a /= a.reshape(a.shape[0], -1).sum(axis=1).reshape((-1,) + (1,) * (a.ndim - 1))
        else:
            a[:] = bias
        p.data[...] = backend.to_device(a)


def ramps(side, channels=3):
    """Two images: a linear ramp rising towards the top-left corner, and one rising towards
    the bottom-right (the 1.01 keeps any two pixels from tying)."""
    h, w = np.mgrid[0:side, 0:side].astype(np.float32)
    imgs = [4 * side - h - 1.01 * w, 4 * side + h + 1.01 * w]
    return np.stack([np.stack([im] * channels) for im in imgs])


def centre_window(rows, name, side):
    """(first, last) input pixel of the receptive field of the centre unit of layer `name`
    on a side x side input: first = p * jump - (sum of each conv's padding times the jump
    before it). Runs the layer arithmetic of model.plan's rows."""
    H, offset, j = side, 0, 1
    for r in rows:
        if r.kind in ("conv", "pool", "fc"):
            k = r.kernel
            offset += r.padding * j
            H = (H + 2 * r.padding - k) // r.stride + 1
            j *= r.stride
        if r.name == name:
            first = (H // 2) * j - offset
            return first, first + r.rf - 1, H


def measure(layers, rows, name, sides, channels=3):
    """Run the layers up to `name` on the smallest input side whose centre unit's receptive
    field lies inside the image (no padding in it), backpropagate a one-hot gradient at
    that unit (channel 0, both images), return the bounding box of the nonzero input
    gradient, the gradient (summed over images and channels) and the side."""
    side = next(s for s in sides if centre_window(rows, name, s)[0] >= 0
                and centre_window(rows, name, s)[1] < s)
    x = Tensor(backend.to_device(ramps(side, channels)), requires_grad=True)
    for layer_name, layer in layers:
        out = layer(x if layer_name == layers[0][0] else out)
        if layer_name == name:
            break
    P, Q = out.shape[2:]
    g = np.zeros(out.shape, dtype=np.float32)
    g[:, 0, P // 2, Q // 2] = 1.0  # d(unit)/d(unit) = 1, every other output 0
    out.backward(backend.to_device(g))
    grad = np.abs(backend.to_host(x.grad)).sum(axis=(0, 1))  # union over images, channels
    nz_r, nz_c = np.nonzero(grad.sum(axis=1))[0], np.nonzero(grad.sum(axis=0))[0]
    return (nz_r[0], nz_r[-1]), (nz_c[0], nz_c[-1]), grad, side


lesson.step("Proof: backpropagate one unit and measure what it sees")
lesson.say("""The receptive field is the set of input pixels whose change can change the
unit, so the gradient of that one unit with respect to the input is nonzero exactly there
-- if nothing zeroes it on the way. Two things do: a ReLU that is off passes no gradient,
and a max-pool passes it to only ONE of its four inputs. So we make the net positive (every
weight > 0, summing to 1 per unit; biases 0.1: every ReLU is on) and feed two ramps, one rising
towards the top-left corner, one towards the bottom-right. A positive conv of a ramp is a
ramp, so in the first image every max-pool picks its top-left input and the gradient runs
to the top-left corner of the receptive field; in the second, to the bottom-right. We take the centre unit, away from the border, so
zero padding clips nothing. The bounding box of the nonzero gradient must be r x r.""")
print()

if TINY:
    lesson.say("""On the simulator every thread is a Python thread: we prove the paper's
    claim on a 2-layer stack of 3x3 convs (1 channel) and leave the D-sized proof to
    --device cpu or cuda.""")
    rng = np.random.default_rng(0)
    stack = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, rng=rng), nn.ReLU(),
                          nn.Conv2d(1, 1, 3, padding=1, rng=rng))
    positive_(stack)
    layers = [("conv1_1", stack[0]), ("relu1_1", stack[1]), ("conv1_2", stack[2])]
    rows = plan("D")[:3]  # the same three layers
    checks, sides, channels = ["conv1_2"], [7], 1
else:
    model = VGG("D", num_classes=10, width=1 / 32, fc_width=16, input_size=224, dropout=0)
    positive_(model)
    dense = model.dense()
    rows = model.summary()
    layers = list(zip([r.name for r in rows if r.index.startswith("features.")],
                      dense.features.layers))
    layers += list(zip([r.name for r in rows if r.index.startswith("classifier.")],
                       dense.classifier.layers))
    checks = ["conv1_2", "pool1", "conv2_2", "conv3_3", "conv4_3", "conv5_3", "pool5", "fc6"]
    sides, channels = list(range(32, 448, 32)), 3
    lesson.say("""Net: configuration D at width 1/32 (channels 2..16: the same layers, so
    the same receptive fields as the full net) and its dense view (fc6 as a 7x7 conv). Each
    layer gets the smallest image (a multiple of 32) whose centre unit's field fits inside:
    fc6 needs 416 x 416.""")
print()
formula = {r.name: r.rf for r in rows}
result_rows, grads = [], {}
for name in checks:
    (r0, r1), (c0, c1), grad, side = measure(layers, rows, name, sides, channels)
    h, w = r1 - r0 + 1, c1 - c0 + 1
    grads[name] = (grad, r0, c0)
    result_rows.append((name, formula[name], f"{side} x {side}", f"{h} x {w}",
                        f"rows {r0}..{r1}, cols {c0}..{c1}",
                        "yes" if h == w == formula[name] else "NO"))
lesson.table(("layer", "formula r", "image", "measured support", "where", "match"),
             result_rows)
print()
for name, r, _, hw, _, _ in result_rows:
    print(f"{name} measured support: {hw} (formula {r})")

if not TINY:
    print()
    lesson.say("""And with the paper's random weights (N(0, 0.01^2)) and a random image? The
    same pool5 unit's gradient need not reach the edges of its receptive field: ReLUs that
    are off and max-pools that picked another input cut the paths there. The receptive
    field is what a unit CAN see; one gradient shows what it looked at in this image.""")
    rnd = VGG("D", num_classes=10, width=1 / 32, fc_width=16, input_size=224, dropout=0)
    rng = np.random.default_rng(1)
    xr = Tensor(backend.to_device(rng.standard_normal((1, 3, 256, 256))), requires_grad=True)
    out = rnd.features(xr)
    g = np.zeros(out.shape, dtype=np.float32)
    g[0, 0, 4, 4] = 1.0
    out.backward(backend.to_device(g))
    gr = np.abs(backend.to_host(xr.grad)).sum(axis=(0, 1))
    nz_r, nz_c = np.nonzero(gr.sum(axis=1))[0], np.nonzero(gr.sum(axis=0))[0]
    print(f"random net, random image: pool5 unit's gradient spans "
          f"{nz_r[-1] - nz_r[0] + 1} x {nz_c[-1] - nz_c[0] + 1} pixels (receptive field 212)")

# -- 5 ------------------------------------------------------------------------------------------
lesson.step("Figure: the nested receptive fields of D over an image")
plt = lesson.plt()
fig, axes = plt.subplots(1, 2, figsize=(13, 6.2))
photo = sample_photo(224)
h0, w0 = (photo.shape[0] - 224) // 2, (photo.shape[1] - 224) // 2
photo = photo[h0:h0 + 224, w0:w0 + 224]
ax = axes[0]
ax.imshow(photo, extent=(0, 224, 224, 0))
cx = cy = 112
colours = plt.cm.viridis(np.linspace(0, 0.95, 7))
for colour, name in zip(colours, ["conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3",
                                  "pool5", "fc6"]):
    r = D[name].rf
    ax.add_patch(plt.Rectangle((cx - r / 2, cy - r / 2), r, r, fill=False, lw=2,
                               ls="--" if r > 224 else "-", color=colour,
                               label=f"{name}: {r}x{r}"))
ax.set_xlim(-100, 324)
ax.set_ylim(324, -100)
ax.set_title("D: what one unit of each layer sees (224x224 crop)")
ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
ax = axes[1]
name = checks[-2] if not TINY else checks[-1]
grad, r0, c0 = grads[name]
ax.imshow(np.log10(grad + 1e-12), cmap="magma", vmin=np.log10(grad[grad > 0].min()))
rf = formula[name]
ax.add_patch(plt.Rectangle((c0 - 0.5, r0 - 0.5), rf, rf, fill=False, color="cyan", lw=1.5,
                           label=f"formula: {rf}x{rf}"))
ax.set_title(f"log10 |d unit / d input|: centre unit of {name}\n(sum over the 2 ramp images)")
ax.legend(loc="lower left", fontsize=8)
lesson.save(fig, "01_receptive_fields.png")

lesson.done("""What it means: depth buys reach. Five blocks of 3x3 convs and 2x2 pools see
212 pixels at pool5, and the dense fc6 404 -- with the small filters and extra
non-linearities that lesson 2 counts.""")
