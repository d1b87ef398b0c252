"""Data parallelism (paper sect. 3.3, minivgg/distributed.py): R MPI processes train the
weights of one.

The jobs run a tiny VGG-B with dropout 0.5 and scale jittering on 22 images in batches of
7: three steps of 7 images, then a step of one image, which leaves every rank but rank 0
an empty slice (7 over 2 ranks is 4 + 3, over 3 ranks 3 + 2 + 2). After them the weights,
the momentum buffers and the losses must equal one process's within TOLERANCE, every rank
must hold the same bits, and rank 0 alone may write.

TOLERANCE: one process sums each gradient over the batch's 7 samples in one float32
reduction; R processes sum it in R pieces, weight each by its share n_r / B and add the
pieces. Both are the same sum with the float32 terms added in another order, so each
gradient entry differs by a few units in the last place of its largest terms (float32
epsilon 1.2e-7), and four steps of momentum SGD carry that on. Measured: at most 1.3e-6
of an array's largest magnitude (2 and 3 ranks, lr 0.01 and 0.02). The test allows 1e-4,
~100x that, while the mistakes it is there to catch are far above it: dropout masks drawn
without the slice's offset 1.6e-2, slices weighted 1/R instead of n_r/B 3.9e-3.
(Over many steps the difference grows, as any rounding difference does in training: after
80 steps of the cpu preset it is of the order of the weights' changes -- exactly as
when one process changes a single weight by one ulp. The claim is per step: the same
gradient, up to the order of summation.)

MPI comes from the [mpi] extra (mpi4py and an MPI from PyPI); without it these tests skip,
unless MINIVGG_REQUIRE_MPI=1 (.ci/run), when they fail.
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minivgg import checkpoint, distributed, nn
from minivgg.data import ArrayDataset, Loader
from minivgg.data.loader import shard_range
from minivgg.errors import UserError
from minivgg.tape import Tensor
from strict_arrays import strict_device  # noqa: F401 (a fixture)
from test_train import make_folder

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(ROOT / "tests" / "_mpi_worker.py")
TOLERANCE = 1e-4
ARGS = ["--device", "cpu", "--width", "0.0625", "--fc-width", "16", "--crop", "32",
        "--scale-jitter", "32", "36", "--batch-size", "7", "--lr", "0.01",
        "--warmup-steps", "0", "--dropout", "0.5", "--workers", "1",
        "--lr-schedule", "plateau"]


# ---- the launcher -----------------------------------------------------------------------------
def _launcher():
    """[mpiexec, its flags] or the reason why there is none."""
    try:
        return distributed.mpiexec_command(1)[:-2]
    except UserError as e:
        return str(e)


LAUNCHER = _launcher()


@pytest.fixture(scope="module")
def mpi():
    """Skip without MPI (fail when MINIVGG_REQUIRE_MPI=1, as in CI)."""
    if isinstance(LAUNCHER, str):
        if os.environ.get("MINIVGG_REQUIRE_MPI") == "1":
            pytest.fail(f"MINIVGG_REQUIRE_MPI=1 but {LAUNCHER}")
        pytest.skip(LAUNCHER)


def _env():
    # The jobs choose their device themselves; the simulator switch conftest sets is ours.
    drop = ("MINIVGG_DEVICE", "NUMBA_ENABLE_CUDASIM")
    return {k: v for k, v in os.environ.items() if k not in drop}


def run(ranks, *args, worker=(), timeout=120):
    """The worker as one process (ranks=1: no launcher) or under mpiexec -n ranks.
    Returns (the finished process, seconds)."""
    cmd = [sys.executable, WORKER, *worker, "--", *args]
    if ranks > 1:
        cmd = [*LAUNCHER, "-n", str(ranks), *cmd]
    t0 = time.perf_counter()
    # A session of its own: a job that hangs is killed whole (launcher and ranks).
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=_env(), cwd=ROOT, start_new_session=True) as p:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            raise
    proc = subprocess.CompletedProcess(cmd, p.returncode, out, err)
    return proc, time.perf_counter() - t0


def train(ranks, data, out, *extra, worker=()):
    """(the output folder, the process) of a finished training job. Ranks other than 0
    may not write there, and start from other weights than rank 0 until its are
    broadcast; every rank's digest of its final state goes beside the folder."""
    watch = ["--watch-writes", str(out), "--digest", str(out.parent / f"{out.name}.digests"),
             "--perturb"]
    proc, _ = run(ranks, "--data", str(data), "--out", str(out), *ARGS, *extra,
                  worker=[*watch, *worker])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data"), per_class=11)  # 22 train, 10 val


@pytest.fixture(scope="module")
def one(data, tmp_path_factory):
    """One process, no launcher: the reference. It must not import mpi4py."""
    out = tmp_path_factory.mktemp("jobs") / "one"
    report = out.parent / "one-mpi.json"
    out, proc = train(1, data, out, "--epochs", "1", worker=["--report-mpi", str(report)])
    assert json.loads(report.read_text()) == {"mpi4py": False}
    return out


@pytest.fixture(scope="module")
def two(mpi, data, tmp_path_factory):
    return train(2, data, tmp_path_factory.mktemp("jobs") / "two", "--epochs", "1")


# ---- R processes give the weights of one ------------------------------------------------------
def assert_state_close(got, want):
    """Every weight and momentum buffer within TOLERANCE of its array's largest value;
    the step, the dropout counters and the schedule exactly."""
    a, b = checkpoint.load(got / "last.npz"), checkpoint.load(want / "last.npz")
    assert a["train_state"] == b["train_state"]
    assert a["dropout"] == b["dropout"]
    for group in ("params", "optimizer"):
        for name, w in b[group].items():
            w = np.asarray(w)
            if w.dtype.kind != "f" or w.ndim == 0:
                assert np.asarray(a[group][name]) == w, name
                continue
            error = np.abs(np.asarray(a[group][name]) - w).max() / np.abs(w).max()
            assert error <= TOLERANCE, f"{group} {name}: {error:.2e} of its largest value"


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.usefixtures("mpi")
@pytest.mark.parametrize("ranks", [2, 3])
def test_processes_train_the_weights_of_one_process(ranks, data, one, two, tmp_path):
    """Three steps of 7 images (over 2 ranks 4 + 3: the uneven split is weighted) and one
    of a single image (empty slices), with dropout and scale jittering."""
    out, proc = two if ranks == 2 else train(3, data, tmp_path / "three", "--epochs", "1")
    assert_state_close(out, one)
    digests = json.loads((out.parent / f"{out.name}.digests").read_text())
    assert len(digests) == ranks and len(set(digests)) == 1  # every rank: the same bits
    (mine,), (theirs,) = rows(out), rows(one)
    for key in ("step", "epoch", "val_top1_error", "val_top5_error", "train_accuracy"):
        assert mine[key] == theirs[key], key
    for key in ("train_loss", "val_loss"):
        assert mine[key] == pytest.approx(theirs[key], rel=TOLERANCE), key
    # Rank 0 alone prints and writes (the other ranks' writes would have failed the job).
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in one.iterdir())
    assert proc.stdout.count("done: 1 epoch") == 1 and f"{ranks} processes" in proc.stdout


@pytest.mark.usefixtures("mpi")
def test_resume_under_mpi_continues_exactly(data, two, tmp_path):
    """1 epoch, then --resume for a second, gives the bits of 2 epochs straight."""
    straight, _ = train(2, data, tmp_path / "straight", "--epochs", "2")
    resumed = tmp_path / "resumed"
    shutil.copytree(two[0], resumed)
    train(2, data, resumed, "--epochs", "2", "--resume", str(resumed / "last.npz"))
    a, b = checkpoint.load(resumed / "last.npz"), checkpoint.load(straight / "last.npz")
    assert a["train_state"] == b["train_state"] and a["dropout"] == b["dropout"]
    for group in ("params", "optimizer"):
        for name, w in b[group].items():
            np.testing.assert_array_equal(a[group][name], w, err_msg=name)


def our_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.usefixtures("mpi")
def test_an_error_on_rank_1_ends_every_rank_at_once(data, two, tmp_path):
    """Rank 1 raises in the second step of a resumed epoch while rank 0 waits for it in
    the all-reduce: both end, non-zero, in seconds, with one line; last.npz stays."""
    out = tmp_path / "failing"
    shutil.copytree(two[0], out)
    before = hashlib.sha256((out / "last.npz").read_bytes()).hexdigest()
    proc, seconds = run(2, "--data", str(data), "--out", str(out), *ARGS, "--epochs", "2",
                        "--resume", str(out / "last.npz"), worker=["--fail", "1:6"], timeout=60)
    assert proc.returncode != 0
    assert seconds < 30, f"took {seconds:.0f} s"
    lines = our_lines(proc.stderr)
    assert len(lines) == 1 and "rank 1 of 2" in lines[0] and "injected failure" in lines[0], \
        proc.stderr[-3000:]
    assert hashlib.sha256((out / "last.npz").read_bytes()).hexdigest() == before


@pytest.mark.usefixtures("mpi")
def test_a_nan_loss_on_one_rank_stops_every_rank(data, tmp_path):
    """A non-finite loss on rank 1 only: every rank stops at the logging point, with the
    step where it appeared, status 1 and one line (from rank 0), as one process would."""
    out = tmp_path / "nan"
    proc, _ = run(2, "--data", str(data), "--out", str(out), *ARGS, "--epochs", "1",
                  worker=["--nan", "1:2"], timeout=60)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = our_lines(proc.stderr)
    assert len(lines) == 1 and "at step 2" in lines[0], proc.stderr[-3000:]
    assert not (out / "last.npz").exists()


@pytest.mark.usefixtures("mpi")
def test_evaluate_splits_the_images_and_gathers_the_posteriors(data, two, tmp_path):
    ckpt = str(two[0] / "last.npz")
    reports = []
    for ranks in (1, 2):
        out = tmp_path / f"eval{ranks}"
        proc, _ = run(ranks, ckpt, "--data", str(data), "--out", str(out), "--device", "cpu",
                      worker=["--evaluate", "--watch-writes", str(out)])
        assert proc.returncode == 0, proc.stderr[-3000:]
        (path,) = out.glob("*.json")
        reports.append(json.loads(path.read_text()))
    one_report, two_report = reports
    for key in ("top1_error", "top5_error", "confusion", "n_images"):
        assert two_report[key] == one_report[key], key
    for a, b in zip(two_report["images"], one_report["images"]):
        assert a["path"] == b["path"] and a["top5"] == b["top5"]
        np.testing.assert_allclose(a["top5_probs"], b["top5_probs"], rtol=1e-6)


# ---- the pieces, in this process ----------------------------------------------------------------
@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_shard_range_splits_in_order_as_evenly_as_possible(size):
    for n in range(0, 23):
        parts = [shard_range(n, r, size) for r in range(size)]
        assert parts[0][0] == 0 and parts[-1][1] == n
        assert all(parts[r][1] == parts[r + 1][0] for r in range(size - 1))
        sizes = [b - a for a, b in parts]
        assert sizes == sorted(sizes, reverse=True) and max(sizes) - min(sizes) <= 1


def test_sharded_loaders_yield_slices_of_the_one_process_batches():
    """Same order, same crops, scales, flips and colour shifts: R shards of each batch,
    put together, are the one-process batch, bit for bit."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (int(rng.integers(40, 50)), 44, 3), np.uint8)
              for _ in range(11)]
    ds = ArrayDataset(images, list(range(11)))
    pca = (np.array([3.0, 1.0, 0.5]), np.eye(3))

    def loader(shard):
        return Loader(ds, 4, True, crop=32, scale=(34, 48), mean_rgb=[100, 110, 120],
                      pca=pca, seed=3, workers=0, shard=shard)
    whole = list(loader((0, 1)).batches(epoch=2))
    shards = [loader((r, 3)) for r in range(3)]
    parts = [list(s.batches(epoch=2)) for s in shards]
    for j, (x, y) in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([p[j][0] for p in parts]), x)
        np.testing.assert_array_equal(np.concatenate([p[j][1] for p in parts]), y)
        for r, s in enumerate(shards):
            first, total = s.shard_of(j)
            assert total == len(y) and first == sum(len(p[j][1]) for p in parts[:r])


def test_dropout_on_slices_draws_the_masks_of_the_whole_batch():
    """Two ranks' Dropout modules against one process's, over three steps: 7 images split
    4 + 3, then 1 image (rank 1's slice is empty: skip()), then 7 on rank 1 alone."""
    x = np.random.default_rng(1).standard_normal((7, 2, 3)).astype(np.float32) + 3
    whole, a, b = (nn.Dropout(0.5, seed=9) for _ in range(3))
    want = whole(Tensor(x.copy())).data
    b.first_sample = 4
    np.testing.assert_array_equal(a(Tensor(x[:4].copy())).data, want[:4])
    np.testing.assert_array_equal(b(Tensor(x[4:].copy())).data, want[4:])
    np.testing.assert_array_equal(a(Tensor(x[:1].copy())).data, whole(Tensor(x[:1].copy())).data)
    b.skip()  # an empty slice still counts its call: the next masks agree
    b.first_sample = 0
    np.testing.assert_array_equal(b(Tensor(x.copy())).data, whole(Tensor(x.copy())).data)
    assert a.calls == 2 and b.calls == whole.calls == 3


def test_gradients_are_packed_reduced_and_unpacked_on_the_device(strict_device):
    """The all-reduce path as on cuda, on stand-in device arrays that refuse host
    conversions: pack weight * grad into one flat device buffer (zeros for a missing
    grad), one reduction of it, each .grad a device view of its part. The transport here
    stands in for NCCL: it adds a second rank's identical contribution."""
    from minivgg import backend
    reduced = []

    class TwoRanks:
        def allreduce(self, buf):
            assert backend.is_device_array(buf)
            reduced.append(buf.size)
            buf *= 2
    world = object.__new__(distributed.MPIWorld)
    world.size, world.rank, world._transport, world._buffer = 2, 0, TwoRanks(), None
    rng = np.random.default_rng(0)
    params = [nn.Parameter(backend.to_device(rng.standard_normal(s))) for s in [(3, 2), (4,)]]
    params.append(nn.Parameter(backend.to_device(np.ones(5))))  # no gradient on this rank
    grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params[:2]]
    for p, g in zip(params, grads):
        p.grad = backend.to_device(g)
    world.average_gradients(params, 4 / 7)
    assert reduced == [6 + 4 + 5]  # one collective, every parameter in it
    for p, g in zip(params, grads + [np.zeros(5, np.float32)]):
        assert backend.is_device_array(p.grad) and p.grad.shape == p.shape
        np.testing.assert_allclose(p.grad.get(), 2 * np.float32(4 / 7) * g, rtol=1e-6)


def test_rank_0s_weights_and_velocities_are_broadcast_into_the_device_arrays(strict_device):
    """broadcast_state on a rank other than 0: through the host (once, at set-up), then
    written in place into the same device arrays (views of them stay valid)."""
    from minivgg import backend
    from minivgg.optim import SGD

    class Comm:  # rank 0's values: every array filled with 7
        def Bcast(self, host, root):
            assert root == 0 and not backend.is_device_array(host)
            host[...] = 7
    world = object.__new__(distributed.MPIWorld)
    world.size, world.rank, world.comm = 2, 1, Comm()
    model = nn.Linear(3, 2)
    opt = SGD(model.named_parameters())
    arrays = [p.data for p in model.parameters()] + list(opt.velocity.values())
    world.broadcast_state(model, opt)
    for a, b in zip(arrays, [p.data for p in model.parameters()] + list(opt.velocity.values())):
        assert a is b and backend.is_device_array(a)
        np.testing.assert_array_equal(a.get(), np.full(a.shape, 7, np.float32))


@pytest.mark.parametrize("env, want", [
    ({}, (1, 0, 0)),
    ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3",
      "OMPI_COMM_WORLD_LOCAL_RANK": "1"}, (4, 3, 1)),
    ({"PMI_SIZE": "2", "PMI_RANK": "1", "MPI_LOCALRANKID": "1"}, (2, 1, 1)),
    ({"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1"}, (8, 5, 1)),
    ({"SLURM_NTASKS": "8", "SLURM_PROCID": "0"}, (1, 0, 0)),  # a batch script, not srun
    ({"PMI_SIZE": "3", "PMI_RANK": "2"}, (3, 2, None)),  # no local rank: MPI will say
])
def test_the_launcher_is_read_from_the_environment(monkeypatch, env, want):
    for names in distributed.LAUNCHER_ENV:
        for name in names:
            monkeypatch.delenv(name, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert distributed.launched() == want
    if want[0] == 1:
        assert type(distributed.init("auto")) is distributed.World


@pytest.mark.parametrize("visible, local, want", [
    (None, 1, "1"), ("3", 1, "3"), ("4,5,6", 2, "6"), ("GPU-a,GPU-b", 0, "GPU-a")])
def test_each_process_sees_its_own_gpu(monkeypatch, visible, local, want):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    distributed.pin_gpu(local)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == want


def test_more_processes_than_listed_gpus_is_one_line(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(UserError, match="2 GPUs"):
        distributed.pin_gpu(2)


def test_the_benchmark_table_scales_against_one_process(monkeypatch):
    """python -m minivgg.bench --distributed: speed-up and efficiency from each process
    count's median run (the runs themselves are stubbed: they take seconds each)."""
    import types
    from minivgg.bench import distributed as bench_dist
    figures = {1: iter([500.0, 400.0, 600.0]), 2: iter([700.0, 900.0, 800.0])}
    monkeypatch.setattr(bench_dist, "_run", lambda r, a: dict(
        images_per_s=next(figures[r]), describe=f"{r} processes"))
    args = types.SimpleNamespace(ranks=[2], repeats=3, global_batch=7, steps=5, warmup=1,
                                 device="cpu")
    bench = types.SimpleNamespace(args=args, progress=lambda text: None)
    lines = []
    bench_dist.distributed_section(bench, lines.append)
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in "\n".join(lines).splitlines() if line.startswith("| ")]
    assert rows[1:] == [["1", "7", "500", "1.00", "100%"], ["2", "4/3", "800", "1.60", "80%"]]
