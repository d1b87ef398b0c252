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

Classification is VGG's task (sect. 3.1 and 4): class labels, soft-max cross-entropy,
top-1 and top-5 error. Localisation (the paper's appendix A: a bounding box regressed
with a Euclidean loss) is the next one, with the same loop.
"""
import numpy as np

from minivgg import backend, ops
from minivgg.errors import UserError
from minivgg.metrics import top_k_correct


class Classification:
    """Labels in [0, classes), soft-max cross-entropy, top-1 and top-5 error."""

    name = "classification"

    def __init__(self, classes, where="the training set"):
        # One class gives a soft-max of constant 1: loss 0, gradient 0, error 0% -- a run
        # that "succeeds" while learning nothing. Refuse it rather than warn.
        if len(classes) < 2:
            found = f"one ({classes[0]})" if classes else "none"
            raise UserError(f"a classifier needs at least two classes: {where} has {found}")
        self.classes = list(classes)

    def targets(self, labels):
        """Host int32 labels: the loss op checks their range on the host (free) and
        copies them to the device itself, keeping the copy as loss.labels."""
        return np.asarray(labels, dtype=np.int32)

    def loss(self, outputs, targets):
        return ops.softmax_cross_entropy(outputs, targets)

    def totals(self, train):
        """Zeroed device sums: the loss times the batch size, and correct counts (top-5
        on validation only: training reports top-1 accuracy)."""
        xp = backend.xp()
        sums = dict(loss=xp.zeros((), np.float32), top1=xp.zeros((), np.int64))
        if not train:
            sums["top5"] = xp.zeros((), np.int64)
        return sums

    def add(self, totals, loss, targets):
        """Add one batch to the device sums (device operations only: no host sync)."""
        totals["loss"] = totals["loss"] + loss.data[0] * len(targets)
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
        return dict(loss=f"{backend.scalar(loss.data):.3f}",
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
