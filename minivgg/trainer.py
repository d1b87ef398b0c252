"""The training loop behind `python -m minivgg.train` (paper sect. 3.1).

Trainer(args, settings).run() builds the data, model, optimiser and schedule (or restores
them from --resume), then runs epochs: SGD steps over augmented batches, a validation
pass, the schedule, metrics and checkpoints. What is specific to the task (targets, loss,
measures) is one object from tasks.py; the loop has no `if task ==`.

Data parallel (sect. 3.3, minivgg/distributed.py): with a World of R processes each one
trains its slice of every batch, the gradients are averaged by one all-reduce per step,
the measures are summed over the ranks at logging points, and rank 0 alone writes.

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

from minivgg import backend, checkpoint, data, distributed, figures, finetune, nn
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

    def __init__(self, args, settings, task=Classification, world=None):
        self.args, self.s, self.out = args, settings, args.out
        self.world = world or distributed.World()  # one process unless MPI started several
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
        if ckpt["optimizer"] is None:  # converted weights, say: nothing to continue
            raise UserError(f"--resume {self.args.resume} holds no optimizer state (not "
                            "written by minivgg.train); to start from its weights use "
                            "--init-from")
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
        s, world = self.s, self.world
        root = self.args.data or self._shapes(s["data_size"])
        print(f"data: {root}")
        train_dir = os.path.join(root, "train")
        # The task can refuse the classes before any decoding; without train/, the image
        # folder says so. The task's data set: image folders, or with boxes.
        self.task = task(data.class_folders(train_dir), train_dir) \
            if os.path.isdir(train_dir) else None
        folder = self.task.dataset if self.task else data.ImageFolder
        self.train_set = folder(root, "train", progress=world.is_root, warn=False)
        self.val_set = folder(root, "val", classes=self.train_set.classes, warn=False)
        self._report_skipped()
        if ckpt is not None:
            meta = ckpt["meta"]
            if meta["classes"] != self.train_set.classes:
                raise UserError(f"--resume {self.args.resume} was trained on other classes")
            mean, eigval, eigvec = (np.array(meta[k]) for k in ("mean_rgb", "eigval", "eigvec"))
        else:  # rank 0's, for every rank (the others need not read every pixel again)
            mean, eigval, eigvec = world.bcast(
                data.rgb_statistics(self.train_set) if world.is_root else None)
        std = data.channel_std(eigval, eigvec) if s["normalise"] == "mean-std" else None
        if s.get("finetune"):  # the copied weights' preprocessing, not --data's statistics
            ft = s["finetune"]
            mean = np.array(ft["mean_rgb"], dtype=np.float32)
            std = None if ft["std_rgb"] is None else np.array(ft["std_rgb"], dtype=np.float32)
        self.stats = dict(mean_rgb=mean.tolist(), eigval=eigval.tolist(),
                          eigvec=eigvec.tolist(), std_rgb=None if std is None else std.tolist())
        scale = s["scale"] if s["scale"] is not None else tuple(s["scale_jitter"])
        common = dict(crop=s["crop"], mean_rgb=mean, std_rgb=std, seed=self.args.seed,
                      workers=self.args.workers, shard=(world.rank, world.size))
        self.train_loader = self.task.loader(self.train_set, s["batch_size"], True,
                                             scale=scale, pca=(eigval, eigvec), **common)
        self.val_loader = self.task.loader(self.val_set, s["batch_size"], False, scale=scale,
                                           **common)
        # Every rank must walk the same batches: the same data, read the same way.
        world.check_same("data set (training and validation images, classes)",
                         (len(self.train_set), len(self.val_set), self.train_set.classes))

    def _shapes(self, size):
        """The built-in set, drawn by rank 0 while the others wait, then found by all."""
        if self.world.is_root:
            data.ensure_shapes(size=size)
        self.world.barrier()
        return data.ensure_shapes(size=size)

    def _build_model(self, ckpt):
        s = self.s
        self.model = VGG(self.args.config, self.task.outputs, s["width"],
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
        elif self.args.init_from:  # fine-tuning, or sect. 3.1's pre-initialisation
            self.task.initialise(self.model, self.args.init_from, s, self.train_set.classes)
        finetune.set_learning_rates(self.model, self.opt, s)  # fine-tuning only
        self.world.broadcast_state(self.model, self.opt)  # every rank starts from rank 0's
        self.world.check_same("step to start from", (self.epoch, self.step))
        self._trainable = [p for p in self.model.parameters() if p.requires_grad]
        self._dropouts = [m for _, m in self.model.named_modules() if isinstance(m, nn.Dropout)]
        print(f"model: VGG-{self.args.config}, {self.model.num_parameters():,} parameters, "
              f"input {s['crop']}x{s['crop']}, {len(self.train_set.classes)} classes")

    # ---- one epoch --------------------------------------------------------------------
    def _train_epoch(self):
        """One pass over the training set. Device work only, except at logging points."""
        self.model.train()
        self.train_loader.set_epoch(self.epoch)
        totals, seen, t0 = self.task.totals(train=True), 0, time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{self.s['epochs']}",
                   unit="batch", leave=False, dynamic_ncols=True,
                   disable=not self.world.is_root)
        for j, (x, y) in enumerate(bar):
            first, total = self.train_loader.shard_of(j)  # this rank's slice of batch j
            targets = self.task.targets(y)
            self._set_lr()
            self.opt.zero_grad()
            loss = self._forward_backward(x, targets, first)
            self.world.average_gradients(self._trainable, len(y) / total)
            self.opt.step()
            self.step += 1
            if self._stop and self.world.size == 1:
                raise KeyboardInterrupt  # Ctrl-C came during this step (_catch_ctrl_c)
            if loss is not None:
                self.task.add(totals, loss, targets)
                self._watch(loss)
            seen += total
            if self.step % self.check_every == 0:  # a logging point: synchronise here only
                shown = self._logging_point(totals)
                if self.world.is_root:  # its slice is never empty: its loss is shown
                    bar.set_postfix(**self.task.progress(loss, shown, seen),
                                    img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        row = self.task.measures(self._logging_point(totals, stop=False), seen, "train")
        row.update(images_per_s=seen / (time.perf_counter() - t0))
        return row

    def _forward_backward(self, x, targets, first):
        """The local forward and backward pass: this rank's slice of the batch, whose
        first sample is sample `first` of the whole batch (dropout draws that sample's
        masks). An empty slice (a last batch smaller than the ranks) computes nothing but
        counts its dropout calls, and gives None."""
        if len(targets) == 0:
            for m in self._dropouts:
                m.skip()
            return None
        for m in self._dropouts:
            m.first_sample = first
        loss = self.task.loss(self.model(Tensor(backend.to_device(x))), targets)
        loss.backward()
        return loss

    def _logging_point(self, totals, stop=True):
        """Stop if any step since the last logging point had a non-finite loss; return the
        totals to show. One process: its own. Several: one exchange gives every rank the
        first bad step of any rank, whether any rank got Ctrl-C (stop=True: all of them
        stop here, together), and the totals summed over the ranks."""
        if self.world.size == 1:
            self._check_finite()
            return totals
        step = int(backend.scalar(self._bad_step))
        bad = (step, backend.scalar(self._bad_loss)) if step >= 0 else None
        mine = dict(stop=self._stop, bad=bad,
                    totals={k: backend.scalar(v) for k, v in totals.items()})
        everyone = self.world.allgather(mine)
        bads = [e["bad"] for e in everyone if e["bad"] is not None]
        if bads:
            step, value = min(bads, key=lambda b: b[0])
            raise NonFiniteLoss(f"the loss became {value} at step {step} "
                                f"(epoch {self.epoch + 1})")
        if stop and any(e["stop"] for e in everyone):
            raise KeyboardInterrupt
        return {k: sum(e["totals"][k] for e in everyone) for k in totals}

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
            for x, y in self.val_loader:  # this rank's slice of each batch
                if len(y) == 0:
                    continue
                targets = self.task.targets(y)
                self.task.add(totals, self.task.loss(self.model(Tensor(backend.to_device(x))),
                                                     targets), targets)
                n += len(y)
        if self.world.size > 1:  # the counts of every rank's images
            summed = self.world.sum(dict(totals, images=n))
            totals, n = {k: summed[k] for k in totals}, summed["images"]
        return self.task.measures(totals, n, "val")

    # ---- the run ----------------------------------------------------------------------
    def run(self):
        start, first_epoch = time.perf_counter(), self.epoch
        previous = self._catch_ctrl_c()
        self._snapshot()  # epoch 0, the initial weights, if asked for
        try:
            while self.epoch < self.s["epochs"] and not self.sched.finished:
                row = self._one_epoch()
                print(self._describe(row))
                if self.world.any(self._stop):  # Ctrl-C during validation or saving
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
            if self.world.is_root:  # every rank stops here; one says why
                print(f"error: {e}; training stopped, {kept}", file=sys.stderr)
            return 1
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if self.world.is_root:
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
        self._snapshot()
        self._log(row)
        return row

    def _describe(self, r):
        return (f"epoch {r['epoch']:3d}  {self.task.describe(r)}  lr {r['lr']:.0e}  "
                f"{r['images_per_s']:.0f} img/s  {r['seconds']:.0f}s")

    def _save(self, name):
        path = os.path.join(self.out, f"{name}.npz")
        if not self.world.is_root:  # rank 0 alone writes; every rank holds the same state
            return path
        meta = dict(classes=self.train_set.classes, settings=self.s, **self.stats)
        state = dict(epoch=self.epoch, step=self.step, best_accuracy=self.best)
        checkpoint.save(path, self.model, self.opt, self.sched, state, meta)
        return path

    def _snapshot(self):
        """--snapshot-epochs: the weights after this epoch, without the optimizer state (half
        the size), as OUT/snapshots/epoch-EEE.npz; every visualise command reads them, and
        `visualise evolution OUT` draws them in a row per epoch (ZFNet's Fig. 4)."""
        if self.epoch not in (getattr(self.args, "snapshot_epochs", None) or ()) or \
                not self.world.is_root:
            return
        folder = os.path.join(self.out, "snapshots")
        os.makedirs(folder, exist_ok=True)
        meta = dict(classes=self.train_set.classes, settings=self.s, epoch=self.epoch,
                    **self.stats)
        checkpoint.save(os.path.join(folder, f"epoch-{self.epoch:03d}.npz"), self.model,
                        meta=meta)

    def _log(self, row):
        if not self.world.is_root:
            return
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
        if not self.world.is_root:
            return
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
