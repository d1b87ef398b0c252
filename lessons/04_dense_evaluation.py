"""Lesson 4: dense evaluation -- the FC layers as convolutions (paper sect. 3.2).

FC1 becomes a 7x7 conv and FC2, FC3 1x1 convs, sharing the same weight arrays
(model.dense()). At the training size the outputs are identical; on a larger image the
net returns a map of class scores, one per 224-pixel window, 32 pixels apart, whose
average is the image's scores.

With --weights CKPT (say the real VGG-16, made by `python -m minivgg.convert`) the lesson
runs that net instead of a small untrained one, with the checkpoint's preprocessing, and
names the classes it sees in the photograph.

    python lessons/04_dense_evaluation.py [--no-pause] [--device cpu|sim|cuda] [--out DIR]
                                          [--weights CKPT]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _lesson import Lesson, sample_photo  # noqa: E402

lesson = Lesson(__doc__, add_arguments=lambda p: p.add_argument(
    "--weights", metavar="CKPT", help="a trained or converted checkpoint to run instead of "
                                      "the small untrained net (cpu or cuda device)"))

import numpy as np  # noqa: E402

from minivgg import backend, ops  # noqa: E402
from minivgg.errors import UserError  # noqa: E402
from minivgg.evaluate import load_net, preprocess  # noqa: E402
from minivgg.model import VGG  # noqa: E402
from minivgg.tape import Tensor, no_grad  # noqa: E402

WEIGHTS = lesson.args.weights
if WEIGHTS and lesson.device.name == "sim":
    sys.exit("error: --weights needs --device cpu or cuda: the simulator runs one Python "
             "thread per CUDA thread, far too slow for a real VGG")
TINY = lesson.device.name == "sim"
MEAN_RGB = np.array([123.68, 116.78, 103.94], np.float32)  # ImageNet's, as in the paper's nets
if WEIGHTS:
    try:
        NET = load_net(WEIGHTS)  # eval mode, its preprocessing and classes checked
    except UserError as e:
        sys.exit(f"error: {e}")
META = NET.meta if WEIGHTS else dict(mean_rgb=MEAN_RGB.tolist())


def as_input(img):
    """HxWx3 uint8 -> (1, 3, H, W) float32 Tensor on the device, preprocessed as the
    weights expect (evaluate.preprocess; the small net: mean RGB subtracted)."""
    a = preprocess(img, META).transpose(2, 0, 1)[None]
    return Tensor(backend.to_device(np.ascontiguousarray(a)))


def class_name(k):
    return f"{k} ({META['classes'][k]})" if WEIGHTS else f"{k}"


def host(t):
    return backend.to_host(t.data)


# -- 1 ------------------------------------------------------------------------------------------
lesson.step("The claim")
lesson.quote("the fully-connected layers are first converted to convolutional layers (the "
             "first FC layer to a 7x7 conv. layer, the last two FC layers to 1x1 conv. "
             "layers). The resulting fully-convolutional net is then applied to the whole "
             "(uncropped) image. The result is a class score map with the number of channels "
             "equal to the number of classes, and a variable spatial resolution, dependent on "
             "the input image size. Finally, to obtain a fixed-size vector of class scores for "
             "the image, the class score map is spatially averaged (sum-pooled).", "sect. 3.2")

if WEIGHTS:
    m_ = NET.model
    cfg = dict(config=m_.config, width=m_.width, fc_width=m_.fc_width,
               num_classes=m_.num_classes, input_size=m_.input_size)
    lesson.say(f"""The net of {WEIGHTS}: config {m_.config}, {m_.num_parameters():,}
    parameters, {m_.num_classes} classes, input {m_.input_size}, trained: its predictions
    mean something.""")
elif TINY:
    cfg = dict(config="A", width=1 / 64, fc_width=8, num_classes=4, input_size=64)
    lesson.say("""On the simulator we keep it tiny: net A at width 1/64 for 64-pixel inputs
    (its last feature map is 2x2, so FC1 becomes a 2x2 conv), and we feed the classifier
    feature maps directly -- the feature layers are convolutions already.""")
else:
    cfg = dict(config="A", width=1 / 16, fc_width=64, num_classes=10, input_size=224)
    lesson.say("""A small model that runs in seconds on a CPU: net A at width 1/16 (channels
    4..32), FC layers of 64, 10 classes, input 224 -- so FC1 really becomes a 7x7 conv.
    He initialisation, untrained: the mechanics, not the predictions, are the point.""")
model = NET.model if WEIGHTS else VGG(**cfg, dropout=0.5, init="kaiming", seed=0).eval()
dense = model.dense()
s = model.feature_side

# -- 2 ------------------------------------------------------------------------------------------
lesson.step("The conversion: the same numbers, read as conv filters")
lesson.say(f"""FC1's weight is (out, C*s*s) with s = {s}, the side of the last feature map;
flatten ordered its inputs as (c, h, w), so the same array read as (out, C, s, s) is a conv
filter. model.dense() builds those views -- nothing is copied.""")
rows = []
for i, name in ((0, "fc6"), (3, "fc7"), (6, "fc8")):
    fc, conv = model.classifier[i], dense.classifier[i]
    shared = np.shares_memory(backend.to_host(fc.weight.data), backend.to_host(conv.weight.data)) \
        if lesson.device.name != "cuda" else \
        fc.weight.data.data.ptr == conv.weight.data.data.ptr
    k = conv.weight.shape[2]
    rows.append((name, str(tuple(fc.weight.shape)), str(tuple(conv.weight.shape)),
                 f"{k}x{k} conv", "yes" if shared else "no"))
lesson.table(("layer", "FC weight", "conv weight", "becomes", "same memory"), rows)

# -- 3 ------------------------------------------------------------------------------------------
lesson.step(f"At the training size ({cfg['input_size']}) both give the same scores")
rng = np.random.default_rng(0)
with no_grad():
    if TINY:
        C = model.features[-3].weight.shape[0]
        f = Tensor(backend.to_device(np.abs(rng.standard_normal((2, C, s, s)))))
        fc_out = host(model.classifier(ops.flatten(f)))
        dense_out = host(dense.classifier(f))
    else:
        n = cfg["input_size"]
        x = Tensor(backend.to_device(rng.uniform(-120, 120, (2, 3, n, n))))
        fc_out = host(model(x))
        dense_out = host(dense(x))
print(f"\nFC net: {fc_out.shape}; dense net: {dense_out.shape}")
diff = np.abs(fc_out - dense_out[:, :, 0, 0]).max()
print(f"max abs difference at input_size: {diff:.2e} (scores of size ~{np.abs(fc_out).max():.2g})")
lesson.say("""Equal up to float32 rounding: the sums are the same, in another order.""")

# -- 4 ------------------------------------------------------------------------------------------
lesson.step("A larger image gives a class score map")
lesson.say(f"""Five pools divide by 32, and the {s}x{s} conv needs {s} positions: an input
side Q gives floor(Q / 32) - {s - 1} scores, i.e. (Q - {cfg['input_size']}) / 32 + 1 for Q a multiple of
32 -- one score per {cfg['input_size']}-pixel window, the windows 32 pixels apart.""")
rows = []
sides = [64, 96, 128] if TINY else [cfg["input_size"] + 32 * k for k in (0, 1, 3, 5)]
with no_grad():
    for Q in sides:
        if TINY:  # the feature map a Q-pixel input would give
            fs = Q // 32
            out = dense.classifier(Tensor(backend.to_device(np.ones((1, C, fs, fs)))))
        else:
            out = dense(Tensor(backend.to_device(np.zeros((1, 3, Q, Q)))))
        formula = (Q - cfg["input_size"]) // 32 + 1
        rows.append((Q, f"{out.shape[2]} x {out.shape[3]}", formula,
                     "yes" if out.shape[2] == out.shape[3] == formula else "NO"))
        print(f"score map size for {Q}x{Q}: {out.shape[2]} x {out.shape[3]} "
              f"(formula (Q - {cfg['input_size']})/32 + 1 = {formula})")
print()
lesson.table(("input Q", "score map", "formula", "match"), rows)

# -- 5 ------------------------------------------------------------------------------------------
lesson.step("A real photograph: score map, then its average")
if TINY:
    lesson.say("""(On the simulator: a random 4x5 feature map stands for the photo.)""")
    photo = sample_photo(64)
    fmap = Tensor(backend.to_device(np.abs(rng.standard_normal((1, C, 4, 5)))))
    with no_grad():
        smap = dense.classifier(fmap)
        scores = ops.global_avg_pool(smap)
    H, W = 4 * 32, 5 * 32
else:
    Q = cfg["input_size"] + 160  # 384 for 224
    photo = sample_photo(Q)  # Grace Hopper, smaller side rescaled to Q
    H, W = photo.shape[:2]
    with no_grad():
        smap = dense(as_input(photo))
        scores = ops.global_avg_pool(smap)  # the spatial mean: sect. 3.2's sum-pooling
    P, Qm = smap.shape[2:]
    n = cfg["input_size"]
    print(f"\nphoto {H}x{W} (H x W; smaller side Q = {Q}) -> score map {P} x {Qm} "
          f"(formula: ({H} - {n})/32 + 1 = {(H - n) // 32 + 1}, "
          f"floor(({W} - {n})/32) + 1 = {(W - n) // 32 + 1})")
    print(f"photo score map size: {P} x {Qm}")
m = host(smap)[0]
sc = host(scores)[0]
shown = np.round(sc, 3) if len(sc) <= 10 else f"{np.round(sc[:5], 3)} ... ({len(sc)} classes)"
print(f"image scores = mean of the map over its {m.shape[1] * m.shape[2]} positions: {shown}")
print(f"check against numpy mean: max abs difference {np.abs(sc - m.mean(axis=(1, 2))).max():.2e}")
top = int(np.argmax(sc))
print(f"top class: {class_name(top)}")
if WEIGHTS:
    p = np.exp(sc - sc.max()) / np.exp(sc - sc.max()).sum()
    print("top 5 (soft-max of the averaged scores): " + ", ".join(
        f"{META['classes'][k]} {100 * p[k]:.1f}%" for k in np.argsort(-p)[:5]))

if not TINY:
    lesson.say(f"""\nIs score (i, j) the score of the {n} crop at (32 i, 32 j)? Nearly, not
    exactly: the crop's feature maps are padded with zeros at the crop's border, while in
    the dense net that padding comes from the neighbouring image. The paper: "multi-crop
    evaluation is complementary to dense evaluation due to different convolution boundary
    conditions" (sect. 3.2).""")
    rows = []
    with no_grad():
        for (i, j) in [(0, 0), (P // 2, Qm // 2), (P - 1, Qm - 1)]:
            crop = photo[32 * i:32 * i + n, 32 * j:32 * j + n]
            c_scores = host(model(as_input(crop)))[0]
            rows.append((f"({i}, {j})", f"{np.abs(c_scores - m[:, i, j]).max():.3g}",
                         f"{np.abs(m[:, i, j]).max():.3g}"))
    lesson.table(("map cell", "max |crop - dense|", "max |score|"), rows)

# -- 6 ------------------------------------------------------------------------------------------
lesson.step("Figure: the score map over the photograph")
plt = lesson.plt()
fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
ax = axes[0]
ax.imshow(photo[:H, :W] if not TINY else photo, extent=(0, W, H, 0))
n_p, n_q = m.shape[1:]
win = cfg["input_size"]
for (i, j), colour in zip([(0, 0), (n_p - 1, n_q - 1), (n_p // 2, 0)], ["cyan", "yellow", "lime"]):
    ax.add_patch(plt.Rectangle((32 * j, 32 * i), win, win, fill=False, lw=2, color=colour))
    ax.plot(32 * j + win / 2, 32 * i + win / 2, "o", color=colour)
ax.set_title(f"each score sees a {win}-px window (three shown);\nwindow centres are 32 px apart")
ax.set_xlim(0, W)
ax.set_ylim(H, 0)
ax = axes[1]
ax.imshow(photo[:H, :W] if not TINY else photo, extent=(0, W, H, 0))
off = win / 2 - 16  # map cell (i, j) is centred at (32 i + win/2, 32 j + win/2)
im = ax.imshow(m[top], extent=(off, off + 32 * n_q, off + 32 * n_p, off), alpha=0.6,
               cmap="inferno", interpolation="nearest")
ax.set_xlim(0, W)
ax.set_ylim(H, 0)
fig.colorbar(im, ax=ax, fraction=0.04)
ax.set_title(f"score map of class {class_name(top)}: {n_p} x {n_q} "
             f"({'trained' if WEIGHTS else 'untrained'} net);\n"
             f"its mean is the image's score {sc[top]:.3f}")
lesson.save(fig, "04_dense_evaluation.png")

lesson.done("""What it means: no crops, no re-computation -- one pass over the whole image
scores every window at once, and the map's average is the image's prediction (the paper
also averages with the horizontally flipped image).""")
