"""What is specific to a task, in one small object that the training loop calls.

The loop (trainer.py) is the same for every task: batches in, a forward pass, a loss, a
backward pass, an SGD step; a validation pass without gradients; checkpoints of the best
epoch. A task supplies the rest:

    targets(labels)               the loader's labels -> what the loss compares outputs with
    loss(outputs, targets)        a one-element loss Tensor
    totals(train) / add(...)      running sums of the task's measures, kept on the device,
                                  so a step never waits for the host
    measures(totals, n, split)    an epoch's numbers as host floats (the one sync, at the end)
    progress(loss, totals, n)     the progress bar's numbers at a logging point (syncs)
    score(row)                    what "best" means, higher is better
    describe(row) / best(row)     the task's part of the printed lines
    plot(ax, rows)                the task's panel in metrics.png
    dataset, loader               the data set and loader classes (image folders, or with
                                  boxes), outputs: the last layer's width, initialise:
                                  how --init-from fills the net (finetune.initialise)

Classification is VGG's task (sect. 3.1 and 4): class labels, soft-max cross-entropy,
top-1 and top-5 error; the weighted losses of auxiliary classifiers (GoogLeNet in training)
are added here, not in the loop. Localisation (the paper's appendix A) regresses a bounding
box with a Euclidean loss, with the same loop.
"""
from dataclasses import dataclass

import numpy as np

from minivgg import backend, data, finetune, ops
from minivgg.errors import UserError
from minivgg.metrics import top_k_correct


class Classification:
    """Labels in [0, classes), soft-max cross-entropy, top-1 and top-5 error."""

    name = "classification"
    dataset, loader = data.ImageFolder, data.Loader
    initialise = staticmethod(finetune.initialise)

    def __init__(self, classes, where="the training set"):
        # One class gives a soft-max of constant 1: loss 0, gradient 0, error 0% -- a run
        # that "succeeds" while learning nothing. Refuse it rather than warn.
        if len(classes) < 2:
            found = f"one ({classes[0]})" if classes else "none"
            raise UserError(f"a classifier needs at least two classes: {where} has {found}")
        self.classes = list(classes)
        self.outputs = len(self.classes)

    def targets(self, labels):
        """Host int32 labels: the loss op checks their range on the host (free) and
        copies them to the device itself, keeping the copy as loss.labels."""
        return np.asarray(labels, dtype=np.int32)

    def loss(self, outputs, targets):
        """Soft-max cross-entropy of the logits. Logits that carry auxiliary classifiers'
        (outputs.aux: [(weight, logits)], GoogLeNet in training) give the objective of
        Szegedy et al. sect. 5, the main loss plus each auxiliary loss times its weight
        (0.3); that sum is what backward runs on, and it keeps the main classifier's loss
        as `.main` (what the measures count: comparable with validation, where the heads
        are not run) and its probabilities and labels (.probs, .labels: top-k)."""
        main = ops.softmax_cross_entropy(outputs, targets)
        aux = getattr(outputs, "aux", ())
        if not aux:
            return main
        total = main
        for weight, logits in aux:
            total = ops.add(total, ops.scale(ops.softmax_cross_entropy(logits, targets),
                                             weight))
        total.main, total.probs, total.labels = main, main.probs, main.labels
        return total

    def totals(self, train):
        """Zeroed device sums: the loss times the batch size, and correct counts (top-5
        on validation only: training reports top-1 accuracy)."""
        xp = backend.xp()
        sums = dict(loss=xp.zeros((), np.float32), top1=xp.zeros((), np.int64))
        if not train:
            sums["top5"] = xp.zeros((), np.int64)
        return sums

    def add(self, totals, loss, targets):
        """Add one batch to the device sums (device operations only: no host sync). The
        loss counted is the main classifier's (loss.main when auxiliary losses were added)."""
        main = getattr(loss, "main", loss)
        totals["loss"] = totals["loss"] + main.data[0] * len(targets)
        for key in totals:
            if key.startswith("top"):  # on the device: the probabilities and loss.labels
                totals[key] = totals[key] + top_k_correct(loss.probs, loss.labels, int(key[3:]))

    def measures(self, totals, n, split):
        """Host floats for metrics.jsonl: train_loss, train_accuracy; val_loss,
        val_top1_error, val_top5_error."""
        host = {k: backend.scalar(v) for k, v in totals.items()}
        if split == "train":
            return dict(train_loss=host["loss"] / n, train_accuracy=host["top1"] / n)
        return dict(val_loss=host["loss"] / n, val_top1_error=1 - host["top1"] / n,
                    val_top5_error=1 - host["top5"] / n)

    def progress(self, loss, totals, n):
        main = getattr(loss, "main", loss)
        return dict(loss=f"{backend.scalar(main.data):.3f}",
                    acc=f"{backend.scalar(totals['top1']) / n:.3f}")

    def score(self, row):
        return 1 - row["val_top1_error"]

    def describe(self, r):
        return (f"loss {r['train_loss']:.4f}  train acc {100 * r['train_accuracy']:5.1f}%  "
                f"val top-1 err {100 * r['val_top1_error']:5.1f}%  "
                f"top-5 err {100 * r['val_top5_error']:5.1f}%")

    def best(self, r):
        return (f"best val top-1 error {100 * r['val_top1_error']:.1f}% (accuracy "
                f"{100 * (1 - r['val_top1_error']):.1f}%), top-5 error "
                f"{100 * r['val_top5_error']:.1f}%, at epoch {r['epoch']}")

    def plot(self, ax, rows):
        ep = [r["epoch"] for r in rows]
        ax.plot(ep, [100 * (1 - r["train_accuracy"]) for r in rows], label="train")
        ax.plot(ep, [100 * r["val_top1_error"] for r in rows], label="val")
        ax.set_title("top-1 error (%)")
        ax.legend()


@dataclass
class BoxTargets:
    """A batch's targets for localisation, on the host: labels (N,) int32, the regression
    groups (N,) int32 (the labels for PCR, zeros for SCR) and box codes (N, 4) float32."""
    labels: np.ndarray
    groups: np.ndarray
    boxes: np.ndarray

    def __len__(self):
        return len(self.labels)


REGRESSIONS = ("scr", "pcr")
BOX_CODE = ("cx", "cy", "w", "h")


class Localisation:
    """Appendix A.1: a box per image, regressed with the Euclidean loss; measured by IoU.

    regression "scr" (single-class: one box, 4 outputs) or "pcr" (per-class: a box per
    class, 4 x classes outputs, the ground-truth class's box trained and measured).
    box_target "whole" | "clipped" and min_visible (the least of the object a training
    crop shows): data/boxes.py. Data: image folders with bboxes.csv (data.BoxFolder),
    augmented with their boxes (data.BoxLoader). A box is correct when
    its IoU with the target exceeds 0.5 (the ILSVRC criterion, A.2); validation's
    centre crop with the ground-truth class's box is protocol 1 of A.1, so val_loc_error
    is Table 8's measure (against the clipped box when box_target is "clipped").
    """

    name = "localisation"
    dataset = data.BoxFolder

    def __init__(self, classes, where="the training set", regression="pcr",
                 box_target="whole", min_visible=data.MIN_VISIBLE):
        if not classes:
            raise UserError(f"localisation needs at least one class folder: {where} has none")
        if regression not in REGRESSIONS:
            raise UserError(f"regression must be scr or pcr, got {regression!r}")
        self.classes, self.regression, self.box_target = list(classes), regression, box_target
        self.min_visible = min_visible
        groups = self.classes if regression == "pcr" else [None]
        # The last layer's outputs by name, e.g. circle.cx ... for PCR, cx cy w h for SCR.
        self.output_names = [k if g is None else f"{g}.{k}" for g in groups for k in BOX_CODE]
        self.outputs = len(self.output_names)

    def loader(self, dataset, *args, **kwargs):
        return data.BoxLoader(dataset, *args, box_target=self.box_target,
                              min_visible=self.min_visible, **kwargs)

    def initialise(self, model, path, settings, classes):
        """Every layer of the classifier at `path` but the last, which is new (A.1)."""
        finetune.initialise(model, path, settings, self.output_names)

    def targets(self, y):
        """The loader's (N, 5) rows [label, cx, cy, w, h] -> BoxTargets (host arrays)."""
        labels = y[:, 0].astype(np.int32)
        groups = labels if self.regression == "pcr" else np.zeros_like(labels)
        return BoxTargets(labels, groups, np.ascontiguousarray(y[:, 1:], dtype=np.float32))

    def loss(self, outputs, targets):
        return ops.euclidean_loss(outputs, targets.boxes, targets.groups)

    def totals(self, train):
        xp = backend.xp()
        return dict(loss=xp.zeros((), np.float32), hits=xp.zeros((), np.int64),
                    iou=xp.zeros((), np.float32))

    def add(self, totals, loss, targets):
        """Device sums: loss x batch, boxes with IoU > 0.5, and the IoUs (no host sync).
        IoU does not change when both boxes are scaled alike: compared in crop units."""
        overlap = data.iou(data.decode(loss.boxes, 1.0), data.decode(loss.target, 1.0))
        totals["loss"] = totals["loss"] + loss.data[0] * len(targets)
        totals["hits"] = totals["hits"] + (overlap > 0.5).sum()
        totals["iou"] = totals["iou"] + overlap.sum()

    def measures(self, totals, n, split):
        """Host floats: train_loss, train_loc_accuracy, train_mean_iou; val_loss,
        val_loc_error, val_mean_iou."""
        host = {k: backend.scalar(v) for k, v in totals.items()}
        if split == "train":
            return dict(train_loss=host["loss"] / n, train_loc_accuracy=host["hits"] / n,
                        train_mean_iou=host["iou"] / n)
        return dict(val_loss=host["loss"] / n, val_loc_error=1 - host["hits"] / n,
                    val_mean_iou=host["iou"] / n)

    def progress(self, loss, totals, n):
        return dict(loss=f"{backend.scalar(loss.data):.4f}",
                    acc=f"{backend.scalar(totals['hits']) / n:.3f}")

    def score(self, row):
        return 1 - row["val_loc_error"]

    def describe(self, r):
        return (f"loss {r['train_loss']:.4f}  train IoU>0.5 {100 * r['train_loc_accuracy']:5.1f}%"
                f"  val loc err {100 * r['val_loc_error']:5.1f}%  "
                f"mean IoU {r['val_mean_iou']:.3f}")

    def best(self, r):
        return (f"best val localisation error {100 * r['val_loc_error']:.1f}% (mean IoU "
                f"{r['val_mean_iou']:.3f}), at epoch {r['epoch']}")

    def plot(self, ax, rows):
        ep = [r["epoch"] for r in rows]
        ax.plot(ep, [100 * (1 - r["train_loc_accuracy"]) for r in rows], label="train")
        ax.plot(ep, [100 * r["val_loc_error"] for r in rows], label="val")
        ax.set_title("localisation error, IoU <= 0.5 (%)")
        ax.legend()
