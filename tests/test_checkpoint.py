"""checkpoint.py: a bit-exact round trip, and one-line errors for bad files."""
import os

import numpy as np
import pytest

from minivgg import backend, checkpoint, ops
from minivgg.errors import UserError
from minivgg.model import VGG
from minivgg.optim import SGD, PlateauSchedule
from minivgg.tape import Tensor

TINY = dict(num_classes=4, width=1 / 16, fc_width=16, input_size=32)


@pytest.fixture(autouse=True)
def cpu():
    backend.set_device("cpu")


def _trained(seed=0):
    """A tiny D after one SGD step, so velocities and dropout counters are non-trivial."""
    model = VGG("D", **TINY, init="kaiming", seed=seed)
    opt = SGD(model.named_parameters(), lr=0.01)
    sched = PlateauSchedule(opt)
    sched.step(0.5)
    sched.step(0.4)  # a bad epoch: lr drops, counters move
    x = Tensor(np.random.default_rng(seed).standard_normal((2, 3, 32, 32)).astype(np.float32))
    ops.softmax_cross_entropy(model(x), np.array([1, 2], dtype=np.int32)).backward()
    opt.step()
    return model, opt, sched


def test_round_trip_is_bit_exact(tmp_path):
    model, opt, sched = _trained()
    rng = np.random.default_rng(123)
    rng.random(7)  # move it off its initial state
    state = {"epoch": 3, "step": 1234, "best_acc": 0.1 + 0.2, "rng": rng,
             "loss_history": np.array([2.5, 2.25], dtype=np.float32)}
    meta = {"class_names": ["cat", "dog", "eel", "fox"], "mean_rgb": np.array([1.5, 2.5, 3.5])}
    path = tmp_path / "ck.npz"
    checkpoint.save(path, model, opt, sched, state, meta)
    assert [p.name for p in tmp_path.iterdir()] == ["ck.npz"]  # no temp file left

    ck = checkpoint.load(path)
    assert ck["model"]["config"] == "D" and ck["model"]["width"] == 1 / 16
    assert ck["meta"] == {"class_names": ["cat", "dog", "eel", "fox"],
                          "mean_rgb": [1.5, 2.5, 3.5]}
    ts = ck["train_state"]
    assert ts["epoch"] == 3 and ts["step"] == 1234 and ts["best_acc"] == 0.1 + 0.2
    np.testing.assert_array_equal(ts["loss_history"], state["loss_history"])
    assert ts["rng"].bit_generator.state == rng.bit_generator.state
    assert np.array_equal(ts["rng"].random(5), np.random.default_rng(123).random(12)[7:])

    fresh = VGG("D", **TINY, seed=9)
    fresh_opt = SGD(fresh.named_parameters(), lr=1.0, momentum=0.0)
    fresh_sched = PlateauSchedule(fresh_opt)
    checkpoint.restore(fresh, ck, fresh_opt, fresh_sched)
    for (n, p), (_, q) in zip(model.named_parameters(), fresh.named_parameters()):
        assert np.array_equal(p.data, q.data), n
        assert np.array_equal(opt.velocity[n], fresh_opt.velocity[n]), n
    assert (fresh_opt.lr, fresh_opt.momentum) == (opt.lr, opt.momentum)
    assert fresh_sched.state_dict() == sched.state_dict()
    for i in (2, 5):  # dropout (seed, calls): the next masks are the same
        assert (fresh.classifier[i].seed, fresh.classifier[i].calls) == \
            (model.classifier[i].seed, model.classifier[i].calls) != (0, 0)


def test_model_from_checkpoint(tmp_path):
    model, _, _ = _trained(1)
    path = tmp_path / "m.npz"
    checkpoint.save(path, model)
    rebuilt = checkpoint.model_from_checkpoint(checkpoint.load(path))
    assert rebuilt.definition() == model.definition()
    sd, rd = model.state_dict(), rebuilt.state_dict()
    assert all(np.array_equal(sd[k], rd[k]) for k in sd)
    assert rebuilt.classifier[2].calls == 1
    ck = checkpoint.load(path)
    assert ck["optimizer"] is None and ck["schedule"] is None
    with pytest.raises(UserError, match="no optimizer"):
        checkpoint.restore(rebuilt, ck, SGD(rebuilt.named_parameters()))


def test_save_replaces_the_old_file(tmp_path):
    path = tmp_path / "ck.npz"
    checkpoint.save(path, VGG("A", **TINY, seed=1))
    checkpoint.save(path, VGG("A", **TINY, seed=2))
    assert checkpoint.load(path)["model"]["seed"] == 2
    assert os.listdir(tmp_path) == ["ck.npz"]


def _one_line_error(path, *words):
    with pytest.raises(UserError) as e:
        checkpoint.load(path)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_missing_file(tmp_path):
    _one_line_error(tmp_path / "nope.npz", "nope.npz", "not found")


def test_truncated_file(tmp_path):
    path = tmp_path / "ck.npz"
    checkpoint.save(path, VGG("A", **TINY))
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 0):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        _one_line_error(bad, f"cut{cut}.npz", "truncated or corrupt")


def test_file_holding_a_pickled_object(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, definition=np.array([{"config": "A"}], dtype=object))
    _one_line_error(path, "evil.npz", "pickle", "definition")


def test_npz_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3))
    _one_line_error(path, "other.npz", "not a minivgg checkpoint")


def test_checkpoint_of_another_config(tmp_path):
    path = tmp_path / "a.npz"
    checkpoint.save(path, VGG("A", **TINY))
    ck = checkpoint.load(path)
    model = VGG("D", **TINY)  # D's features.2 is a conv (64->64), A's a pool
    with pytest.raises(UserError) as e:
        checkpoint.restore(model, ck)
    msg = str(e.value)
    assert "\n" not in msg and "features.2.weight" in msg and "config A" in msg, msg
    assert "features.3.weight" in msg and "(8, 4, 3, 3)" in msg, msg  # A's tensor there

    wide = VGG("A", **dict(TINY, width=1 / 8))
    with pytest.raises(UserError) as e:
        checkpoint.restore(wide, ck)
    msg = str(e.value)
    assert "features.0.weight" in msg and "(4, 3, 3, 3)" in msg and "(8, 3, 3, 3)" in msg, msg


# -- the preprocessing a checkpoint records (issue 14) -----------------------------------------
def test_preprocessing_from_mean_rgb_or_a_preprocess_entry():
    assert checkpoint.preprocessing(dict(mean_rgb=[1, 2, 3], std_rgb=None)) == dict(
        channels="RGB", scale=1.0, mean=[1.0, 2.0, 3.0], std=None)
    assert checkpoint.preprocessing(dict(mean_rgb=[1, 2, 3], std_rgb=[4, 5, 6]))["std"] == \
        [4.0, 5.0, 6.0]
    entry = dict(channels="bgr", scale=1, mean=[103.939, 116.779, 123.68], std=None)
    got = checkpoint.preprocessing(dict(preprocess=entry, mean_rgb=[0, 0, 0]))
    assert got == dict(channels="BGR", scale=1.0, mean=[103.939, 116.779, 123.68], std=None)


@pytest.mark.parametrize("meta,words", [
    ({}, "records no preprocessing"),
    ({"preprocess": {"channels": "RGB"}}, "malformed (KeyError"),
    ({"preprocess": {"channels": "GBR", "mean": [0, 0, 0]}}, "malformed"),
    ({"preprocess": {"channels": "RGB", "mean": [0, 0]}}, "malformed"),
    ({"preprocess": {"channels": "RGB", "mean": [0, 0, 0], "scale": 0}}, "malformed"),
])
def test_a_missing_or_malformed_preprocessing_is_one_line(meta, words):
    with pytest.raises(UserError, match=words.replace("(", r"\(")):
        checkpoint.preprocessing(meta)


def test_peek_reads_the_definition_only(tmp_path, monkeypatch):
    path = tmp_path / "a.npz"
    checkpoint.save(path, VGG("A", **TINY), meta={"classes": list("abcd")})
    read = []
    real = np.lib.npyio.NpzFile.__getitem__

    def spy(self, key):
        read.append(key)
        return real(self, key)
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", spy)
    got = checkpoint.peek(path)
    assert got["model"]["config"] == "A" and got["meta"] == {"classes": list("abcd")}
    assert not [k for k in read if k.startswith("param.")], read
    with pytest.raises(UserError, match="not found"):
        checkpoint.peek(tmp_path / "missing.npz")
