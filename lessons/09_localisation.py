"""Lesson 9: localisation -- a box regressed by a ConvNet, then merged (appendix A).

One shapes image through the whole of appendix A: the box as the net's 4-number target
(centre x, centre y, width, height in crop units), through rescale, crop and flip; the
Euclidean loss and its per-class gradient; a map of boxes predicted densely over the
image; OverFeat's greedy merging, merge by merge; the IoU > 0.5 test.

The net: with --weights LOC.npz (from `python -m minivgg.localise train`) and optionally
--classifier CLS.npz, trained nets; else a small single-class regressor trained here for
half a minute on freshly drawn shapes (--quick: a few steps, the same code, no result).

    python lessons/09_localisation.py [--quick] [--weights LOC --classifier CLS]
                                      [--no-pause] [--device cpu|sim|cuda] [--out DIR]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _lesson import Lesson  # noqa: E402


def _flags(p):
    p.add_argument("--quick", action="store_true", help="a few training steps only")
    p.add_argument("--weights", metavar="LOC", help="a localisation checkpoint")
    p.add_argument("--classifier", metavar="CLS", help="its classifier (rates the boxes)")


lesson = Lesson(__doc__, add_arguments=_flags)

import numpy as np  # noqa: E402

from minivgg import backend, data, ops  # noqa: E402
from minivgg.data import boxes as bx  # noqa: E402
from minivgg.data.shapes import SHAPE_CLASSES, render_shape  # noqa: E402
from minivgg.localise import merge, nets as ln  # noqa: E402
from minivgg.tape import Tensor  # noqa: E402

CROP, S = 32, 64
KERNEL_DEVICE = lesson.device  # the loss of step 3 runs here (the simulator's kernels too)
backend.set_device("cpu" if lesson.device.name == "sim" else lesson.device.name)
rng = np.random.default_rng(9)


def fmt(a):
    return "[" + ", ".join(f"{v:.4f}" for v in np.asarray(a, np.float64)) + "]"


img, gt, _ = render_shape("star", rng, 64, d=44)
gt = np.array(gt, np.float64)

# -- 1 ------------------------------------------------------------------------------------
lesson.step("The claim")
lesson.quote("we use a very deep ConvNet, where the last fully connected layer predicts the "
             "bounding box location instead of the class scores. A bounding box is "
             "represented by a 4-D vector storing its center coordinates, width, and height.",
             "appendix A.1")
lesson.say(f"""A 64 x 64 shapes image of a star; its box, in pixel edges: {gt.tolist()}
(x0, y0, x1, y1: the star covers [x0, x1) x [y0, y1)).""")

# -- 2 ------------------------------------------------------------------------------------
lesson.step("The target: a box in crop units, through rescale, crop and flip")
scaled = data.rescale(img, S)  # already 64: the factor is 1 here, any other S scales the box
box = bx.rescale_box(gt, img.shape[:2], scaled.shape[:2])
y, x = bx.crop_offsets(box, *scaled.shape[:2], CROP, rng, min_visible=0.5)
in_crop = bx.crop_box(box, y, x)
flipped = bx.hflip_box(in_crop, CROP)
code, code_flipped = bx.encode(in_crop, CROP), bx.encode(flipped, CROP)
lesson.table(["", "x0", "y0", "x1", "y1"],
             [("in the image", *box), (f"in the crop at (y, x) = ({y}, {x})", *in_crop),
              ("flipped", *np.round(flipped, 2))])
print(f"code (cx, cy, w, h) = {fmt(code)}")
print(f"flipped code        = {fmt(code_flipped)}  (only cx changes sign)")
print(f"decoded back: {bx.decode(code, CROP).tolist()}")
lesson.say("""The centre is measured from the crop's centre and everything is divided by
the crop side: a box in the middle of the window codes as (0, 0, w, h), the same at
every training and test scale. The crop was drawn among those showing at least half of
the object ("whole" targets may reach outside the crop: a window seeing part of the star
still predicts all of it).""")

# -- 3 ------------------------------------------------------------------------------------
lesson.step("The Euclidean loss, and per-class regression's gradient")
lesson.quote("we replace the logistic regression objective with a Euclidean loss, which "
             "penalises the deviation of the predicted bounding box parameters from the "
             "ground-truth.", "appendix A.1")
pred = np.random.default_rng(1).normal(0, 0.3, (2, 4 * 3)).astype(np.float32)  # PCR, 3 classes
target = np.stack([code, code_flipped]).astype(np.float32)
labels = np.array([2, 0], np.int32)
by_hand = sum(0.5 * np.sum((pred[n, 4 * c:4 * c + 4] - target[n]) ** 2)
              for n, c in enumerate(labels)) / 2
backend.set_device(KERNEL_DEVICE.name)
p = Tensor(backend.to_device(pred), requires_grad=True)
loss = ops.euclidean_loss(p, target, labels)
loss.backward()
grad = backend.to_host(p.grad)
backend.set_device("cpu" if lesson.device.name == "sim" else lesson.device.name)
print(f"loss by hand {by_hand:.6f}, ops.euclidean_loss on {KERNEL_DEVICE.name} "
      f"{backend.scalar(loss.data):.6f}: difference {abs(by_hand - backend.scalar(loss.data)):.1e}")
other = np.delete(grad, np.r_[4 * labels[0]:4 * labels[0] + 4], axis=1)[0]
print(f"PCR gradient outside image 0's class columns: max |.| = {np.abs(other).max():g}")
print(f"gradient in its class's 4 columns: {fmt(grad[0, 8:12])} = (pred - target) / N: "
      f"{fmt((pred[0, 8:12] - target[0]) / 2)}")


# -- 4 ------------------------------------------------------------------------------------
def quick_regressor(steps, batch=16):
    """A small SCR net (VGG A, width 1/16) trained on freshly drawn shapes with their boxes,
    on the cpu: the loader's own augmentation of boxes (BoxLoader), lr 0.01 with momentum."""
    from minivgg.model import VGG
    from minivgg.optim import SGD

    class Drawn:  # a dataset with boxes, drawn on the fly
        def __init__(self, n):
            r = np.random.default_rng(0)
            shots = [render_shape(int(r.integers(10)), r, 64) for _ in range(n)]
            self.images = [s[0] for s in shots]
            self.boxes = np.array([s[1] for s in shots], np.float64)

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.images[i], 0

    ds = Drawn(batch * min(steps, 100))
    loader = data.BoxLoader(ds, batch, True, crop=CROP, scale=S, mean_rgb=[128] * 3,
                            std_rgb=[64] * 3, workers=0)
    model = VGG("A", 4, width=1 / 16, fc_width=32, input_size=CROP, dropout=0,
                init="kaiming", seed=0)
    opt, done = SGD(model.named_parameters(), 0.01, 0.9, 5e-4), 0
    for epoch in range(steps):
        for xb, yb in loader.batches(epoch):
            opt.zero_grad()
            out = ops.euclidean_loss(model(Tensor(backend.to_device(xb))), yb[:, 1:],
                                     np.zeros(len(yb), np.int32))
            out.backward()
            opt.step()
            done += 1
            if done == steps:
                meta = dict(mean_rgb=[128] * 3, std_rgb=[64] * 3, classes=SHAPE_CLASSES,
                            settings=dict(task="localisation", regression="scr", scale=S))
                return ln.Net("quick", model.eval(), meta, [S]), backend.scalar(out.data)


lesson.step("A map of boxes over the whole image")
if lesson.args.weights:
    net = ln.load_localisers([lesson.args.weights], [S])[0]
    lesson.say(f"The localisation net of {lesson.args.weights} at Q = {S}.")
else:
    steps = 3 if lesson.args.quick else 2000
    net, last = quick_regressor(steps)
    print(f"trained a single-class regressor for {steps} steps: last loss {last:.4f}")
label = SHAPE_CLASSES.index("star")
g = ln.group_of(net, label)
dense = ln.dense_boxes(net, img, S)[g]  # (P, R, 4)
grid = ln.grid_boxes(net, img, S, 5)[g]  # (25, 4)
print(f"dense view at Q = {S}: {dense.shape[0]} x {dense.shape[1]} positions, 32 px apart")
lesson.table(["position", "x0", "y0", "x1", "y1", "IoU"],
             [(f"({p_}, {r_})", *np.round(dense[p_, r_], 1), f"{data.iou(dense[p_, r_], gt):.2f}")
              for p_ in range(dense.shape[0]) for r_ in range(dense.shape[1])])
lesson.say("""Each position is the net applied to a 32 x 32 window (sect. 3.2), but the
dense view's windows see their neighbours where a training crop saw zero padding; with
32-pixel crops every position is such a border. A 5 x 5 grid of real crops is the
sliding window the dense view stands for:""")
print(f"5 x 5 grid of crops: {len(grid)} boxes, mean IoU with the truth "
      f"{np.mean(data.iou(grid, gt)):.2f} (dense: {np.mean(data.iou(dense, gt)):.2f})")

# -- 5 ------------------------------------------------------------------------------------
lesson.step("Greedy merging, merge by merge (OverFeat sect. 4.3)")
if lesson.args.classifier:
    from minivgg.localise.protocols import grid_scores
    cls = ln.load_classifiers([lesson.args.classifier], net.meta["classes"])
    scores = grid_scores(cls, img, S, 5, CROP)[label]
    lesson.say("Each box is rated by the classifier's probability of 'star' on its window.")
else:
    scores = np.ones(len(grid))
    lesson.say("No classifier given: every box rated 1, so a group's score is its size.")
trace = []
merged, rated, members = merge.greedy_merge(grid, scores, trace=trace)
for k, (i, j, d) in enumerate(trace[:8]):
    print(f"merge {k + 1}: groups {i} and {j}, match score {d:.3f} <= {merge.THRESHOLD}")
print(f"... {len(trace)} merges; {len(merged)} groups left, sizes "
      f"{sorted((len(m) for m in members), reverse=True)[:6]}")
best, best_score = merge.best_box(grid, scores)
print(f"best group: box {np.round(best, 1).tolist()}, score {best_score:.2f}")

# -- 6 ------------------------------------------------------------------------------------
lesson.step("The IoU test")
lesson.quote("the bounding box prediction is deemed correct if its intersection over union "
             "ratio with the ground-truth bounding box is above 0.5.", "appendix A.2")
centre = ln.centre_boxes(net, [img], [label], S)[0]
for name, b in (("central crop (protocol 1)", centre), ("merged 5 x 5 grid", best)):
    v = float(data.iou(b, gt))
    print(f"IoU test, {name}: IoU {v:.3f} -> {'correct' if v > 0.5 else 'wrong'}")

plt = lesson.plt()
fig, ax = plt.subplots(1, 3, figsize=(12, 4.2))
for a, title in zip(ax, ("truth and the training crop", "boxes of the 5 x 5 grid",
                         "merged box (red) and truth (green)")):
    a.imshow(img, extent=(0, 64, 64, 0))
    a.set_title(title, fontsize=9)
    a.axis("off")


def rect(a, b, colour, width=1.5):
    a.add_patch(plt.Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, color=colour,
                              linewidth=width))


rect(ax[0], gt, "lime", 2)
rect(ax[0], [x, y, x + CROP, y + CROP], "white")
for b in grid:
    rect(ax[1], b, "yellow", 0.8)
rect(ax[2], gt, "lime", 2)
rect(ax[2], best, "red", 2)
for a in ax:
    a.set_xlim(-16, 80)
    a.set_ylim(80, -16)
lesson.save(fig, "09_localisation.png")
lesson.done("""A box is four numbers the last layer regresses with a Euclidean loss; PCR
trains only the true class's four; at test time many windows each predict a box, the
close ones are averaged, and the group with the most class score wins.""")
