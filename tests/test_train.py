"""`python -m minivgg.train`: a short run learns and writes its files; resume continues
exactly; bad input gets one line and exit status 2; a NaN loss stops; Ctrl-C saves."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from minivgg import checkpoint

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
    train("--data", str(data), "--epochs", "4", "--out", str(out), *TINY)
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


def test_resume_continues_exactly(data, four_epochs, tmp_path):
    train("--data", str(data), "--epochs", "2", "--out", str(tmp_path), *TINY)
    train("--data", str(data), "--epochs", "4", "--resume", str(tmp_path / "last.npz"),
          "--out", str(tmp_path), *TINY)
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
