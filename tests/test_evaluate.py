"""evaluate.py: dense and multi-crop evaluation (sect. 3.2, 4.3), scales (4.1, 4.2), fusion
(4.4), the measures, and the command line's bad inputs.

Expected values are computed here independently: the FC network (model.forward) on the
crop for dense evaluation, hand-written grid coordinates and errors.
"""
import json
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from minivgg import backend, evaluate as ev
from minivgg.data import hflip
from minivgg.errors import UserError
from minivgg.tape import Tensor, no_grad

from helpers import (CLASSES, MEAN, META, STD, assert_one_line_error, fc_posteriors, image,
                     on_threads, run_cli, save_tiny, tiny_model)


@pytest.fixture(autouse=True)
def cpu():
    backend.set_device("cpu")


def write_folder(root, split="val", per_class=2, sizes=((40, 48), (52, 40))):
    for c, name in enumerate(CLASSES):
        d = root / split / name
        d.mkdir(parents=True)
        for i in range(per_class):
            h, w = sizes[(c + i) % len(sizes)]
            Image.fromarray(image(h, w, seed=10 * c + i)).save(d / f"{i}.png")
    return str(root)


# -- dense evaluation (sect. 3.2) -------------------------------------------------------------
def test_dense_on_a_crop_size_image_equals_the_fc_network():
    model, meta, img = tiny_model(), META, image(32, 32)
    got = ev.posteriors_dense(model, img, [32], flip=False, meta=meta)
    want = fc_posteriors(model, img, meta)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert abs(got.sum() - 1) < 1e-9


def test_flip_averages_the_posteriors_of_the_image_and_its_mirror():
    model, meta, img = tiny_model(), META, image(32, 32, seed=3)
    a, b = fc_posteriors(model, img, meta), fc_posteriors(model, hflip(img), meta)
    assert not np.allclose(a, b, atol=1e-3)  # else the test could not see a missing flip
    got = ev.posteriors_dense(model, img, [32], flip=True, meta=meta)
    np.testing.assert_allclose(got, (a + b) / 2, rtol=1e-5, atol=1e-6)


def test_dense_averages_the_class_score_map_before_the_soft_max():
    # 64x96 at Q=64 gives a 2x3 score map; sect. 3.2: mean over positions, then soft-max.
    model, img = tiny_model(), image(64, 96, seed=8)
    x = ((img - np.asarray(MEAN)) / STD).astype(np.float32).transpose(2, 0, 1)[None].copy()
    with no_grad():
        smap = model.dense()(Tensor(x)).data.astype(np.float64)
    assert smap.shape == (1, 3, 2, 3)
    z = smap.mean(axis=(2, 3))[0]
    want = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    got = ev.posteriors_dense(model, img, [64], flip=False, meta=META)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    z_max = smap.max(axis=(2, 3))[0]  # max-pooling instead would be seen
    assert not np.allclose(np.exp(z_max) / np.exp(z_max).sum(), want, atol=1e-3)


def test_dense_averages_posteriors_over_scales():
    model, meta, img = tiny_model(), META, image(48, 64, seed=4)
    one = [ev.posteriors_dense(model, img, [q], True, meta) for q in (32, 48)]
    assert not np.allclose(one[0], one[1], atol=1e-4)
    np.testing.assert_allclose(ev.posteriors_dense(model, img, [32, 48], True, meta),
                               (one[0] + one[1]) / 2, rtol=1e-12)


def test_dense_takes_images_of_any_size_at_least_the_crop():
    model = tiny_model()
    for h, w in ((32, 33), (70, 41), (35, 100)):
        p = ev.posteriors_dense(model, image(h, w), [32, 45], True, META)
        assert p.shape == (3,) and abs(p.sum() - 1) < 1e-9


# -- multi-crop (sect. 3.2, 4.3) ----------------------------------------------------------------
def test_crop_grid_places_corners_and_centre():
    # h=40, w=50, crop 32: y offsets linspace(0, 8, 5) = 0 2 4 6 8;
    # x offsets linspace(0, 18, 5) = 0 4.5 9 13.5 18 -> 0 4 9 13 18 (halves down).
    grid = ev.crop_grid(40, 50, 32)
    assert len(grid) == 25
    assert grid == [(y, x) for y in (0, 2, 4, 6, 8) for x in (0, 4, 9, 13, 18)]
    assert {grid[0], grid[4], grid[20], grid[24]} == {(0, 0), (0, 18), (8, 0), (8, 18)}
    assert grid[12] == ((40 - 32) // 2, (50 - 32) // 2)  # data.center_crop's window


def test_crop_grid_rounds_to_the_nearest_pixel_halves_down():
    # h=41: linspace(0, 9, 5) = 0 2.25 4.5 6.75 9 -> 0 2 4 7 9 (floor would give 6);
    # w=47: linspace(0, 15, 5) = 0 3.75 7.5 11.25 15 -> 0 4 7 11 15 (rint would give 8).
    grid = ev.crop_grid(41, 47, 32)
    assert grid == [(y, x) for y in (0, 2, 4, 7, 9) for x in (0, 4, 7, 11, 15)]
    assert grid[12] == ((41 - 32) // 2, (47 - 32) // 2)


def test_multicrop_views_are_25_crops_and_their_mirrors():
    img = image(40, 50, seed=5)
    views = ev.multicrop_views(img, 32)
    assert views.shape == (50, 32, 32, 3)
    np.testing.assert_array_equal(views[0], img[0:32, 0:32])
    np.testing.assert_array_equal(views[24], img[8:40, 18:50])
    np.testing.assert_array_equal(views[12], img[4:36, 9:41])
    np.testing.assert_array_equal(views[25 + 24], img[8:40, 18:50][:, ::-1])


def test_multicrop_runs_50_crops_per_scale_and_averages_their_posteriors():
    model, meta, img = tiny_model(), META, image(40, 50, seed=6)
    seen = []
    forward = model.forward
    model.forward = lambda x: (seen.append(x.data.copy()), forward(x))[1]
    got = ev.posteriors_multicrop(model, img, [32, 40], meta=meta)
    assert sum(len(x) for x in seen) == 100  # 50 per scale
    del model.forward
    want = []
    for q in (32, 40):
        from minivgg.data import rescale
        r = rescale(img, q)
        h, w = r.shape[:2]
        for y, x in ev.crop_grid(h, w, 32):
            c = r[y:y + 32, x:x + 32]
            want += [fc_posteriors(model, c, meta), fc_posteriors(model, c[:, ::-1], meta)]
    np.testing.assert_allclose(got, np.mean(want, axis=0), rtol=1e-5, atol=1e-6)


def test_both_is_the_mean_of_dense_and_multicrop():
    net = ev.Net("x", tiny_model(), dict(META, classes=CLASSES), [36])
    img = image(40, 44, seed=7)
    d = ev.posteriors(net, img, "dense")
    m = ev.posteriors(net, img, "multi-crop")
    assert not np.allclose(d, m, atol=1e-4)
    np.testing.assert_allclose(ev.posteriors(net, img, "both"), (d + m) / 2, rtol=1e-12)


# -- scales (sect. 4.1, 4.2) ------------------------------------------------------------------
def test_default_scales():
    assert ev.default_scales(dict(scale=256, scale_jitter=None), 224) == [256]
    assert ev.default_scales(dict(scale=256), 224, multi_scale=True) == [224, 256, 288]
    assert ev.default_scales(dict(scale=None, scale_jitter=[256, 512]), 224) == [384]
    assert ev.default_scales(dict(scale_jitter=[256, 512]), 224, True) == [256, 384, 512]
    assert ev.default_scales(dict(scale=40), 32, multi_scale=True) == [35, 40, 45]
    assert ev.default_scales(dict(scale=32), 32, multi_scale=True) == [32, 37]
    with pytest.raises(UserError):
        ev.default_scales({}, 32)


def test_a_scale_below_the_crop_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="smaller than the crop"):
        ev.load_net(save_tiny(tmp_path / "a.npz"), scales=[24])


def test_preprocess_subtracts_the_mean_and_divides_by_std_when_given():
    img = np.full((2, 2, 3), 100, np.uint8)
    np.testing.assert_array_equal(ev.preprocess(img, dict(mean_rgb=[10, 20, 30]))[0, 0],
                                  [90, 80, 70])
    x = ev.preprocess(img, dict(mean_rgb=[10, 20, 30], std_rgb=[3, 2, 1]))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x[1, 1], [30, 40, 70])
    np.testing.assert_array_equal(ev.preprocess(img, dict(mean_rgb=[0] * 3, std_rgb=None)),
                                  img.astype(np.float32))


# -- fusion (sect. 4.4) -----------------------------------------------------------------------
def test_fuse_is_the_mean():
    a, b = np.array([[0.7, 0.2, 0.1]]), np.array([[0.1, 0.3, 0.6]])
    np.testing.assert_allclose(ev.fuse([a, b]), [[0.4, 0.25, 0.35]])
    np.testing.assert_array_equal(ev.fuse([a, a]), a)


def test_fusing_a_checkpoint_with_itself_changes_nothing(tmp_path):
    ckpt = save_tiny(tmp_path / "a.npz")
    ds = ev._read_dataset(write_folder(tmp_path / "data"), "val", CLASSES)
    one = ev.evaluate(ev.load_nets([ckpt]), ds, "dense", progress=False)
    two = ev.evaluate(ev.load_nets([ckpt, ckpt]), ds, "dense", progress=False)
    np.testing.assert_allclose(two, one, rtol=1e-12)
    other = ev.evaluate(ev.load_nets([save_tiny(tmp_path / "b.npz", seed=1)]), ds, "dense",
                        progress=False)
    assert not np.allclose(other, one, atol=1e-4)  # a different net would be seen


def test_fusion_needs_the_same_classes(tmp_path):
    a = save_tiny(tmp_path / "a.npz")
    b = save_tiny(tmp_path / "b.npz", classes=["x", "y", "z"])
    with pytest.raises(UserError, match="classes differ"):
        ev.load_nets([a, b])


# -- measures (sect. 4) ------------------------------------------------------------------------
def test_top_k_error_on_a_hand_made_example():
    probs = np.array([[0.50, 0.20, 0.10, 0.08, 0.07, 0.05],   # label 0: top-1
                      [0.30, 0.25, 0.20, 0.10, 0.10, 0.05],   # label 2: 3rd -> top-5 only
                      [0.05, 0.06, 0.07, 0.08, 0.09, 0.65],   # label 0: 6th -> miss both
                      [0.10, 0.60, 0.10, 0.10, 0.05, 0.05]])  # label 1: top-1
    labels = np.array([0, 2, 0, 1])
    assert ev.top_k_error(probs, labels, 1) == pytest.approx(2 / 4)
    assert ev.top_k_error(probs, labels, 5) == pytest.approx(1 / 4)
    np.testing.assert_array_equal(ev.confusion_matrix(probs[:, :3], labels, 3),
                                  [[1, 0, 1], [0, 1, 0], [1, 0, 0]])
    acc = ev.per_class_accuracy(probs, labels, 6)
    np.testing.assert_allclose(acc[:3], [0.5, 1.0, 0.0])
    assert np.isnan(acc[3:]).all()


# -- the command line --------------------------------------------------------------------------
def test_cli_missing_checkpoint(tmp_path):
    proc = run_cli("minivgg.evaluate", tmp_path / "nope.npz", "--data", tmp_path)
    assert_one_line_error(proc, "nope.npz", "not found")


def test_cli_scale_below_the_crop(tmp_path):
    ckpt = save_tiny(tmp_path / "a.npz")
    proc = run_cli("minivgg.evaluate", ckpt, "--data", tmp_path, "--scales", "40", "24")
    assert_one_line_error(proc, "scale 24", "crop 32")


def test_cli_negative_threads_is_one_line(tmp_path):
    proc = run_cli("minivgg.evaluate", save_tiny(tmp_path / "a.npz"), "--data", tmp_path,
                   "--threads", "-1")
    assert_one_line_error(proc, "--threads must be at least 0", "-1")


def test_cli_no_readable_image(tmp_path):
    ckpt = save_tiny(tmp_path / "a.npz")
    d = tmp_path / "data" / "val" / "circle"
    d.mkdir(parents=True)
    (d / "broken.png").write_bytes(b"not a png")
    proc = run_cli("minivgg.evaluate", ckpt, "--data", tmp_path / "data")
    assert_one_line_error(proc, "no readable image")


def test_cli_end_to_end_multi_crop_and_dense_with_fusion(tmp_path):
    ckpt, ckpt2 = save_tiny(tmp_path / "a.npz"), save_tiny(tmp_path / "b.npz", seed=1)
    root = write_folder(tmp_path / "data", per_class=1)
    out = tmp_path / "eval"
    proc = run_cli("minivgg.evaluate", ckpt, ckpt2, "--data", root, "--method", "both",
                   "--multi-scale", "--out", out, "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    assert "; 2 threads for the convs' loops, 1 BLAS thread a call" in proc.stdout
    assert "top-1 error" in proc.stdout and "top-5 error" in proc.stdout
    files = sorted(os.listdir(out))
    assert files == ["eval_val_both_q35-40-45_fused2.json",
                     "eval_val_both_q35-40-45_fused2_confusion.png"], files
    r = json.loads((out / files[0]).read_text())
    assert r["n_images"] == 3 and r["classes"] == CLASSES and r["method"] == "both"
    assert r["scales"] == {ckpt: [35, 40, 45], ckpt2: [35, 40, 45]}
    assert r["top5_error"] == 0.0  # 3 classes: every label is in the top 5
    assert np.array(r["confusion"]).sum() == 3
    assert all(v["images"] == 1 for v in r["per_class"].values())
    top1 = sum(im["top5"][0] == im["label"] for im in r["images"]) / 3
    assert r["top1_error"] == pytest.approx(1 - top1)
    # The JSON's posteriors are those of the functions, fused over the two nets, on as many
    # threads (some layers' forward sums in another order on more than one).
    ds = ev._read_dataset(root, "val", CLASSES)
    nets = ev.load_nets([ckpt, ckpt2], multi_scale=True)
    with on_threads(2):
        probs = ev.fuse([ev.evaluate([n], ds, "both", progress=False) for n in nets])
    np.testing.assert_allclose([im["top5_probs"][0] for im in r["images"]],
                               probs.max(axis=1), rtol=1e-9)


# -- preprocessing recorded by minivgg.convert (issue 14) -------------------------------------
def test_preprocess_of_torchvision_weights_is_torchvisions_normalize():
    """RGB / 255, minus ImageNet's mean, over its std: torchvision's ToTensor + Normalize,
    written out here in float64."""
    img = image(5, 7, seed=4)
    meta = dict(preprocess=dict(channels="RGB", scale=1 / 255, mean=[0.485, 0.456, 0.406],
                                std=[0.229, 0.224, 0.225]))
    want = (img / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    got = ev.preprocess(img, meta)
    assert got.dtype == np.float32 and got.shape == img.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_preprocess_of_caffe_weights_reverses_the_channels():
    """Keras / Caffe: BGR, 0-255, minus the mean BGR pixel, no std."""
    img = np.zeros((1, 2, 3), np.uint8)
    img[0, 0], img[0, 1] = (10, 20, 30), (200, 150, 100)  # R, G, B
    meta = dict(preprocess=dict(channels="BGR", scale=1.0, mean=[103.939, 116.779, 123.68],
                                std=None))
    np.testing.assert_allclose(ev.preprocess(img, meta),
                               [[[30 - 103.939, 20 - 116.779, 10 - 123.68],
                                 [100 - 103.939, 150 - 116.779, 200 - 123.68]]], rtol=1e-6)


@given(mean=st.lists(st.floats(0, 255), min_size=3, max_size=3),
       std=st.none() | st.lists(st.floats(0.5, 100), min_size=3, max_size=3),
       seed=st.integers(0, 1000))
def test_an_rgb_preprocess_entry_is_mean_rgb_and_std_rgb_bit_for_bit(mean, std, seed):
    """Checkpoints of minivgg.train (mean_rgb, std_rgb) keep their exact numbers, and the
    same preprocessing written as a preprocess entry gives the same bits."""
    img = image(4, 3, seed)
    old = ev.preprocess(img, dict(mean_rgb=mean, std_rgb=std))
    np.testing.assert_array_equal(old, data_normalise(img, mean, std))
    new = ev.preprocess(img, dict(preprocess=dict(channels="RGB", scale=1, mean=mean,
                                                  std=std)))
    np.testing.assert_array_equal(new, old)


def data_normalise(img, mean, std):
    from minivgg.data import normalise
    return normalise(img, mean, std)


def test_load_net_needs_classes_and_a_preprocessing(tmp_path):
    from minivgg import checkpoint
    checkpoint.save(tmp_path / "a.npz", tiny_model(), meta=dict(classes=CLASSES,
                                                                settings=dict(scale=40)))
    with pytest.raises(UserError, match="records no preprocessing"):
        ev.load_net(str(tmp_path / "a.npz"))
    checkpoint.save(tmp_path / "b.npz", tiny_model(), meta=dict(
        classes=CLASSES, settings=dict(scale=40),
        preprocess=dict(channels="BGR", scale=1.0, mean=[1, 2, 3], std=None)))
    assert ev.load_net(str(tmp_path / "b.npz")).scales == [40]
