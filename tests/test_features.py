"""features/ and data/transfer.py: very deep features on another data set (Appendix B).

Expected descriptors are computed here independently: the FC network (model.features,
flatten, fc6, relu6, fc7, relu7 as Linear layers) on the same pixels, normalised by hand.
Measures are checked against hand-worked confusions and rankings.
"""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from helpers import META, assert_one_line_error, image, run_cli, save_tiny, tiny_model
from minivgg import backend, data, nn, ops
from minivgg import features as F
from minivgg.errors import UserError, run_cli as run_main
from minivgg.evaluate import Net
from minivgg.data import transfer
from minivgg.features import cli, protocol, store
from minivgg.tape import Tensor, no_grad
from strict_arrays import cpu_device, strict_device  # noqa: F401


@pytest.fixture(autouse=True)
def cpu():
    backend.set_device("cpu")


def net(scales=(32,), seed=0):
    return Net(f"net{seed}", tiny_model(seed), dict(META), list(scales))


def fc_penultimate(model, img):
    """relu7 of the FC network on one crop-size image (float64), written out here."""
    x = (np.asarray(img, np.float64) - META["mean_rgb"]) / META["std_rgb"]
    x = Tensor(backend.to_device(x.astype(np.float32).transpose(2, 0, 1)[None]))
    fc = model.classifier
    with no_grad():
        h = ops.flatten(model.features(x))
        for i in range(5):  # fc6, relu6, drop6 (eval: identity), fc7, relu7 -- not fc8
            h = fc[i](h)
    return backend.to_host(h.data)[0].astype(np.float64)


def unit(v):
    return v / np.linalg.norm(v)


def describe(nets, imgs, aggregate="stack", flip=True, batch_size=32):
    return F.descriptors(nets, imgs, [i.shape[:2] for i in imgs], aggregate, flip,
                         batch_size)


# -- the descriptor (App. B) ------------------------------------------------------------------
@given(seed=st.integers(0, 2**16), side=st.sampled_from([32, 40, 57]))
def test_a_1x1_dense_map_gives_the_fc_networks_penultimate_activations(seed, side):
    """At Q = 32 (the crop) the dense map is 1x1: the descriptor is relu7 of the FC
    network on the rescaled pixels, before and after L2 normalisation."""
    n, img = net(), image(side, side, seed)
    want = fc_penultimate(n.model, data.rescale(img, 32))
    raw = F.scale_descriptors(n, n.model.dense(), [img], 32, flip=False)[0]
    np.testing.assert_allclose(raw, want, rtol=1e-5, atol=1e-6)
    X, blocks = describe([n], [img], flip=False)
    np.testing.assert_allclose(X[0], unit(want), rtol=1e-5, atol=1e-6)
    assert blocks == [("net0 Q=32", 16)]


def test_the_last_layer_is_left_out_and_the_map_is_after_the_relu():
    n, img = net(), image(32, 32, 2)
    d = F.scale_descriptors(n, n.model.dense(), [img], 32, flip=False)[0]
    assert d.shape == (16,)  # fc_width, not the 3 classes
    assert (d >= 0).all() and (d == 0).any() and (d > 0).any()  # relu7's output


def test_the_penultimate_map_is_average_pooled_over_positions():
    # 64x96 at Q=64: a 2x3 map of relu7; the descriptor is its mean, not its max
    n, img = net(), image(64, 96, 8)
    x = ((img - np.asarray(META["mean_rgb"])) / META["std_rgb"]).astype(np.float32)
    dense = n.model.dense()
    with no_grad():
        h = dense.features(Tensor(x.transpose(2, 0, 1)[None].copy()))
        for layer in list(dense.classifier)[:5]:
            h = layer(h)
    assert h.shape[2:] == (2, 3)
    got = F.scale_descriptors(n, dense, [img], 64, flip=False)[0]
    np.testing.assert_allclose(got, h.data[0].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, h.data[0].max(axis=(1, 2)), atol=1e-4)


def test_flip_averages_the_image_and_its_mirror_before_normalising():
    n, img = net(), image(32, 32, 3)
    a, b = fc_penultimate(n.model, img), fc_penultimate(n.model, data.hflip(img))
    assert not np.allclose(a, b, atol=1e-3)  # else a missing flip could not be seen
    X, _ = describe([n], [img], flip=True)
    np.testing.assert_allclose(X[0], unit((a + b) / 2), rtol=1e-5, atol=1e-6)


def _per_scale(n, img, scales):
    return [F.scale_descriptors(n, n.model.dense(), [img], q, flip=True)[0] for q in scales]


def test_scales_are_stacked_in_the_order_given_or_averaged():
    img = image(48, 64, 4)
    d32, d48 = _per_scale(net(), img, (32, 48))
    assert not np.allclose(unit(d32), unit(d48), atol=1e-3)
    X, blocks = describe([net((32, 48))], [img])
    np.testing.assert_allclose(X[0], unit(np.concatenate([d32, d48])), rtol=1e-5, atol=1e-6)
    assert blocks == [("net0 Q=32", 16), ("net0 Q=48", 16)]
    X, _ = describe([net((48, 32))], [img])
    np.testing.assert_allclose(X[0], unit(np.concatenate([d48, d32])), rtol=1e-5, atol=1e-6)
    X, blocks = describe([net((32, 48))], [img], aggregate="average")
    np.testing.assert_allclose(X[0], unit((d32 + d48) / 2), rtol=1e-5, atol=1e-6)
    assert blocks == [("net0 Q=32,48 averaged", 16)]


def test_late_fusion_stacks_each_nets_normalised_descriptor():
    img = image(40, 40, 5)
    a = unit(np.concatenate(_per_scale(net(seed=0), img, (32, 40))))
    b = unit(np.concatenate(_per_scale(net(seed=1), img, (32, 40))))
    X, blocks = describe([net((32, 40), 0), net((32, 40), 1)], [img])
    np.testing.assert_allclose(X[0], np.concatenate([a, b]) / np.sqrt(2), rtol=1e-5,
                               atol=1e-6)
    assert [name for name, _ in blocks] == ["net0 Q=32", "net0 Q=40", "net1 Q=32",
                                            "net1 Q=40"]


@given(seeds=st.lists(st.integers(0, 2**16), min_size=1, max_size=4),
       shapes=st.lists(st.tuples(st.integers(32, 70), st.integers(32, 70)), min_size=4,
                       max_size=4),
       aggregate=st.sampled_from(F.AGGREGATES), batch=st.integers(1, 3),
       n_nets=st.integers(1, 2))
def test_unit_norm_and_batches_by_size_change_nothing(seeds, shapes, aggregate, batch, n_nets):
    imgs = [image(h, w, s) for s, (h, w) in zip(seeds, shapes)]
    nets = [net((32, 36), seed) for seed in range(n_nets)]
    X, _ = describe(nets, imgs, aggregate, batch_size=batch)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1, rtol=1e-5)
    one_by_one = np.concatenate([describe(nets, [i], aggregate)[0] for i in imgs])
    np.testing.assert_allclose(X, one_by_one, rtol=1e-5, atol=1e-6)


@given(h=st.integers(1, 400), w=st.integers(1, 400), q=st.integers(1, 80))
def test_rescaled_shape_is_what_rescale_gives(h, w, q):
    img = np.zeros((h, w, 3), np.uint8)
    assert F.rescaled_shape(h, w, q) == data.rescale(img, q).shape[:2]


def test_batches_group_equal_shapes_in_order():
    shapes = [(32, 40), (32, 32), (32, 40), (32, 40), (32, 32)]
    assert list(F.batches(shapes, 2)) == [[0, 2], [3], [1, 4]]


class TinyDense:
    """A dense view small enough for the simulator: a 2x2 conv, then fc6-fc8 as 1x1s."""

    def __init__(self):
        rng = np.random.default_rng(4)

        def conv(c, k, side=1):
            return nn.Conv2d(c, k, side, init="kaiming", rng=rng)
        self.features = nn.Sequential(conv(3, 4, 2))
        self.classifier = nn.Sequential(conv(4, 5), nn.ReLU(), nn.Identity(), conv(5, 6),
                                        nn.ReLU(), nn.Identity(), conv(6, 3))

    def dense(self):
        return self


def test_descriptors_on_the_device_equal_cpu(strict_device):  # noqa: F811
    """The cuda path without a GPU: device arrays only through backend's helpers."""
    img = image(3, 4, 6)  # Q = 3: a 2x3 map of 6 channels, averaged
    got = describe([Net("n", TinyDense(), dict(META), [3])], [img])[0]
    with cpu_device():
        want = describe([Net("n", TinyDense(), dict(META), [3])], [img])[0]
    assert type(got) is np.ndarray and got.shape == (1, 6)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# -- the protocol ------------------------------------------------------------------------------
@given(counts=st.lists(st.integers(4, 12), min_size=2, max_size=5), n_train=st.integers(1, 3),
       n_test=st.one_of(st.none(), st.integers(1, 5)), seed=st.integers(0, 99))
def test_splits_have_the_requested_counts_and_replay_from_the_seed(counts, n_train, n_test,
                                                                    seed):
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)),
                                                               counts))
    classes = [f"c{i}" for i in range(len(counts))]
    splits = F.draw_splits(labels, classes, n_train, n_test, 3, seed)
    for train, test in splits:
        assert not set(train) & set(test)
        for c, n in enumerate(counts):
            assert (labels[train] == c).sum() == n_train
            want = n - n_train if n_test is None else min(n_test, n - n_train)
            assert (labels[test] == c).sum() == want
    again = F.draw_splits(labels, classes, n_train, n_test, 3, seed)
    assert all((a == b).all() for s, t in zip(splits, again) for a, b in zip(s, t))
    other = F.draw_splits(labels, classes, n_train, n_test, 3, seed + 1000)
    assert any(not np.array_equal(s[0], t[0]) for s, t in zip(splits, other))


def test_each_split_draws_anew():
    labels = np.repeat(np.arange(10), 20)
    splits = F.draw_splits(labels, [str(c) for c in range(10)], 5, 10, 3, 0)
    for i in range(3):
        for j in range(i):
            assert not np.array_equal(splits[i][0], splits[j][0])
            assert not np.array_equal(splits[i][1], splits[j][1])


def test_a_class_with_too_few_images_is_named():
    labels = np.array([0] * 5 + [1] * 3)
    with pytest.raises(UserError, match="'b' has 3 image"):
        F.draw_splits(labels, ["a", "b"], 3, 50)


def test_holdout_takes_a_fifth_of_each_class():
    labels = np.repeat(np.arange(3), 30)
    train = np.arange(0, 90, 1)
    fit, val = F.holdout(train, labels, 0.2, (0, 0))
    assert sorted(np.concatenate([fit, val])) == list(train)
    assert [int((labels[val] == c).sum()) for c in range(3)] == [6, 6, 6]


def test_mean_class_recall_of_a_hand_worked_confusion():
    # rows: true class, columns: predicted. Recalls 3/4, 1/2, 2/2 -> mean 0.75,
    # while plain accuracy is 7/10.
    confusion = [[3, 1, 0], [1, 1, 2], [0, 0, 2]]
    y_true, y_pred = [], []
    for t, row in enumerate(confusion):
        for p, n in enumerate(row):
            y_true += [t] * n
            y_pred += [p] * n
    assert F.mean_class_recall(y_true, y_pred, 3) == pytest.approx((3 / 4 + 1 / 4 + 1) / 3)
    assert F.mean_class_recall(y_true, y_pred, 3) != pytest.approx(np.mean(
        np.array(y_true) == np.array(y_pred)))


def test_average_precision_by_hand_is_vocs():
    # ranked + - + - -: precision 1 at the first positive, 2/3 at the second
    assert F.average_precision([5, 4, 3, 2, 1], [1, 0, 1, 0, 0]) == pytest.approx(
        (1 + 2 / 3) / 2)
    # ranked - + +: VOC takes the best precision at this recall or beyond: 2/3 for both
    # positives (the plain area under the curve would be (1/2 + 2/3) / 2)
    assert F.average_precision([3, 2, 1], [0, 1, 1]) == pytest.approx(2 / 3)
    # class 0 ranks its one positive first (AP 1); class 1 ranks + - + (AP 5/6)
    scores = np.array([[0.9, 0.5], [0.2, 0.4], [0.6, 0.8]])
    assert F.mean_average_precision(scores, [0, 1, 1], 2) == pytest.approx((1 + 5 / 6) / 2)


def test_the_svm_protocol_separates_separable_classes():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 12)
    X = np.eye(3)[y] + 0.05 * rng.standard_normal((36, 3))
    splits = F.draw_splits(y, list("abc"), 5, None, 2, 0)
    r = protocol.run(X, y, splits, 3)
    assert r["recall"] == 1.0 and r["mAP"] == 1.0 and len(r["splits"]) == 2
    noise = protocol.run(rng.standard_normal((36, 3)), y, splits, 3)
    assert noise["recall"] < 0.9


# -- the features file and the command line ----------------------------------------------------
def write_folder(root, per_class=6, classes=("circle", "square", "star")):
    sizes = ((40, 48), (52, 40), (32, 32))
    for c, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(image(*sizes[(c + i) % 3], seed=10 * c + i)).save(d / f"{i}.png")
    return root


def main(capsys, *argv):
    """Run the CLI in this process: (exit status, stdout, stderr)."""
    try:
        status = run_main(cli.main, [str(a) for a in argv])
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line(status, err, *words):
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], lines[0]


def test_extract_then_classify(tmp_path, capsys):
    ckpt = save_tiny(tmp_path / "a.npz")
    root, out = write_folder(tmp_path / "imgs"), tmp_path / "f.npz"
    status, text, _ = main(capsys, "extract", ckpt, ckpt, "--data", root, "--out", out,
                           "--scales", "32", "40", "--batch-size", "2", "--device", "cpu")
    assert status == 0, text
    f = store.load(str(out))
    assert f["features"].shape == (18, 2 * 2 * 16) and f["pixels"].shape == (18, 768)
    assert f["classes"] == ["circle", "square", "star"] and f["files"][0] == "circle/0.png"
    np.testing.assert_allclose(np.linalg.norm(f["features"], axis=1), 1, rtol=1e-5)
    assert f["info"]["aggregate"] == "stack" and f["block_dims"] == [16] * 4
    status, text, _ = main(capsys, "classify", out, "--splits", "2", "--train-per-class", "3",
                           "--test-per-class", "2")
    assert status == 0 and "mean class recall" in text and "raw pixels" in text, text
    r = json.loads((tmp_path / "f_classify.json").read_text())
    assert set(r["results"]) == {"features (64-D)", "raw pixels (768-D)"}
    assert all(s["n_test"] == 6 for s in r["results"]["features (64-D)"]["splits"])


def test_too_few_images_for_train_per_class_is_one_line(tmp_path):
    # through real subprocesses: exit status 2, one line, no traceback
    ckpt = save_tiny(tmp_path / "a.npz")
    root, out = write_folder(tmp_path / "imgs", per_class=3), tmp_path / "f.npz"
    proc = run_cli("minivgg.features", "extract", ckpt, "--data", root, "--out", out,
                   "--scales", "32", "--threads", "2")  # run_cli adds --device cpu
    assert proc.returncode == 0, proc.stderr
    assert "; 2 threads for the convs' loops, 1 BLAS thread a call" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "minivgg.features", "classify", str(out),
                           "--train-per-class", "30"], capture_output=True, text=True,
                          timeout=120)
    assert_one_line_error(proc, "'circle' has 3 image", "--train-per-class 30")


def test_a_pickled_or_mismatched_npz_is_one_line(tmp_path, capsys):
    bad = tmp_path / "a.npz"  # (no file name here may hold the words looked for)
    np.savez(bad, features=np.zeros((2, 3)), labels=np.array([0, 1], dtype=object))
    assert_one_line(*main(capsys, "classify", bad)[::2], "pickled object array ('labels')",
                    "refusing")
    raw = tmp_path / "b.npz"
    raw.write_bytes(pickle.dumps({"features": [1]}))
    assert_one_line(*main(capsys, "classify", raw)[::2], "is a pickle", "refusing")
    store.save(tmp_path / "m.npz", np.ones((4, 3)), [0, 1, 0], ["a", "b"])
    assert_one_line(*main(capsys, "classify", tmp_path / "m.npz")[::2], "'labels'", "4")
    np.savez(tmp_path / "c.npz", features=np.ones((2, 3)), labels=[0, 5], classes=["a", "b"])
    assert_one_line(*main(capsys, "classify", tmp_path / "c.npz")[::2], "5", "2 classes")
    assert_one_line(*main(capsys, "classify", tmp_path / "none.npz")[::2], "not found")


def test_other_bad_input_is_one_line(tmp_path, capsys):
    ckpt = save_tiny(tmp_path / "a.npz")
    (tmp_path / "tree" / "train" / "x").mkdir(parents=True)
    (tmp_path / "tree" / "val").mkdir()
    args = ("extract", ckpt, "--device", "cpu", "--out", tmp_path / "f.npz", "--data")
    assert_one_line(*main(capsys, *args, tmp_path / "tree")[::2], "train, val", "not classes")
    assert_one_line(*main(capsys, *args, tmp_path / "nowhere")[::2], "not a directory")
    assert_one_line(*main(capsys, *args, tmp_path, "--scales", "24")[::2], "smaller than")
    assert_one_line(*main(capsys, "classify", "f.npz", "--test-per-class", "x")[::2], "'x'")


def test_a_missing_scikit_learn_names_the_extra(tmp_path, capsys, monkeypatch):
    store.save(tmp_path / "f.npz", np.eye(4), [0, 1, 0, 1], ["a", "b"])
    monkeypatch.setitem(sys.modules, "sklearn.svm", None)  # its import fails
    assert_one_line(*main(capsys, "classify", tmp_path / "f.npz")[::2], "scikit-learn",
                    "minivgg[features]")
    # a plain install has no scikit-learn: everything but the SVM must import without it
    code = ("import sys; sys.modules['sklearn'] = None; import minivgg.features as f; "
            "import minivgg.data; f.draw_splits([0, 0, 1, 1], 'ab', 1); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr


# -- the transfer set --------------------------------------------------------------------------
def _mask(parts, n=128):
    im = Image.new("L", (n, n))
    draw = ImageDraw.Draw(im)
    for pts, fill in parts:
        draw.polygon([tuple(p) for p in pts * 0.45 * n + n / 2], fill=255 if fill else 0)
    return np.asarray(im) > 127


def test_transfer_classes_are_new_outlines():
    """No transfer class is a training class by name or (nearly) by outline: upright,
    the overlap (IoU) with every shapes outline stays under 0.75; each other's too."""
    assert not set(data.TRANSFER_CLASSES) & set(data.SHAPE_CLASSES)
    masks = {k: _mask(v) for k, v in data.TRANSFER_OUTLINES.items()}
    for name, m in masks.items():
        for other, parts in list(data.SHAPES.items()) + list(data.TRANSFER_OUTLINES.items()):
            if other != name:
                o = _mask(parts)
                assert (m & o).sum() / (m | o).sum() < 0.75, (name, other)


def test_transfer_images_show_the_transfer_outlines():
    # the same random draws with shapes.SHAPES and with TRANSFER_OUTLINES: only the
    # object differs, and it fills what the outline's area says
    for c, name in enumerate(data.TRANSFER_CLASSES):
        def draw(outlines):
            return data.render_shape(c, np.random.default_rng(c), 64, 40, outlines)[2]
        new, old = draw(data.TRANSFER_OUTLINES), draw(None)
        assert not np.allclose(new, old, atol=0.1), name
        area = _mask(data.TRANSFER_OUTLINES[name], 64).mean() / 0.45 ** 2 * (20 / 64) ** 2
        assert new.mean() == pytest.approx(area, rel=0.25), name


def test_transfer_layout_is_deterministic_and_reads_as_a_folder(tmp_path, capsys):
    a = data.make_transfer(tmp_path / "a", size=32, per_class=3, progress=False)
    assert run_main(data.main, ["transfer", str(tmp_path / "b"), "--size", "32",
                                "--per-class", "3"]) == 0
    ds, _ = cli.read_folder(a)
    assert ds.classes == data.TRANSFER_CLASSES and len(ds) == 30
    assert np.bincount(ds.targets).tolist() == [3] * 10
    for p, _ in ds.samples:
        rel = os.path.relpath(p, a)
        assert open(p, "rb").read() == open(os.path.join(tmp_path / "b", rel), "rb").read()
    rows = open(os.path.join(a, "bboxes.csv")).read().splitlines()
    assert len(rows) == 31 and rows[1].startswith("bowtie/000000.png,bowtie,")
    lo, hi = data.SIZE_RANGE
    for row in rows[1:]:
        x0, y0, x1, y1, size = (float(v) for v in row.split(",")[2:])
        assert lo * 32 <= size <= hi * 32
        # the box of a shape whose farthest point is size/2 from its centre (stretched
        # by 0.9 at least) is at least 0.9 * size / sqrt(2) wide or high
        assert 0.6 * size <= max(x1 - x0, y1 - y0) <= 1.1 * size + 2, row
    meta = json.load(open(os.path.join(a, "meta.json")))
    assert meta["dataset"] == "transfer" and meta["per_class"] == 3
    # its own random streams: no image shares a background or colour draw with shapes
    assert all(key[1] not in (0, 1) for *_, key in transfer._jobs(3, 0, (0.3, 0.9)))


def test_transfer_bad_arguments_are_one_line(tmp_path, capsys):
    for args in (["--size-range", "0.9", "0.5"], ["--per-class", "0"]):
        try:
            run_main(data.main, ["transfer", str(tmp_path / "t"), *args])
        except SystemExit as e:
            assert e.code == 2
        assert_one_line(2, capsys.readouterr()[1], args[0])
