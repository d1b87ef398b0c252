"""`python -m minivgg.train`: a short run learns and writes its files; resume continues
exactly; bad input gets one line and exit status 2; a NaN loss stops; Ctrl-C saves."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from minivgg import backend, checkpoint
from minivgg.errors import UserError
from strict_arrays import strict_device  # noqa: F401 (a fixture)

TINY = ["--device", "cpu", "--width", "0.0625", "--fc-width", "16", "--crop", "32",
        "--scale-jitter", "32", "36", "--batch-size", "8", "--lr", "0.01", "--workers", "1",
        "--lr-schedule", "plateau"]  # the paper's; cosine's curve depends on --epochs


def make_folder(root, classes=("dark", "light"), per_class=12, size=36, seed=0):
    """A tiny image-folder tree a small net learns in a few steps: dark vs light images."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", per_class // 2)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                base = 60 + 130 * c
                img = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255)
                Image.fromarray(img.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def train(*args, check=True, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "MINIVGG_DEVICE"}
    proc = subprocess.run([sys.executable, "-m", "minivgg.train", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def four_epochs(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    train("--data", str(data), "--epochs", "4", "--out", str(out), *TINY,
          "--snapshot-epochs", "0", "2", "4")
    return out


def metrics(out):
    with open(out / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def test_a_short_run_lowers_the_loss_and_writes_its_files(four_epochs):
    rows = metrics(four_epochs)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    for name in ("last.npz", "best.npz", "metrics.png"):
        assert (four_epochs / name).stat().st_size > 0
    Image.open(four_epochs / "metrics.png").verify()
    ckpt = checkpoint.load(four_epochs / "last.npz")
    assert ckpt["train_state"]["epoch"] == 4 and ckpt["meta"]["classes"] == ["dark", "light"]
    assert ckpt["model"]["config"] == "B"


def test_snapshot_epochs_keep_the_weights_after_those_epochs(four_epochs):
    snaps = four_epochs / "snapshots"
    assert sorted(p.name for p in snaps.iterdir()) == ["epoch-000.npz", "epoch-002.npz",
                                                       "epoch-004.npz"]
    last, four = checkpoint.load(four_epochs / "last.npz"), checkpoint.load(snaps /
                                                                            "epoch-004.npz")
    assert four["optimizer"] is None and four["meta"]["epoch"] == 4  # weights only
    for name, a in last["params"].items():
        np.testing.assert_array_equal(four["params"][name], a, err_msg=name)
    from minivgg.model import VGG  # epoch 0: the initial weights, before any step
    init = VGG(**dict(last["model"])).state_dict()
    zero = checkpoint.load(snaps / "epoch-000.npz")["params"]
    for name, a in init.items():
        np.testing.assert_array_equal(zero[name], a, err_msg=name)
    two = checkpoint.load(snaps / "epoch-002.npz")["params"]
    assert not np.array_equal(two["features.0.weight"], zero["features.0.weight"])
    assert not np.array_equal(two["features.0.weight"], four["params"]["features.0.weight"])


def test_snapshot_epochs_refuse_a_negative_epoch(data, tmp_path):
    one_line_error(train("--data", str(data), "--out", str(tmp_path), *TINY,
                         "--snapshot-epochs", "1", "-2", check=False),
                   "--snapshot-epochs must be at least 0, got -2")


def test_resume_continues_exactly(data, four_epochs, tmp_path):
    train("--data", str(data), "--epochs", "2", "--out", str(tmp_path), *TINY)
    proc = train("--data", str(data), "--epochs", "4", "--resume", str(tmp_path / "last.npz"),
                 "--out", str(tmp_path), *TINY)
    assert "done: 2 epochs (epochs 3-4 of a resumed run) in " in proc.stdout  # not "4 epochs"
    straight = checkpoint.load(four_epochs / "last.npz")
    resumed = checkpoint.load(tmp_path / "last.npz")
    assert resumed["train_state"]["step"] == straight["train_state"]["step"]
    for name, a in straight["params"].items():
        np.testing.assert_array_equal(resumed["params"][name], a, err_msg=name)
    for key, a in straight["optimizer"].items():
        np.testing.assert_array_equal(resumed["optimizer"][key], a, err_msg=key)


def test_cosine_schedule_falls_from_lr_to_zero_over_the_run(data, tmp_path):
    args = [a for a in TINY if a not in ("--lr-schedule", "plateau")]
    train("--data", str(data), "--epochs", "3", "--out", str(tmp_path), *args,
          "--lr-schedule", "cosine", "--warmup-steps", "0", "--lr", "0.02")
    # each epoch's row holds the rate of its first step, at fraction k/3 of the run
    want = [0.02 * 0.5 * (1 + np.cos(np.pi * k / 3)) for k in range(3)]
    np.testing.assert_allclose([r["lr"] for r in metrics(tmp_path)], want, rtol=1e-6)


def one_line_error(proc, *words):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_unknown_config(data, tmp_path):
    one_line_error(train("--config", "Z", "--data", str(data), "--out", str(tmp_path), *TINY,
                         check=False), "'Z'")


def test_missing_data_directory(tmp_path):
    one_line_error(train("--data", str(tmp_path / "nowhere"), "--out", str(tmp_path), *TINY,
                         check=False), "nowhere")


def test_empty_class_folder(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "train" / "empty").mkdir()
    one_line_error(train("--data", str(root), "--out", str(tmp_path / "o"), *TINY,
                         check=False), "empty")


def test_crop_larger_than_scale(data, tmp_path):
    one_line_error(train("--data", str(data), "--out", str(tmp_path), *TINY, "--crop", "40",
                         check=False), "--crop 40", "S=32")


def test_unwritable_out(data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    one_line_error(train("--data", str(data), "--out", str(blocker / "sub"), *TINY,
                         check=False), "--out")


def test_resume_from_another_config(data, four_epochs, tmp_path):
    one_line_error(train("--config", "A", "--data", str(data), "--resume",
                         str(four_epochs / "last.npz"), "--out", str(tmp_path), *TINY,
                         check=False), "config B", "not A")


def test_a_nan_loss_stops_with_the_step(data, tmp_path):
    proc = train("--data", str(data), "--out", str(tmp_path), "--epochs", "3", *TINY,
                 "--lr", "1e12", check=False)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "at step " in proc.stderr and "training stopped" in proc.stderr


def test_ctrl_c_saves_last_and_exits(data, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MINIVGG_DEVICE"}
    proc = subprocess.Popen([sys.executable, "-m", "minivgg.train", "--data", str(data),
                             "--epochs", "1000", "--out", str(tmp_path), *TINY,
                             "--patience", "1000"],  # no plateau end: run until Ctrl-C
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not (tmp_path / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)  # wait until the first epoch has been written
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted at step" in out
    assert checkpoint.load(tmp_path / "last.npz")["train_state"]["epoch"] >= 1


# -- rough edges (issue 20) --------------------------------------------------------------------
def settings_for(*flags):
    from minivgg import train as train_cli
    return train_cli.settings_from(train_cli.build_parser().parse_args(list(flags)), "cpu")


@pytest.mark.parametrize("flag", ["--lr", "--momentum", "--weight-decay", "--dropout",
                                  "--width"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_flag_refuses_nan_and_inf_up_front(flag, value):
    with pytest.raises(UserError, match=f"^{flag} must be a finite number, got {value}$"):
        settings_for(f"{flag}={value}")


def test_float_flags_out_of_range():
    for flag, value, what in [("--momentum", "1", "in [0, 1)"), ("--dropout", "1", "in [0, 1)"),
                              ("--weight-decay", "-1e-4", "at least 0"),
                              ("--width", "0", "positive")]:
        with pytest.raises(UserError, match=f"^{flag} must be {re.escape(what)}"):
            settings_for(f"{flag}={value}")


def test_threads_run_the_convs_loops_and_a_negative_count_is_one_line(data, tmp_path):
    proc = train("--data", str(data), "--out", str(tmp_path / "two"), *TINY, "--epochs", "1",
                 "--threads", "2")
    assert "; 2 threads for the convs' loops, 1 BLAS thread a call" in proc.stdout.splitlines()[0]
    one_line_error(train("--data", str(data), "--out", str(tmp_path / "minus"), *TINY,
                         "--threads", "-1", check=False), "--threads", "-1")


def test_cpu_threads_hands_the_loops_their_count_or_pins_blas():
    tpc = pytest.importorskip("threadpoolctl")
    from kernels import threads as cpu
    from minivgg import device_flags, train as train_cli
    assert train_cli.build_parser().parse_args([]).threads == 1
    with tpc.threadpool_limits(limits=None):
        try:
            assert device_flags.cpu_threads(2, 2).startswith("2 threads") and cpu.threads() == 2
            assert all(i["num_threads"] == 1 for i in tpc.threadpool_info()
                       if i["user_api"] == "blas")
        finally:
            cpu.set_threads(1)
        assert device_flags.cpu_threads(1, 1) == "1 BLAS thread"


def test_nan_lr_is_one_line_on_the_command_line(data, tmp_path):
    one_line_error(train("--data", str(data), "--out", str(tmp_path), *TINY, "--lr", "nan",
                         check=False), "--lr", "finite", "nan")


def test_argparse_errors_are_one_line_too():
    from minivgg import train as train_cli
    with pytest.raises(UserError, match="--lr: expected one argument"):
        train_cli.build_parser().parse_args(["--lr", "-inf"])  # "-inf" looks like a flag


def test_help_shows_each_presets_value_not_none():
    from minivgg import train as train_cli
    text = " ".join(train_cli.build_parser().format_help().split())  # unwrapped
    assert "(default: None)" not in text
    assert "(cpu: 18, cuda: 20, paper: 74, lenet: 12, cpu-alexnet: 30, alexnet: 90, " \
        "cpu-nin: 30, cpu-googlenet: 10)" in text  # --epochs
    assert "(cpu: 32 40, cuda: 64 96, paper: none, lenet: 32 36, cpu-alexnet: 80 96, " \
        "alexnet: none, cpu-nin: 80 96, cpu-googlenet: 96 112)" in text  # --scale-jitter
    assert "(default: runs/train)" in text                 # a real default is still shown


def test_a_single_class_is_refused_in_one_line(tmp_path):
    root = make_folder(tmp_path / "d", classes=("only",))
    one_line_error(train("--data", str(root), "--out", str(tmp_path / "o"), *TINY,
                         check=False), "two classes", "only")


def test_unreadable_images_one_plain_line_per_folder_and_the_list_in_out(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "train" / "dark" / "junk.png").write_bytes(b"not a png")
    (root / "val" / "light" / "bad.png").write_bytes(b"")
    out = tmp_path / "o"
    proc = train("--data", str(root), "--out", str(out), "--epochs", "1", *TINY)
    lines = [ln for ln in proc.stderr.splitlines() if "skipped" in ln]
    listed = out / "skipped-images.txt"
    assert lines == [
        f"warning: skipped 1 unreadable image in {root / 'train'}: "
        f"{os.path.join('dark', 'junk.png')} (all of them: {listed})",
        f"warning: skipped 1 unreadable image in {root / 'val'}: "
        f"{os.path.join('light', 'bad.png')} (all of them: {listed})"], proc.stderr
    assert "Warning" not in proc.stderr  # no Python warning with its source line
    assert listed.read_text().splitlines() == [str(root / "train" / "dark" / "junk.png"),
                                               str(root / "val" / "light" / "bad.png")]


# -- the loop: host syncs only at logging points, the NaN check (issue 12) --------------------
def make_trainer(root, out, *flags):
    from minivgg import train as train_cli
    from minivgg.trainer import Trainer
    args = train_cli.build_parser().parse_args(
        ["--data", str(root), "--out", str(out), *TINY, "--batch-size", "4", *flags])
    settings = train_cli.settings_from(args, backend.device().name)
    os.makedirs(out, exist_ok=True)
    return Trainer(args, settings)


def poison_steps(trainer, bad_steps):
    """Make the loss of the steps `bad_steps` (1-based) NaN after the forward pass."""
    loss_of = trainer.task.loss

    def loss(outputs, targets):
        out = loss_of(outputs, targets)
        if trainer.step + 1 in bad_steps:
            out.data[...] = np.nan
        return out
    trainer.task.loss = loss


def test_the_nan_check_every_k_steps_names_the_first_bad_step(tmp_path, monkeypatch):
    """The cuda path (a logging point every `check_every` steps), run on cpu: the loss of
    steps 6 and 7 is NaN, the check at step 8 stops the run and names step 6, and the host
    reads device numbers at logging points only (steps 4 and 8)."""
    from minivgg.trainer import NonFiniteLoss
    backend.set_device("cpu")
    trainer = make_trainer(make_folder(tmp_path / "d", per_class=20), tmp_path / "o")
    trainer.check_every = 4
    poison_steps(trainer, {6, 7})
    reads, scalar = [], backend.scalar
    monkeypatch.setattr(backend, "scalar", lambda a: reads.append(trainer.step) or scalar(a))
    with pytest.raises(NonFiniteLoss, match="the loss became nan at step 6 "):
        trainer._train_epoch()
    assert trainer.step == 8 and set(reads) == {4, 8}, reads


def linear_net(config, num_classes, width, fc_width, crop, dropout, init, seed):
    """VGG's stand-in where the simulator runs the step: one FC layer on the pixels (the
    input reshaped outside the tape, which has nothing to backpropagate into it)."""
    from minivgg import nn
    from minivgg.tape import Tensor

    class Net(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(3 * crop * crop, num_classes, "kaiming",
                                np.random.default_rng(seed))

        def forward(self, x):
            return self.fc(Tensor(x.data.reshape(x.shape[0], -1)))
    return Net()


def an_epoch(tmp_path, monkeypatch, check_every):
    """(train row, val row, the steps at which the host read a device number during the
    epoch, how many numbers validation read)."""
    from minivgg import trainer as trainer_module
    monkeypatch.setattr(trainer_module, "VGG", linear_net)
    root = tmp_path / "d"
    if not root.exists():
        make_folder(root, per_class=6, size=12)
    trainer = make_trainer(root, tmp_path / "o", "--crop", "4", "--scale-jitter", "4", "5")
    trainer.check_every = check_every
    reads, scalar = [], backend.scalar
    monkeypatch.setattr(backend, "scalar", lambda a: reads.append(trainer.step) or scalar(a))
    row = trainer._train_epoch()
    before = len(reads)
    val = trainer.validate()
    return row, val, reads[:before], len(reads) - before


def test_an_epoch_on_the_device_reads_the_host_at_logging_points_only(strict_device, tmp_path,
                                                                      monkeypatch):
    """The loop with device arrays that refuse implicit conversion (CuPy's manners, see
    strict_arrays.py) and, on the simulator, refuse float()/int()/bool() too: each is a
    hidden host sync on a GPU. 12 images in batches of 4: steps 1-3, logging points at
    step 2 and at the end of the epoch; validation reads its sums once, at its end. The
    measures equal the cpu device's."""
    from helpers import KERNEL_DEVICE
    from strict_arrays import DeviceArray, cpu_device
    if KERNEL_DEVICE != "cuda":
        def hidden_sync(self, *args):
            raise TypeError("float()/int()/bool() of a device array: a hidden host sync")
        for name in ("__float__", "__int__", "__bool__"):
            monkeypatch.setattr(DeviceArray, name, hidden_sync, raising=False)
    row, val, reads, val_reads = an_epoch(tmp_path, monkeypatch, check_every=2)
    assert set(reads) == {2, 3}, reads
    assert val_reads == 3  # loss, top-1, top-5 once: not per batch (2 batches here)
    with cpu_device():
        want_row, want_val, *_ = an_epoch(tmp_path, monkeypatch, check_every=2)
    for key in ("train_loss", "train_accuracy"):
        assert row[key] == pytest.approx(want_row[key], rel=1e-5), key
    assert val == pytest.approx(want_val, rel=1e-5)


def test_the_cpu_device_pins_blas_to_one_thread_by_default():
    tpc = pytest.importorskip("threadpoolctl")
    from minivgg import device_flags, train as train_cli
    assert train_cli.build_parser().parse_args([]).blas_threads == 1
    with tpc.threadpool_limits(limits=None):  # puts the process's limits back afterwards
        assert device_flags.limit_blas_threads(1) == "1 BLAS thread"
        blas = [i for i in tpc.threadpool_info() if i["user_api"] == "blas"]
        assert blas and all(i["num_threads"] == 1 for i in blas)
        assert device_flags.limit_blas_threads(0) == "BLAS threads as they are"
