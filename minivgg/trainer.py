"""The training loop behind `python -m minivgg.train` (paper sect. 3.1).

Trainer(args, settings).run() builds the data, model, optimiser and schedule (or restores
them from --resume), then runs epochs: SGD steps over augmented batches, a validation
pass, the schedule, metrics and checkpoints. What is specific to the task (targets, loss,
measures) is one object from tasks.py; the loop has no `if task ==`.

The device is only synchronised at logging points (every `check_every` steps on cuda, and
at the end of an epoch or of validation): the measures add up on the device, and each
step records on the device the first step whose loss was not finite, which the next
logging point reads, so a NaN stops the run naming the step where it appeared.
"""
import json
import math
import os
import signal
import sys
import time

import numpy as np
from tqdm import tqdm

from minivgg import backend, checkpoint, data, figures
from minivgg.errors import UserError
from minivgg.model import VGG
from minivgg.optim import SGD, PlateauSchedule
from minivgg.tape import Tensor, no_grad
from minivgg.tasks import Classification


class NonFiniteLoss(Exception):
    pass


class Trainer:
    # Steps between logging points (host syncs) per device; 1 elsewhere, where reading a
    # number costs nothing. On cuda a sync every step would stall the launch queue.
    CHECK_EVERY = {"cuda": 20}

    def __init__(self, args, settings, task=Classification):
        self.args, self.s, self.out = args, settings, args.out
        self._stop = False  # set by Ctrl-C (see _catch_ctrl_c)
        self.dev = backend.device()
        self.check_every = self.CHECK_EVERY.get(self.dev.name, 1)
        ckpt = self._load_resume() if args.resume else None
        self._build_data(ckpt, task)
        self._build_model(ckpt)
        xp = self.dev.xp  # the first non-finite loss: its step (-1: none yet) and value
        self._bad_step, self._bad_loss = xp.full((), -1, np.int64), xp.zeros((), np.float32)

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

    def _build_data(self, ckpt, task):
        s = self.s
        root = self.args.data or data.ensure_shapes(size=s["data_size"])
        print(f"data: {root}")
        train_dir = os.path.join(root, "train")
        if os.path.isdir(train_dir):  # the task can refuse the classes before any decoding
            self.task = task(data.class_folders(train_dir), train_dir)
        self.train_set = data.ImageFolder(root, "train", progress=True, warn=False)
        self.val_set = data.ImageFolder(root, "val", classes=self.train_set.classes,
                                        warn=False)
        self._report_skipped()
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
        """One pass over the training set. Device work only, except at logging points."""
        self.model.train()
        self.train_loader.set_epoch(self.epoch)
        totals, seen, t0 = self.task.totals(train=True), 0, time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{self.s['epochs']}",
                   unit="batch", leave=False, dynamic_ncols=True)
        for x, y in bar:
            targets = self.task.targets(y)
            self._set_lr()
            self.opt.zero_grad()
            loss = self.task.loss(self.model(Tensor(backend.to_device(x))), targets)
            loss.backward()
            self.opt.step()
            self.step += 1
            if self._stop:
                raise KeyboardInterrupt  # Ctrl-C came during this step (_catch_ctrl_c)
            self.task.add(totals, loss, targets)
            self._watch(loss)
            seen += len(y)
            if self.step % self.check_every == 0:  # a logging point: synchronise here only
                self._check_finite()
                bar.set_postfix(**self.task.progress(loss, totals, seen),
                                img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        self._check_finite()
        row = self.task.measures(totals, seen, "train")
        row.update(images_per_s=seen / (time.perf_counter() - t0))
        return row

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

    def _watch(self, loss):
        """Record on the device the first step whose loss is not finite (no host sync)."""
        xp = self.dev.xp
        first = ~xp.isfinite(loss.data[0]) & (self._bad_step < 0)
        self._bad_step = xp.where(first, self.step, self._bad_step)
        self._bad_loss = xp.where(first, loss.data[0], self._bad_loss)

    def _check_finite(self):
        """At a logging point: stop if any step since the last one had a NaN or inf loss."""
        step = int(backend.scalar(self._bad_step))
        if step >= 0:
            raise NonFiniteLoss(f"the loss became {backend.scalar(self._bad_loss)} at step "
                                f"{step} (epoch {self.epoch + 1})")

    def validate(self):
        """The task's measures on the validation set; one host sync, at the end."""
        self.model.eval()
        totals, n = self.task.totals(train=False), 0
        with no_grad():
            for x, y in self.val_loader:
                targets = self.task.targets(y)
                self.task.add(totals, self.task.loss(self.model(Tensor(backend.to_device(x))),
                                                     targets), targets)
                n += len(y)
        return self.task.measures(totals, n, "val")

    # ---- the run ----------------------------------------------------------------------
    def run(self):
        start, first_epoch = time.perf_counter(), self.epoch
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
        self._summary(time.perf_counter() - start, first_epoch)
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
        score = self.task.score(row)  # higher is better: the best checkpoint, the schedule
        row.update(epoch=self.epoch, step=self.step, lr=lr, seconds=time.perf_counter() - t0)
        if self.s.get("schedule", "plateau") == "plateau":
            self.sched.step(score)
        improved = score > self.best
        self.best = max(self.best, score)
        self._save("last")
        if improved:
            self._save("best")
        self._log(row)
        return row

    def _describe(self, r):
        return (f"epoch {r['epoch']:3d}  {self.task.describe(r)}  lr {r['lr']:.0e}  "
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
                     os.path.join(self.out, "metrics.png"), self.task)

    def _summary(self, seconds, first_epoch):
        """What ran in this invocation (a resumed run's earlier epochs are not counted in
        its time), and the best epoch of the whole run."""
        rows = read_metrics(os.path.join(self.out, "metrics.jsonl"))
        best = max(rows, key=self.task.score)
        ran = self.epoch - first_epoch
        which = f" (epochs {first_epoch + 1}-{self.epoch} of a resumed run)" if first_epoch \
            else ""
        print(f"done: {ran} epoch{'s' if ran != 1 else ''}{which} in {seconds:.0f} s; "
              f"{self.task.best(best)}")
        print(f"wrote {self.out}/best.npz, last.npz, metrics.jsonl, metrics.png")

    def _report_skipped(self):
        """One plain line per split with unreadable files; the full list in the run's
        directory (--out, checked writable before the data is read)."""
        lines = [ds.skipped_line() for ds in (self.train_set, self.val_set)]
        path = data.write_skipped([self.train_set, self.val_set],
                                  os.path.join(self.out, "skipped-images.txt"))
        for line in filter(None, lines):
            print(f"warning: {line} (all of them: {path})", file=sys.stderr)


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_metrics(jsonl, png, task):
    """Loss, the task's measure (top-1 error) and learning rate against epochs, one PNG."""
    plt = figures.pyplot()
    rows = read_metrics(jsonl)
    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.2))
    ax[0].plot(ep, [r["train_loss"] for r in rows], label="train")
    ax[0].plot(ep, [r["val_loss"] for r in rows], label="val")
    ax[0].set_title("loss")
    ax[0].legend()
    task.plot(ax[1], rows)
    ax[2].semilogy(ep, [r["lr"] for r in rows])
    ax[2].set_title("learning rate")
    for a in ax:
        a.set_xlabel("epoch")
    fig.tight_layout()
    figures.save(fig, png, dpi=80)
