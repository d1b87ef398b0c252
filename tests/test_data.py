"""minivgg.data: image folders, the shapes set, the sect. 3.1 transforms, the Loader.

Expected values are worked out by hand (or from a construction with a known answer), not
by calling the code under test a second time.
"""
import gc
import io
import os
import threading
import warnings

import numpy as np
import pytest
from hypothesis import given, strategies as st
from PIL import Image

from minivgg import data
from minivgg.data import (ArrayDataset, DataError, ImageFolder, Loader, SkippedImagesWarning,
                          center_crop, hflip, pca_lighting, pca_shift, random_crop,
                          random_flip, read_image, rescale, rgb_statistics, subtract_mean)
from minivgg.errors import UserError


# -- helpers ---------------------------------------------------------------------------------
def save(path, im, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im.save(path, fmt)
    return path


def solid(colour, size=(6, 4)):
    return Image.new("RGB", size, colour)


def tree(root, spec, split="train"):
    """spec: {class: n images}; image k of class c is a solid colour (10*k, 0, 0)."""
    for c, n in spec.items():
        os.makedirs(root / split / c, exist_ok=True)
        for k in range(n):
            save(str(root / split / c / f"{k}.png"), solid((10 * k, 0, 0)))
    return root


def one_line(e):
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


# -- ImageFolder -----------------------------------------------------------------------------
def test_classes_sorted_labels_follow(tmp_path):
    tree(tmp_path, {"zebra": 2, "apple": 1, "mango": 3})
    (tmp_path / "train" / "notes.txt").write_text("not a class")  # files are not classes
    ds = ImageFolder(tmp_path, "train")
    assert ds.classes == ["apple", "mango", "zebra"]
    assert len(ds) == 6 and ds.targets.tolist() == [0, 1, 1, 1, 2, 2]
    img, label = ds[5]
    assert img.shape == (4, 6, 3) and img.dtype == np.uint8 and label == 2
    assert img[0, 0].tolist() == [10, 0, 0]


def test_val_uses_the_training_classes(tmp_path):
    tree(tmp_path, {"a": 1, "b": 1, "c": 1})
    tree(tmp_path, {"c": 2}, split="val")  # val lacks a and b: c must still be label 2
    val = ImageFolder(tmp_path, "val")
    assert val.classes == ["a", "b", "c"] and val.targets.tolist() == [2, 2]


def test_extensions_case_insensitive_hidden_and_other_files_ignored(tmp_path):
    d = tmp_path / "train" / "x"
    save(str(d / "A.JPG"), solid((0, 0, 0)), "JPEG")
    save(str(d / "b.Png"), solid((0, 0, 0)), "PNG")
    save(str(d / "c.bmp"), solid((0, 0, 0)))
    save(str(d / ".hidden.png"), solid((0, 0, 0)))
    (d / "labels.csv").write_text("x")
    assert len(ImageFolder(tmp_path, "train")) == 3


MODE_CASES = {
    # name: (image, expected RGB of pixel (0, 0)), expectations worked out by hand
    "L": (Image.new("L", (2, 2), 77), (77, 77, 77)),
    # RGBA composited on black: round(200 * 128/255) = 100, 50.2 -> 50, 25.1 -> 25
    "RGBA": (Image.new("RGBA", (2, 2), (200, 100, 50, 128)), (100, 50, 25)),
    "RGBA-opaque": (Image.new("RGBA", (2, 2), (200, 100, 50, 255)), (200, 100, 50)),
    "LA": (Image.new("LA", (2, 2), (90, 255)), (90, 90, 90)),
    # CMYK -> RGB: (255 - c)(255 - k)/255: 205*195/255 = 156.8, 118.5, 80.3
    "CMYK": (Image.new("CMYK", (2, 2), (50, 100, 150, 60)), (157, 119, 80)),
}


@pytest.mark.parametrize("name", sorted(MODE_CASES))
def test_mode_conversion(tmp_path, name):
    im, want = MODE_CASES[name]
    fmt = "TIFF" if im.mode == "CMYK" else "PNG"
    path = save(str(tmp_path / f"x.{fmt.lower()}"), im, fmt)
    got = read_image(path)
    assert got.shape == (2, 2, 3) and got.dtype == np.uint8
    assert tuple(got[0, 0]) == want


def test_palette_image(tmp_path):
    im = Image.new("P", (3, 1))
    im.putpalette([0, 0, 0, 10, 20, 30, 200, 210, 220] + [0] * (256 * 3 - 9))
    im.putdata([1, 2, 0])
    got = read_image(save(str(tmp_path / "p.png"), im))
    assert got[0].tolist() == [[10, 20, 30], [200, 210, 220], [0, 0, 0]]


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_is_scaled_not_clipped(tmp_path, fmt):
    a = np.array([[0, 257, 32896, 65535, 1000]], dtype=np.uint16)
    path = save(str(tmp_path / f"g16.{fmt.lower()}"), Image.fromarray(a), fmt)
    got = read_image(path)
    # v * 255 / 65535 = v / 257: 0, 1, 128, 255, and 1000/257 = 3.89 -> 4 (clipping: 255)
    assert got[0, :, 0].tolist() == [0, 1, 128, 255, 4]
    assert (got[..., 0] == got[..., 2]).all()


def test_unreadable_and_truncated_skipped_counted_warned(tmp_path):
    tree(tmp_path, {"a": 2, "b": 2})
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(
        png, "PNG")
    (tmp_path / "train" / "a" / "trunc.png").write_bytes(png.getvalue()[:200])
    (tmp_path / "train" / "b" / "junk.jpg").write_bytes(b"this is not a jpeg")
    with pytest.warns(SkippedImagesWarning) as rec:
        ds = ImageFolder(tmp_path, "train")
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert "skipped 2" in msg and "trunc.png" in msg and "junk.jpg" in msg
    assert len(ds) == 4 and len(ds.skipped) == 2


def test_skipped_files_as_one_plain_line_and_a_full_list(tmp_path):
    tree(tmp_path, {"a": 2, "b": 2})
    for name in ("x.png", "y.png", "z.png"):
        (tmp_path / "train" / "a" / name).write_bytes(b"not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warn=False: no warning at all
        ds = ImageFolder(tmp_path, "train", warn=False)
    folder = os.path.join(str(tmp_path), "train")
    assert ds.skipped_line(shown=2) == (f"skipped 3 unreadable images in {folder}: "
                                        f"{os.path.join('a', 'x.png')}, "
                                        f"{os.path.join('a', 'y.png')} and 1 more")
    listed = data.write_skipped([ds], str(tmp_path / "skipped.txt"))
    assert open(listed).read().splitlines() == ds.skipped and len(ds.skipped) == 3
    clean = ImageFolder(tree(tmp_path / "clean", {"a": 1}), "train")
    assert clean.skipped_line() is None
    assert data.write_skipped([clean], str(tmp_path / "none.txt")) is None
    assert not (tmp_path / "none.txt").exists()


def test_no_warning_when_all_readable(tmp_path):
    tree(tmp_path, {"a": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ImageFolder(tmp_path, "train")


def test_errors_missing_root_and_split(tmp_path):
    with pytest.raises(UserError) as e:
        ImageFolder(tmp_path / "nope", "train")
    assert "nope" in one_line(e)
    with pytest.raises(UserError) as e:
        ImageFolder(tmp_path, "val")
    assert "val" in one_line(e)


def test_error_no_class_folders(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(UserError) as e:
        ImageFolder(tmp_path, "train")
    assert "no class folders" in one_line(e)


def test_error_empty_class_folder_is_named(tmp_path):
    tree(tmp_path, {"cat": 2})
    (tmp_path / "train" / "dog").mkdir()
    with pytest.raises(UserError) as e:
        ImageFolder(tmp_path, "train")
    assert "dog" in one_line(e) and "cat" not in one_line(e)
    assert isinstance(e.value, ValueError)


def test_error_no_readable_image(tmp_path):
    d = tmp_path / "train" / "a"
    d.mkdir(parents=True)
    (d / "x.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(UserError) as e:
        ImageFolder(tmp_path, "train")
    assert "no readable image" in one_line(e) and "1 file" in one_line(e)


def test_uncached_reads_from_disk(tmp_path):
    tree(tmp_path, {"a": 3})
    ds = ImageFolder(tmp_path, "train", cache=False)
    assert not ds.cached and ds[2][0][0, 0].tolist() == [20, 0, 0]
    assert ImageFolder(tmp_path, "train").cached


# -- transforms ------------------------------------------------------------------------------
@given(h=st.integers(1, 90), w=st.integers(1, 90), S=st.integers(1, 70))
def test_rescale_smallest_side_is_S(h, w, S):
    out = rescale(np.zeros((h, w, 3), np.uint8), S)
    assert min(out.shape[:2]) == S and out.dtype == np.uint8
    long_side = max(h, w) * S / min(h, w)  # aspect kept, to within rounding
    assert abs(max(out.shape[:2]) - long_side) <= 0.5 + 1e-9 or h == w


def test_rescale_float_and_values():
    img = np.full((4, 8, 3), 100, np.uint8)
    assert (rescale(img, 2) == 100).all()  # a flat image stays flat
    f = rescale(img.astype(np.float32) + 0.5, 8)
    assert f.shape == (8, 16, 3) and f.dtype == np.float32 and np.allclose(f, 100.5)


@given(h=st.integers(8, 60), w=st.integers(8, 60), smin=st.integers(8, 40),
       extra=st.integers(0, 24), crop=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_crops_inside_rescaled_image_for_every_S(h, w, smin, extra, crop, seed):
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)
    for S in range(smin, smin + extra + 1):
        r = rescale(img, S)
        H, W = r.shape[:2]
        # a coordinate-coded image of the rescaled size: channel 0 = row, 1 = column
        coded = np.zeros((H, W, 3), np.int32)
        coded[..., 0], coded[..., 1] = np.mgrid[0:H, 0:W]
        rng = np.random.default_rng(seed)
        c = random_crop(coded, crop, rng)
        y, x = c[0, 0, 0], c[0, 0, 1]
        assert c.shape == (crop, crop, 3)
        assert 0 <= y <= H - crop and 0 <= x <= W - crop
        assert (c[..., 0] == y + np.arange(crop)[:, None]).all()
        assert (c[..., 1] == x + np.arange(crop)[None, :]).all()


def test_random_crop_reaches_every_offset():
    img = np.zeros((5, 4, 3), np.int32)
    img[..., 0], img[..., 1] = np.mgrid[0:5, 0:4]
    rng = np.random.default_rng(0)
    seen = {tuple(random_crop(img, 3, rng)[0, 0, :2]) for _ in range(400)}
    assert seen == {(y, x) for y in range(3) for x in range(2)}


def test_crop_larger_than_image_is_an_error():
    img = np.zeros((10, 20, 3), np.uint8)
    with pytest.raises(DataError) as e:
        random_crop(img, 11, np.random.default_rng(0))
    assert "11" in one_line(e)
    with pytest.raises(ValueError):
        center_crop(img, 11)


def test_center_crop():
    img = np.arange(5 * 6).reshape(5, 6, 1).repeat(3, axis=2)
    c = center_crop(img, 3)  # rows (5-3)//2 = 1.., columns (6-3)//2 = 1..
    assert c[..., 0].tolist() == [[7, 8, 9], [13, 14, 15], [19, 20, 21]]


def test_flip():
    img = np.array([[[1, 1, 1], [2, 2, 2], [3, 3, 3]]], np.uint8)
    assert hflip(img)[0, :, 0].tolist() == [3, 2, 1]
    rng = np.random.default_rng(0)
    assert random_flip(img, rng, p=1.0)[0, :, 0].tolist() == [3, 2, 1]
    assert random_flip(img, rng, p=0.0)[0, :, 0].tolist() == [1, 2, 3]
    flips = sum(random_flip(img, rng)[0, 0, 0] == 3 for _ in range(1000))
    assert 400 < flips < 600


def known_covariance_pixels(n=200_000):
    """Gaussian pixels with mean (120, 100, 80) and covariance Q diag(900, 225, 25) Q^T."""
    a = np.deg2rad(30)
    r1 = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    r2 = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    Q = r1 @ r2
    z = np.random.default_rng(1).standard_normal((n, 3)) * [30.0, 15.0, 5.0]
    return z @ Q.T + [120.0, 100.0, 80.0], Q


def test_rgb_statistics_recovers_known_pca():
    px, Q = known_covariance_pixels()
    mean, eigval, eigvec = rgb_statistics(px)
    np.testing.assert_allclose(mean, [120, 100, 80], atol=0.2)
    np.testing.assert_allclose(eigval, [900, 225, 25], rtol=0.02)
    for i in range(3):  # columns are eigenvectors, equal to Q's up to sign
        assert abs(eigvec[:, i] @ Q[:, i]) > 0.999
    np.testing.assert_allclose(eigvec.T @ eigvec, np.eye(3), atol=1e-9)


def test_rgb_statistics_of_a_dataset_and_images_agree():
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (h, w, 3), np.uint8) for h, w in [(3, 5), (7, 2), (4, 4)]]
    px = np.concatenate([i.reshape(-1, 3) for i in imgs]).astype(np.float64)
    m1, v1, e1 = rgb_statistics(ArrayDataset(imgs, [0, 1, 0]))
    np.testing.assert_allclose(m1, px.mean(axis=0))
    np.testing.assert_allclose(v1, np.sort(np.linalg.eigvalsh(np.cov(px.T, bias=True)))[::-1])
    m2, v2, e2 = rgb_statistics(imgs)
    np.testing.assert_allclose(m1, m2)
    np.testing.assert_allclose(v1, v2)
    np.testing.assert_allclose(e1, e2)


def test_mean_subtraction_gives_zero_mean_on_training_set():
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (h, w, 3), np.uint8) for h, w in [(5, 9), (8, 8), (3, 4)]]
    mean, _, _ = rgb_statistics(imgs)
    centred = np.concatenate([subtract_mean(i, mean).reshape(-1, 3) for i in imgs])
    np.testing.assert_allclose(centred.astype(np.float64).mean(axis=0), 0, atol=1e-4)


def test_pca_shift_by_hand():
    # eigvec = I, eigval = (100, 4, 1): sqrt -> (10, 2, 1); alpha (1, 2, 3) -> (10, 4, 3)
    assert pca_shift([100, 4, 1], np.eye(3), [1, 2, 3]).tolist() == [10, 4, 3]
    # a permuted basis moves the components: column i is eigenvector i
    P = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float)
    assert pca_shift([100, 4, 1], P, [1, 2, 3]).tolist() == [3, 10, 4]


def test_pca_lighting_adds_one_shift_per_image():
    px, _ = known_covariance_pixels(20_000)
    _, eigval, eigvec = rgb_statistics(px)
    img = np.random.default_rng(2).uniform(0, 255, (5, 7, 3)).astype(np.float32)
    out = pca_lighting(img, eigval, eigvec, np.random.default_rng(42), std=0.1)
    alpha = np.random.default_rng(42).normal(0, 0.1, 3)  # the same draw, made by hand
    want = eigvec @ (alpha * np.sqrt(eigval))
    shift = (out - img).reshape(-1, 3)
    np.testing.assert_allclose(shift, np.broadcast_to(want, shift.shape), atol=1e-3)
    assert out.dtype == np.float32


# -- Loader ----------------------------------------------------------------------------------
def indexed_dataset(n=23, seed=0):
    """Images of varied sizes; label i for image i, so a label identifies its sample."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(12, 20, (n, 2))
    imgs = [rng.integers(0, 256, (h, w, 3), np.uint8) for h, w in sizes]
    return ArrayDataset(imgs, np.arange(n))


def collect(loader, epoch=None):
    if epoch is not None:
        loader.set_epoch(epoch)
    return [(x.copy(), y.copy()) for x, y in loader]


MEAN = (120.0, 110.0, 100.0)


def test_batches_shapes_dtypes_and_len():
    ds = indexed_dataset(23)
    L = Loader(ds, 5, True, 8, (10, 14), MEAN, workers=2)
    batches = collect(L)
    assert len(L) == 5 and len(batches) == 5
    assert [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
    for x, y in batches:
        assert x.dtype == np.float32 and x.shape[1:] == (3, 8, 8) and x.flags.c_contiguous
        assert y.dtype == np.int32
    Ld = Loader(ds, 5, True, 8, (10, 14), MEAN, drop_last=True, workers=0)
    assert len(Ld) == 4 and [len(y) for _, y in collect(Ld)] == [5, 5, 5, 5]


@pytest.mark.parametrize("train", [True, False])
def test_every_sample_exactly_once_per_epoch(train):
    ds = indexed_dataset(23)
    L = Loader(ds, 4, train, 8, (10, 14), MEAN, workers=2, prefetch=2)
    for _ in range(2):
        ys = np.concatenate([y for _, y in collect(L)])
        assert sorted(ys.tolist()) == list(range(23))
    if not train:
        assert ys.tolist() == list(range(23))  # val keeps the dataset's order


def test_reproducible_across_worker_counts():
    ds = indexed_dataset(19)
    pca = rgb_statistics(ds)[1:]
    args = (ds, 4, True, 8, (10, 16), MEAN)
    a = collect(Loader(*args, pca=pca, seed=7, workers=0), epoch=3)
    b = collect(Loader(*args, pca=pca, seed=7, workers=3, prefetch=1), epoch=3)
    assert len(a) == len(b) == 5
    for (xa, ya), (xb, yb) in zip(a, b):
        assert (ya == yb).all() and (xa == xb).all()


def test_epochs_and_seeds_differ():
    ds = indexed_dataset(30)
    L = Loader(ds, 30, True, 8, (10, 16), MEAN, seed=1, workers=1)
    (x0, y0), = collect(L)  # epoch 0, then epoch 1 by iterating again
    (x1, y1), = collect(L)
    assert not (y0 == y1).all()
    (x0b, y0b), = collect(L, epoch=0)  # set_epoch replays an epoch exactly
    assert (y0b == y0).all() and (x0b == x0).all()
    (xs, ys), = collect(Loader(ds, 30, True, 8, (10, 16), MEAN, seed=2, workers=1))
    assert not (ys == y0).all()
    # the same sample gets a different augmentation in another epoch
    i = 5
    assert not np.array_equal(x0[list(y0).index(i)], x1[list(y1).index(i)])


def test_val_mode_is_deterministic_centre_crop_at_mid_scale():
    ds = indexed_dataset(6)
    L = Loader(ds, 6, False, 8, (10, 17), MEAN, pca=rgb_statistics(ds)[1:], workers=1)
    assert L.val_scale == 13  # sect. 4.1: Q = (Smin + Smax) / 2, rounded down
    (x, y), = collect(L)
    (x2, _), = collect(L)
    assert (x == x2).all()
    img = ds[3][0]
    want = center_crop(rescale(img, 13), 8).astype(np.float32) - np.float32(MEAN)
    np.testing.assert_array_equal(x[3], want.transpose(2, 0, 1))


def test_train_sample_is_the_documented_pipeline():
    """Sample i of epoch e = rescale(S) -> crop -> flip, with default_rng([seed, e, i])."""
    ds = indexed_dataset(4)
    L = Loader(ds, 4, True, 8, (10, 13), MEAN, flip=True, seed=5, workers=0)
    rng = np.random.default_rng([5, 2, 1])
    S = int(rng.integers(10, 14))
    img = random_flip(random_crop(rescale(ds[1][0], S), 8, rng), rng)
    x, label = L.sample(1, epoch=2)
    assert label == 1
    want = (img.astype(np.float32) - np.float32(MEAN)).transpose(2, 0, 1)
    np.testing.assert_array_equal(x, want)


def loader_threads():
    return [t for t in threading.enumerate() if t.name.startswith("minivgg-loader")]


def test_early_stop_leaves_no_threads():
    ds = indexed_dataset(40)
    L = Loader(ds, 2, True, 8, (10, 14), MEAN, workers=2, prefetch=3)
    for k, _ in enumerate(L):
        if k == 1:
            break
    gc.collect()
    assert loader_threads() == []
    it = iter(L)
    next(it)
    it.close()
    assert loader_threads() == []


def test_worker_error_reaches_the_consumer():
    ds = ArrayDataset([np.zeros((12, 12, 3), np.uint8), np.zeros((5, 5), np.uint8)], [0, 1])
    L = Loader(ds, 1, False, 8, 10, MEAN, workers=2)
    with pytest.raises(Exception):
        collect(L)
    gc.collect()
    assert loader_threads() == []


def test_loader_argument_errors():
    ds = indexed_dataset(3)
    with pytest.raises(DataError, match="smaller than the crop"):
        Loader(ds, 2, True, 12, (10, 16), MEAN)
    with pytest.raises(DataError):
        Loader(ds, 0, True, 8, 10, MEAN)


def test_loader_over_image_folder(tmp_path):
    tree(tmp_path, {"a": 3, "b": 2})
    ds = ImageFolder(tmp_path, "train", cache=False)
    (x, y), = collect(Loader(ds, 5, True, 4, (4, 6), MEAN, workers=2))
    assert sorted(y.tolist()) == [0, 0, 0, 1, 1] and x.shape == (5, 3, 4, 4)


# -- the shapes set --------------------------------------------------------------------------
def read_tree(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            if f != "meta.json":  # holds the generation time
                out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "s"
    data.make_shapes(root, size=32, n_train=60, n_val=20, seed=3, progress=False)
    return root


def test_shapes_layout_counts_classes(shapes_root):
    train, val = ImageFolder(shapes_root, "train"), ImageFolder(shapes_root, "val")
    assert len(train.classes) == 10 and train.classes == sorted(train.classes)
    assert len(train) == 60 and len(val) == 20
    assert np.bincount(train.targets).tolist() == [6] * 10
    assert np.bincount(val.targets).tolist() == [2] * 10
    assert train[0][0].shape == (32, 32, 3)
    rows = data.read_bboxes(shapes_root / "train")
    assert len(rows) == 60 and {r["class"] for r in rows} == set(train.classes)
    assert not [p for p in os.listdir(shapes_root.parent) if p.startswith(".tmp")]


def test_shapes_deterministic(shapes_root, tmp_path):
    again = data.make_shapes(tmp_path / "s", size=32, n_train=60, n_val=20, seed=3,
                             progress=False, workers=1)
    a, b = read_tree(shapes_root), read_tree(again)
    assert a.keys() == b.keys() and len(a) == 60 + 20 + 2
    assert all(a[k] == b[k] for k in a)
    other = data.make_shapes(tmp_path / "o", size=32, n_train=60, n_val=20, seed=4,
                             progress=False)
    assert read_tree(other)["train/bboxes.csv"] != a["train/bboxes.csv"]


def test_bboxes_inside_image_and_scale_range(shapes_root):
    rows = data.read_bboxes(shapes_root / "train")
    for r in rows:
        assert 0 <= r["x0"] < r["x1"] <= 32 and 0 <= r["y0"] < r["y1"] <= 32
    sizes = np.array([r["size"] for r in rows])
    assert sizes.max() / sizes.min() >= 3.0  # objects seen at more than a 3x range of scales
    sides = np.array([max(r["x1"] - r["x0"], r["y1"] - r["y0"]) for r in rows])
    assert sides.max() / sides.min() >= 2.5  # ... and so are their boxes


@pytest.mark.parametrize("cls", range(10))
def test_bbox_encloses_the_shape(cls):
    img, (x0, y0, x1, y1), alpha = data.render_shape(cls, np.random.default_rng(cls), 48)
    ys, xs = np.nonzero(alpha > 0)
    assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1
    # tight: the solid part reaches within 2 px of each side (sharp tips are thin)
    ys, xs = np.nonzero(alpha > 0.5)
    assert xs.min() - x0 <= 2 and x1 - 1 - xs.max() <= 2
    assert ys.min() - y0 <= 2 and y1 - 1 - ys.max() <= 2
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8


def test_ensure_shapes_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVGG_DATA", str(tmp_path))
    root = data.ensure_shapes(size=16, n_train=10, n_val=0, seed=1, progress=False)
    assert os.path.basename(root) == data.shapes_name(16, 10, 0, 1)
    assert os.path.dirname(root) == str(tmp_path)
    stamp = os.stat(os.path.join(root, "meta.json")).st_mtime_ns
    assert data.ensure_shapes(size=16, n_train=10, n_val=0, seed=1, progress=False) == root
    assert os.stat(os.path.join(root, "meta.json")).st_mtime_ns == stamp  # not redrawn
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(root)]


def test_cli_shapes_and_one_line_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    assert data.main(["shapes", str(out), "--size", "16", "--train", "10", "--val", "10"]) == 0
    assert len(ImageFolder(out, "val")) == 10
    capsys.readouterr()  # drop the progress bar
    with pytest.raises(SystemExit) as e:
        data.run_cli(data.main, ["shapes", str(out), "--train", "10"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "already exists" in err and "\n" not in err


def test_linear_baseline_separates_colours(tmp_path):
    for split, n in [("train", 6), ("val", 3)]:
        for c, colour in [("red", (200, 30, 30)), ("blue", (30, 30, 200))]:
            for k in range(n):
                save(str(tmp_path / split / c / f"{k}.png"), solid(colour, (8, 8)))
    r = data.linear_baseline(tmp_path, side=4)
    assert r["accuracy"] == 1.0 and r["chance"] == 0.5
