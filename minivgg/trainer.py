"""The training loop behind `python -m minivgg.train` (paper sect. 3.1).

Trainer(args, settings).run() builds the data, model, optimiser and schedule (or restores
them from --resume), then runs epochs: SGD steps over augmented batches, a validation
pass, the schedule, metrics and checkpoints. The device is only synchronised at logging
points (every `check_every` steps on cuda), where the loss is also checked for NaN.
"""
import json
import math
import os
import signal
import sys
import time

import numpy as np
from tqdm import tqdm

from minivgg import backend, checkpoint, data, figures, ops
from minivgg.errors import UserError
from minivgg.metrics import top_k_correct
from minivgg.model import VGG
from minivgg.optim import SGD, PlateauSchedule
from minivgg.tape import Tensor, no_grad


class NonFiniteLoss(Exception):
    pass


class Trainer:
    def __init__(self, args, settings):
        self.args, self.s, self.out = args, settings, args.out
        self._stop = False  # set by Ctrl-C (see _catch_ctrl_c)
        self.dev = backend.device()
        self.check_every = 1 if self.dev.name != "cuda" else 20
        ckpt = self._load_resume() if args.resume else None
        self._build_data(ckpt)
        self._build_model(ckpt)

    # ---- setup ------------------------------------------------------------------------
    def _load_resume(self):
        ckpt = checkpoint.load(self.args.resume)
        saved = ckpt["model"]["config"]
        if saved != self.args.config:
            raise UserError(f"--resume {self.args.resume} holds config {saved}, not "
                            f"{self.args.config}")
        settings = ckpt["meta"].get("settings")
        if settings is None:
            raise UserError(f"--resume {self.args.resume} holds no training settings")
        epochs = self.s["epochs"] if self.args.epochs is not None else settings["epochs"]
        self.s = dict(settings, epochs=epochs)
        return ckpt

    def _build_data(self, ckpt):
        s = self.s
        root = self.args.data or data.ensure_shapes(size=s["data_size"])
        print(f"data: {root}")
        self.train_set = data.ImageFolder(root, "train", progress=True)
        self.val_set = data.ImageFolder(root, "val", classes=self.train_set.classes)
        if ckpt is not None:
            meta = ckpt["meta"]
            if meta["classes"] != self.train_set.classes:
                raise UserError(f"--resume {self.args.resume} was trained on other classes")
            mean, eigval, eigvec = (np.array(meta[k]) for k in ("mean_rgb", "eigval", "eigvec"))
        else:
            mean, eigval, eigvec = data.rgb_statistics(self.train_set)
        std = data.channel_std(eigval, eigvec) if s["normalise"] == "mean-std" else None
        self.stats = dict(mean_rgb=mean.tolist(), eigval=eigval.tolist(),
                          eigvec=eigvec.tolist(), std_rgb=None if std is None else std.tolist())
        scale = s["scale"] if s["scale"] is not None else tuple(s["scale_jitter"])
        common = dict(crop=s["crop"], mean_rgb=mean, std_rgb=std, seed=self.args.seed,
                      workers=self.args.workers)
        self.train_loader = data.Loader(self.train_set, s["batch_size"], True, scale=scale,
                                        pca=(eigval, eigvec), **common)
        self.val_loader = data.Loader(self.val_set, s["batch_size"], False, scale=scale,
                                      **common)

    def _build_model(self, ckpt):
        s = self.s
        self.model = VGG(self.args.config, len(self.train_set.classes), s["width"],
                         s["fc_width"], s["crop"], s["dropout"], s["init"], self.args.seed)
        self.opt = SGD(self.model.named_parameters(), s["lr"], s["momentum"],
                       s["weight_decay"])
        self.sched = PlateauSchedule(self.opt, patience=s["patience"],
                                     max_decreases=self.args.max_decreases)
        self.epoch, self.step, self.best = 0, 0, 0.0
        if ckpt is not None:
            state = checkpoint.restore(self.model, ckpt, self.opt, self.sched)
            self.epoch, self.step = int(state["epoch"]), int(state["step"])
            self.best = float(state["best_accuracy"])
            print(f"resumed from {self.args.resume}: epoch {self.epoch}, step {self.step}")
        elif self.args.init_from:
            source = checkpoint.model_from_checkpoint(checkpoint.load(self.args.init_from))
            copied = self.model.preinitialise_from(source)
            print(f"pre-initialised {len(copied)} tensors from {self.args.init_from}")
        print(f"model: VGG-{self.args.config}, {self.model.num_parameters():,} parameters, "
              f"input {s['crop']}x{s['crop']}, {len(self.train_set.classes)} classes")

    # ---- one epoch --------------------------------------------------------------------
    def _train_epoch(self):
        self.model.train()
        self.train_loader.set_epoch(self.epoch)
        xp = self.dev.xp
        loss_sum, correct, seen, t0 = xp.zeros(1, np.float32), 0, 0, time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{self.s['epochs']}",
                   unit="batch", leave=False, dynamic_ncols=True)
        for x, y in bar:
            labels = backend.to_device(y, dtype=np.int32)
            self._set_lr()
            self.opt.zero_grad()
            loss = ops.softmax_cross_entropy(self.model(Tensor(backend.to_device(x))), labels)
            loss.backward()
            self.opt.step()
            self.step += 1
            if self._stop:
                raise KeyboardInterrupt  # Ctrl-C came during this step (_catch_ctrl_c)
            loss_sum += loss.data * len(y)
            correct = correct + top_k_correct(loss.probs, labels, 1)
            seen += len(y)
            if self.step % self.check_every == 0:  # a logging point: synchronise here only
                self._check_finite(loss)
                bar.set_postfix(loss=f"{float(loss.data[0]):.3f}",
                                acc=f"{float(correct) / seen:.3f}",
                                img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        self._check_finite(loss)
        return dict(train_loss=float(loss_sum[0]) / seen, train_accuracy=float(correct) / seen,
                    images_per_s=seen / (time.perf_counter() - t0))

    def _set_lr(self):
        """The learning rate of this step. "plateau" (sect. 3.1) leaves it to the schedule,
        once per epoch; "cosine" lowers it every step, from lr to 0 at the last step (for
        a fixed, short budget). Both rise linearly over the first warmup_steps steps."""
        s, base = self.s, self.s["lr"]
        if s.get("schedule", "plateau") == "cosine":
            total = s["epochs"] * len(self.train_loader)
            self.opt.lr = base * 0.5 * (1 + math.cos(math.pi * min(self.step, total) / total))
        elif self.step < s["warmup_steps"]:
            self.opt.lr = base
        if self.step < s["warmup_steps"]:
            self.opt.lr *= (self.step + 1) / s["warmup_steps"]

    def _check_finite(self, loss):
        if not math.isfinite(float(loss.data[0])):
            raise NonFiniteLoss(f"the loss became {float(loss.data[0])} at step {self.step} "
                                f"(epoch {self.epoch + 1})")

    def validate(self):
        self.model.eval()
        total, top1, top5, n = 0.0, 0, 0, 0
        with no_grad():
            for x, y in self.val_loader:
                labels = backend.to_device(y, dtype=np.int32)
                loss = ops.softmax_cross_entropy(self.model(Tensor(backend.to_device(x))),
                                                 labels)
                total += float(loss.data[0]) * len(y)
                top1 += int(top_k_correct(loss.probs, labels, 1))
                top5 += int(top_k_correct(loss.probs, labels, 5))
                n += len(y)
        return dict(val_loss=total / n, val_top1_error=1 - top1 / n, val_top5_error=1 - top5 / n)

    # ---- the run ----------------------------------------------------------------------
    def run(self):
        start = time.perf_counter()
        previous = self._catch_ctrl_c()
        try:
            while self.epoch < self.s["epochs"] and not self.sched.finished:
                row = self._one_epoch()
                print(self._describe(row))
                if self._stop:  # Ctrl-C during validation or saving
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            path = self._save("last")
            print(f"\ninterrupted at step {self.step}: saved {path} (epoch {self.epoch} "
                  f"complete); continue with --resume {path}")
            return 130
        except NonFiniteLoss as e:
            last = os.path.join(self.out, "last.npz")
            kept = f"{last} is the last good checkpoint" if os.path.exists(last) else \
                "no checkpoint was written"
            print(f"error: {e}; training stopped, {kept}", file=sys.stderr)
            return 1
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        self._summary(time.perf_counter() - start)
        return 0

    def _catch_ctrl_c(self):
        """Ctrl-C sets a flag that the loop checks after every step, so the interrupt
        always lands between steps (a KeyboardInterrupt raised inside a library's cleanup
        code can be swallowed there); a second Ctrl-C interrupts at once. Returns the
        previous handler, or None off the main thread (no handler there)."""
        self._stop = False

        def handler(signum, frame):
            if self._stop:
                raise KeyboardInterrupt
            self._stop = True
        try:
            return signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread: keep Python's default behaviour
            return None

    def _one_epoch(self):
        self._set_lr()
        lr = self.opt.lr  # the rate of the epoch's first step
        t0 = time.perf_counter()
        row = self._train_epoch()
        row.update(self.validate())
        self.epoch += 1
        accuracy = 1 - row["val_top1_error"]
        row.update(epoch=self.epoch, step=self.step, lr=lr, seconds=time.perf_counter() - t0)
        if self.s.get("schedule", "plateau") == "plateau":
            self.sched.step(accuracy)
        improved = accuracy > self.best
        self.best = max(self.best, accuracy)
        self._save("last")
        if improved:
            self._save("best")
        self._log(row)
        return row

    def _describe(self, r):
        return (f"epoch {r['epoch']:3d}  loss {r['train_loss']:.4f}  train acc "
                f"{100 * r['train_accuracy']:5.1f}%  val top-1 err {100 * r['val_top1_error']:5.1f}%"
                f"  top-5 err {100 * r['val_top5_error']:5.1f}%  lr {r['lr']:.0e}  "
                f"{r['images_per_s']:.0f} img/s  {r['seconds']:.0f}s")

    def _save(self, name):
        path = os.path.join(self.out, f"{name}.npz")
        meta = dict(classes=self.train_set.classes, settings=self.s, **self.stats)
        state = dict(epoch=self.epoch, step=self.step, best_accuracy=self.best)
        checkpoint.save(path, self.model, self.opt, self.sched, state, meta)
        return path

    def _log(self, row):
        with open(os.path.join(self.out, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
        plot_metrics(os.path.join(self.out, "metrics.jsonl"),
                     os.path.join(self.out, "metrics.png"))

    def _summary(self, seconds):
        rows = read_metrics(os.path.join(self.out, "metrics.jsonl"))
        best = min(rows, key=lambda r: r["val_top1_error"])
        print(f"done: {self.epoch} epochs in {seconds:.0f} s; best val top-1 error "
              f"{100 * best['val_top1_error']:.1f}% (accuracy "
              f"{100 * (1 - best['val_top1_error']):.1f}%), top-5 error "
              f"{100 * best['val_top5_error']:.1f}%, at epoch {best['epoch']}")
        print(f"wrote {self.out}/best.npz, last.npz, metrics.jsonl, metrics.png")


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_metrics(jsonl, png):
    """Loss, top-1 error and learning rate against epochs, in one PNG."""
    plt = figures.pyplot()
    rows = read_metrics(jsonl)
    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.2))
    ax[0].plot(ep, [r["train_loss"] for r in rows], label="train")
    ax[0].plot(ep, [r["val_loss"] for r in rows], label="val")
    ax[0].set_title("loss")
    ax[0].legend()
    ax[1].plot(ep, [100 * (1 - r["train_accuracy"]) for r in rows], label="train")
    ax[1].plot(ep, [100 * r["val_top1_error"] for r in rows], label="val")
    ax[1].set_title("top-1 error (%)")
    ax[1].legend()
    ax[2].semilogy(ep, [r["lr"] for r in rows])
    ax[2].set_title("learning rate")
    for a in ax:
        a.set_xlabel("epoch")
    fig.tight_layout()
    figures.save(fig, png, dpi=80)
