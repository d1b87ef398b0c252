"""The Loader: shuffled, augmented NCHW float32 batches, made in background threads and
reproducible per (seed, epoch, sample index); in data-parallel training (sect. 3.3) each
process's slice of every batch."""
import collections
import concurrent.futures
import itertools

import numpy as np

from minivgg.data.errors import DataError
from minivgg.data.transforms import (center_crop, normalise, pca_lighting, random_crop,
                                     random_flip, rescale, sample_scale)


class Loader:
    """Batches (x float32 (B, 3, crop, crop) NCHW C-contiguous, y int32 (B,)) for one epoch.

    train=True: shuffle, S fixed (scale=int) or jittered per image (scale=(Smin, Smax),
    VGG sect. 3.1), random crop, random flip (flip=True), PCA colour shift (pca=(eigval,
    eigvec)), mean subtraction. train=False: no shuffle, rescale to `val_scale`, centre
    crop, mean subtraction, nothing random. val_scale defaults to the paper's single test
    scale (sect. 4.1): Q = S for a fixed S, Q = (Smin + Smax) // 2 for a jittered one,
    the scale the net saw most often in training.

    Reproducible: sample i of epoch e draws from np.random.default_rng([seed, e, i]) and
    the epoch's order from default_rng([seed, e]), so batches do not depend on thread
    timing, `workers` or `prefetch`. Iterating runs epoch `self.epoch` and then advances
    it; set_epoch(e) picks the next one (e.g. when resuming).

    Batches are made by `workers` threads (0: in the caller's thread), at most `prefetch`
    batches ahead. Stopping early (break, an exception, close()) cancels what is queued
    and joins the threads.

    shard=(rank, size): data-parallel training (VGG sect. 3.3, minivgg/distributed.py).
    The epoch's order and its batches are those of one process (batch_size is the global
    batch), and this loader yields rank's slice of each batch: shard_range(len(batch),
    rank, size), which may be empty for a last batch smaller than `size`. Every sample is
    still drawn from (seed, epoch, dataset index), so the R slices of a batch hold exactly
    the images, crops, flips, scales and colour shifts of the one-process batch.
    shard_of(j) says where batch j's slice starts in the whole batch and how big that is.
    """

    # What sample() returns beside the image, per sample: a class label here; a subclass
    # with other targets (data/boxes.py: BoxLoader's label and box) sets its own.
    TARGET_SHAPE, TARGET_DTYPE = (), np.int32

    def __init__(self, dataset, batch_size, train, crop, scale, mean_rgb, pca=None,
                 flip=True, seed=0, workers=2, prefetch=4, drop_last=False, val_scale=None,
                 std_rgb=None, shard=(0, 1)):
        self.dataset, self.batch_size, self.train = dataset, int(batch_size), bool(train)
        self.crop, self.scale, self.seed = int(crop), scale, int(seed)
        self.mean_rgb = np.asarray(mean_rgb, dtype=np.float32).reshape(3)
        self.std_rgb = None if std_rgb is None else np.asarray(std_rgb, np.float32).reshape(3)
        self.pca, self.flip = pca, flip
        self.workers, self.prefetch, self.drop_last = int(workers), int(prefetch), drop_last
        self.val_scale = int(val_scale if val_scale is not None else
                             sum(scale) // 2 if isinstance(scale, (tuple, list)) else scale)
        self.rank, self.size = (int(v) for v in shard)
        self.epoch = 0
        self._check()

    def _check(self):
        if self.batch_size < 1 or self.prefetch < 1 or self.workers < 0:
            raise DataError(f"batch_size and prefetch must be >= 1 and workers >= 0, got "
                            f"{self.batch_size}, {self.prefetch}, {self.workers}")
        if not 0 <= self.rank < self.size:
            raise DataError(f"shard ({self.rank}, {self.size}) needs 0 <= rank < size")
        if isinstance(self.scale, (tuple, list)):
            lo, hi = self.scale
            if not lo <= hi:
                raise DataError(f"scale range ({lo}, {hi}) needs Smin <= Smax")
        smallest = min(self._scales())
        if smallest < self.crop:
            raise DataError(f"scale {smallest} is smaller than the crop {self.crop}: "
                            f"S must be >= crop (VGG sect. 3.1)")
        if len(self.dataset) == 0:
            raise DataError("the dataset is empty")

    def _scales(self):
        if not self.train:
            return [self.val_scale]
        return list(self.scale) if isinstance(self.scale, (tuple, list)) else [self.scale]

    def __len__(self):
        n, b = len(self.dataset), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def order(self, epoch):
        """The sample indices of an epoch: a permutation (train) or 0..n-1 (val)."""
        n = len(self.dataset)
        if not self.train:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def sample(self, index, epoch=0):
        """One sample, augmented: (3 x crop x crop float32, label)."""
        img, label = self.dataset[index]
        if self.train:
            rng = np.random.default_rng([self.seed, epoch, int(index)])
            img = random_crop(rescale(img, sample_scale(self.scale, rng)), self.crop, rng)
            if self.flip:
                img = random_flip(img, rng)
            x = np.asarray(img, dtype=np.float32)
            if self.pca is not None:
                x = pca_lighting(x, self.pca[0], self.pca[1], rng)
        else:
            x = np.asarray(center_crop(rescale(img, self.val_scale), self.crop),
                           dtype=np.float32)
        return normalise(x, self.mean_rgb, self.std_rgb).transpose(2, 0, 1), label

    def _batch(self, indices, epoch):
        x = np.empty((len(indices), 3, self.crop, self.crop), dtype=np.float32)
        y = np.empty((len(indices), *self.TARGET_SHAPE), dtype=self.TARGET_DTYPE)
        for j, i in enumerate(indices):
            x[j], y[j] = self.sample(i, epoch)
        return x, y

    def _chunks(self, epoch):
        """This process's slice of each of the epoch's batches (the whole batch: size 1)."""
        idx, b = self.order(epoch), self.batch_size
        stop = len(self) * b
        chunks = [idx[k:k + b] for k in range(0, min(stop, len(idx)), b)]
        return [c[slice(*shard_range(len(c), self.rank, self.size))] for c in chunks]

    def shard_of(self, j):
        """(first, total) of batch j of an epoch: where this process's slice starts in the
        whole batch, and the whole batch's size (the same for every epoch and process)."""
        b, n = self.batch_size, len(self.dataset)
        total = min(b, n - j * b)
        return shard_range(total, self.rank, self.size)[0], total

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        return self.batches(epoch)

    def batches(self, epoch):
        """A generator of the batches of one epoch (does not touch self.epoch)."""
        chunks = self._chunks(epoch)
        if self.workers == 0:
            for c in chunks:
                yield self._batch(c, epoch)
            return
        pool = concurrent.futures.ThreadPoolExecutor(self.workers,
                                                     thread_name_prefix="minivgg-loader")
        todo, pending = iter(chunks), collections.deque()
        try:
            # Keep `prefetch` batches in flight or ready: the bounded queue.
            for c in itertools.islice(todo, self.prefetch):
                pending.append(pool.submit(self._batch, c, epoch))
            while pending:
                batch = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(self._batch, nxt, epoch))
                yield batch
        finally:
            # Runs on exhaustion, on break (generator closed), and on errors.
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


def shard_range(n, rank, size):
    """[start, stop) of rank's share of n items split over `size` processes in order, as
    evenly as possible: the first n % size ranks take one more (7 over 2: 0-3 and 4-6;
    7 over 3: 0-2, 3-4, 5-6; 1 over 2: 0-0 and an empty 1-1)."""
    base, extra = divmod(int(n), int(size))
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)
