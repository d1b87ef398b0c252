"""Boxes for localisation (minivgg/data/boxes.py): IoU and the box code by hand, boxes that
follow the image through rescale, crop and flip (checked against the pixels), the crops
that keep the object, and bboxes.csv's bad input in one line."""
import numpy as np
import pytest
from PIL import Image

from minivgg.data import DataError, boxes as bx


def test_iou_by_hand():
    a = np.array([0, 0, 2, 2.0])
    assert bx.iou(a, a) == 1
    assert bx.iou(a, np.array([1, 0, 3, 2.0])) == pytest.approx(2 / 6)  # half overlaps
    assert bx.iou(a, np.array([1, 1, 3, 3.0])) == pytest.approx(1 / 7)
    assert bx.iou(a, np.array([2, 0, 4, 2.0])) == 0  # touching edges: no area in common
    assert bx.iou(a, np.array([3, 0, 4, 2.0])) == 0  # apart along x only
    assert bx.iou(a, np.array([0, 3, 2, 4.0])) == 0  # apart along y only
    assert bx.iou(a, np.array([3, 3, 4, 4.0])) == 0  # apart along both (two negative gaps)
    assert bx.iou(a, np.array([1, 1, 1, 5.0])) == 0  # an empty box
    assert bx.iou(np.array([3, 3, 1, 1.0]), np.array([3, 3, 1, 1.0])) == 0  # x1 < x0: empty
    many = bx.iou(a[None], np.array([[0, 0, 2, 2], [0, 0, 1, 1.0]]))  # broadcast
    np.testing.assert_allclose(many, [1, 0.25])


def test_code_by_hand_and_back():
    """crop 32: the box [8, 24) x [4, 12) has centre (16, 8), 16 wide, 8 high."""
    code = bx.encode([8, 4, 24, 12], 32)
    np.testing.assert_allclose(code, [0, (8 - 16) / 32, 0.5, 0.25])
    np.testing.assert_allclose(bx.decode(code, 32), [8, 4, 24, 12])
    codes = np.random.default_rng(0).normal(size=(3, 5, 4))
    np.testing.assert_allclose(bx.encode(bx.decode(codes[1, 2], 40), 40), codes[1, 2])
    assert bx.decode(codes, 40).shape == (3, 5, 4)


def test_box_transforms_by_hand():
    np.testing.assert_allclose(bx.rescale_box([10, 20, 30, 40], (50, 100), (25, 150)),
                               [15, 10, 45, 20])
    np.testing.assert_allclose(bx.crop_box([10, 20, 30, 40], 5, 8), [2, 15, 22, 35])
    np.testing.assert_allclose(bx.clip_box([-3, 2, 40, 50], 32, 32), [0, 2, 32, 32])
    np.testing.assert_allclose(bx.hflip_box([2, 3, 10, 7], 32), [22, 3, 30, 7])


def rectangle(h, w, box, value=255):
    img = np.full((h, w, 3), 20, np.uint8)
    x0, y0, x1, y1 = box
    img[y0:y1, x0:x1] = value
    return img


def bright_box(img, level=128):
    """Corners of the pixels brighter than `level` (pixel-edge coordinates)."""
    ys, xs = np.nonzero(img.mean(axis=2) > level)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def test_a_flipped_images_box_is_the_flipped_box():
    img = rectangle(30, 40, (3, 5, 17, 21))
    np.testing.assert_array_equal(bright_box(img[:, ::-1]), bx.hflip_box(bright_box(img), 40))


def visible(box, y, x, crop):
    """Pixels of box inside the crop at (y, x), by brute force."""
    inside = np.zeros((100, 100), bool)
    inside[box[1]:box[3], box[0]:box[2]] = True
    return int(inside[y:y + crop, x:x + crop].sum())


@pytest.mark.parametrize("min_visible, count", [(0.0, 680), (0.5, 268), (1.0, 35)])
def test_crops_show_enough_of_the_object_and_reach_every_such_position(min_visible, count):
    """A 20 x 10 box at (30, 10) in a 48 x 64 image, crops of 16: at most 16 x 10 = 160 of
    its pixels in view. Every drawn crop shows min_visible of that, and more than nothing;
    the draws reach every position that does. Counted by hand: 34 x 20 positions see
    some of it; 5 x 7 see 160 pixels; 268 see at least 80 (147 with all 10 rows in view,
    38, 34, 26, 18 and 5 with 9, 8, 7, 6 and 5)."""
    rng, box, crop = np.random.default_rng(0), (30, 10, 50, 20), 16
    seen = {bx.crop_offsets(np.array(box, float), 48, 64, crop, rng, min_visible)
            for _ in range(8000)}
    allowed = {(y, x) for y in range(48 - crop + 1) for x in range(64 - crop + 1)
               if visible(box, y, x, crop) >= min_visible * 160 and visible(box, y, x, crop)}
    assert seen == allowed and len(allowed) == count


class Boxes:
    """A BoxFolder stand-in: rectangles of several sizes on images of several shapes."""

    def __init__(self):
        rng = np.random.default_rng(1)
        self.images, self.boxes = [], []
        for h, w in [(48, 64), (64, 48), (40, 40), (57, 75)]:
            x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
            box = (x0, y0, x0 + rng.integers(8, w - x0), y0 + rng.integers(8, h - y0))
            self.images.append(rectangle(h, w, box))
            self.boxes.append(box)
        self.boxes = np.array(self.boxes, np.float64)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i % 3


@pytest.mark.parametrize("target", ["whole", "clipped"])
def test_loader_boxes_follow_rescale_crop_and_flip(target):
    """Every sample's target, decoded, is where the rectangle is in the sample's pixels
    (to a pixel: bilinear resizing blurs the edges), over jittered scales, crops and flips."""
    ds = Boxes()
    loader = bx.BoxLoader(ds, 4, True, crop=32, scale=(40, 72), mean_rgb=[0, 0, 0],
                          box_target=target, workers=0)
    for epoch in range(6):
        for i in range(len(ds)):
            x, y = loader.sample(i, epoch)
            assert y[0] == i % 3
            box = bx.decode(y[1:].astype(np.float64), 32)
            shown = bx.clip_box(box, 32, 32)
            if target == "clipped":
                np.testing.assert_allclose(box, shown, atol=1e-4)  # float32 codes
            pixels = bright_box(x.transpose(1, 2, 0))
            np.testing.assert_allclose(pixels, shown, atol=1.5, err_msg=f"{epoch}, {i}")
            if target == "whole":  # at least half of the object that a crop can show
                w, h = box[2:] - box[:2]
                area = (shown[2] - shown[0]) * (shown[3] - shown[1])
                assert area >= 0.5 * min(w, 32) * min(h, 32) - 1e-6
    val = bx.BoxLoader(ds, 4, False, crop=32, scale=40, mean_rgb=[0, 0, 0], box_target=target)
    for i in range(len(ds)):
        x, y = val.sample(i)
        shown = bx.clip_box(bx.decode(y[1:].astype(np.float64), 32), 32, 32)
        np.testing.assert_allclose(bright_box(x.transpose(1, 2, 0)), shown, atol=1.5)


def test_loader_flips_boxes_with_their_images():
    """An off-centre rectangle: flipped samples have it on the other side, and their box too."""
    ds = Boxes()
    ds.images = [rectangle(32, 32, (2, 8, 12, 24))]
    ds.boxes = np.array([[2, 8, 12, 24.0]])
    loader = bx.BoxLoader(ds, 1, True, crop=32, scale=32, mean_rgb=[0, 0, 0], workers=0)
    sides = set()
    for epoch in range(8):
        x, y = loader.sample(0, epoch)
        box = bx.decode(y[1:].astype(np.float64), 32)
        np.testing.assert_allclose(box, bright_box(x.transpose(1, 2, 0)), atol=1e-9)
        sides.add(tuple(box))
    assert sides == {(2, 8, 12, 24), (20, 8, 30, 24)}


def test_batches_carry_label_and_box():
    loader = bx.BoxLoader(Boxes(), 3, False, crop=32, scale=40, mean_rgb=[0, 0, 0], workers=0)
    x, y = next(iter(loader))
    assert x.shape == (3, 3, 32, 32) and y.shape == (3, 5) and y.dtype == np.float32
    np.testing.assert_array_equal(y[:, 0], [0, 1, 2])


def test_loader_needs_boxes_and_a_known_target():
    with pytest.raises(DataError, match="BoxFolder"):
        bx.BoxLoader([(np.zeros((40, 40, 3), np.uint8), 0)], 1, False, crop=32, scale=40,
                     mean_rgb=[0, 0, 0])
    with pytest.raises(DataError, match="whole, clipped"):
        bx.BoxLoader(Boxes(), 1, False, crop=32, scale=40, mean_rgb=[0, 0, 0], box_target="x")


# -- bboxes.csv: bad input, one line each ---------------------------------------------------
def box_tree(root, rows, header="file,class,x0,y0,x1,y1"):
    """ROOT/train/a/0.png (40x30) and b/0.png, and ROOT/train/bboxes.csv of `rows`."""
    for c in ("a", "b"):
        (root / "train" / c).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(root / "train" / c / "0.png")
    if rows is not None:
        (root / "train" / "bboxes.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


GOOD = ["a/0.png,a,1,2,30,20", "b/0.png,b,0,0,40,30"]


def test_a_good_tree_reads(tmp_path):
    from minivgg.data import BoxFolder
    ds = BoxFolder(box_tree(tmp_path, GOOD), "train")
    np.testing.assert_array_equal(ds.boxes, [[1, 2, 30, 20], [0, 0, 40, 30]])
    assert ds[1][1] == 1


@pytest.mark.parametrize("rows, header, message", [
    (None, None, "no bboxes.csv in"),
    (GOOD, "name,x0,y0,x1,y1", "must name the columns"),
    (["a/0.png,a,1,two,30,20", GOOD[1]], None, "line 2: malformed row"),
    (["a/0.png,a,1,2,30", GOOD[1]], None, "line 2: malformed row"),
    (["a/0.png,a,30,2,30,20", GOOD[1]], None, "line 2: box [30.0, 2.0, 30.0, 20.0] of "
                                               "a/0.png needs x0 < x1"),
    ([GOOD[0], GOOD[1], GOOD[1]], None, "line 4: b/0.png has a second box"),
    ([GOOD[0]], None, "image b/0.png has no box in"),
    (["a/0.png,a,1,2,41,20", GOOD[1]], None, "box [1.0, 2.0, 41.0, 20.0] of a/0.png is "
                                              "outside the 40x30 image"),
    (["a/0.png,b,1,2,30,20", GOOD[1]], None, "a/0.png is in class folder a but its box "
                                              "says b"),
])
def test_bad_boxes_are_one_line_errors(tmp_path, rows, header, message):
    from minivgg.data import BoxFolder
    box_tree(tmp_path, rows, header or "file,class,x0,y0,x1,y1")
    with pytest.raises(DataError) as e:
        BoxFolder(tmp_path, "train")
    assert message in str(e.value) and "\n" not in str(e.value)
