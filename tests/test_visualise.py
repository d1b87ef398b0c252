"""minivgg.visualise: the deconvnet against hand-worked projections, unpooling to the
switches, occlusion, nearest neighbours against brute force, colourfulness, receptive
fields, and every sub-command end to end (its PNG and JSON) and on bad input (one line,
exit status 2)."""
import json

import numpy as np
import pytest
from PIL import Image

from helpers import assert_one_line_error, image, run_cli as run_module, save_tiny
from minivgg import backend, nn
from minivgg.errors import run_cli
from minivgg.model import VGG
from minivgg.visualise import cli, common, deconv, filters, neighbours, occlusion, top5
from strict_arrays import strict_device  # noqa: F401 (a fixture)


@pytest.fixture(autouse=True)
def back_to_cpu():
    backend.set_device("cpu")
    yield
    backend.set_device("cpu")


@pytest.fixture(params=["cpu", "kernels"])
def device(request):
    """The NumPy references, then the kernels (the simulator, or the GPU under
    MINIVGG_DEVICE=cuda) on device arrays that refuse implicit host conversions."""
    if request.param == "kernels":
        request.getfixturevalue("strict_device")
    return request.param


def conv(w, b=0.0):
    """A 1 -> 1 channel conv layer with the given (R, S) weight and bias, no padding."""
    w = np.asarray(w, np.float32)
    c = nn.Conv2d(1, 1, w.shape[0])
    backend.copy_into(c.weight.data, w[None, None])
    backend.copy_into(c.bias.data, np.array([b], np.float32))
    return c


def dev(a):
    return backend.to_device(np.asarray(a, np.float32))


def seeded(shape, where, value):
    s = np.zeros(shape, np.float32)
    s[where] = value
    return dev(s)


# -- the deconvnet -----------------------------------------------------------------------------
# One conv (2x2 weight [[1, 2], [0, -1]], asymmetric so a flipped filter shows), ReLU, 2x2/2
# max-pool, on a 5x5 image that is 0 but x[1, 0] = 3 and x[2, 3] = 1. By hand, the conv
# output y[i, j] = x[i, j] + 2 x[i, j+1] - x[i+1, j+1] is 0 but y[1, 0] = 3, y[2, 3] = 1,
# y[2, 2] = 2, y[1, 2] = -1 (rectified to 0). The pool's windows: (0, 0) holds its max 3 at
# (1, 0), (1, 1) its max 2 at (2, 2). The deconvnet sends a pooled value v back to its
# switch (i, j), rectifies it (v > 0 stays), and spreads it over the unit's inputs with the
# filter itself: x-space[i + r, j + s] += v w[r, s].
W = [[1, 2], [0, -1]]
X = np.zeros((1, 1, 5, 5), np.float32)
X[0, 0, 1, 0], X[0, 0, 2, 3] = 3, 1
BY_HAND = {  # pooled unit -> its projection, the only non-zero pixels
    (0, 0): {(1, 0): 3, (1, 1): 6, (2, 1): -3},
    (1, 1): {(2, 2): 2, (2, 3): 4, (3, 3): -2},
}


def by_hand(unit):
    out = np.zeros((5, 5), np.float32)
    for (i, j), v in BY_HAND[unit].items():
        out[i, j] = v
    return out


def test_deconvnet_of_conv_relu_pool_is_the_hand_worked_projection(device):
    steps = deconv.record([conv(W), nn.ReLU(), nn.MaxPool2d(2, 2)], dev(X))
    pooled = backend.to_host(steps[-1].y.data)[0, 0]
    np.testing.assert_array_equal(pooled, [[3, 0], [0, 2]])
    for unit in BY_HAND:
        seed = seeded((1, 1, 2, 2), (0, 0) + unit, pooled[unit])
        got = backend.to_host(deconv.project(steps, seed))[0, 0]
        np.testing.assert_allclose(got, by_hand(unit), atol=1e-6, err_msg=str(unit))


def test_project_strongest_finds_the_strongest_unit_of_the_map(device):
    class OneLayer:  # what project_strongest needs of a model
        features = nn.Sequential(conv(W), nn.ReLU(), nn.MaxPool2d(2, 2))

        def input_channels(self, x):
            return x

        def zero_grad(self):
            self.features.zero_grad()

    # The second image is X moved 2 rows down (x[3, 0] = 3, x[4, 3] = 1): its conv output
    # is 3 at (3, 0) (the 1 now only reaches y[3, 2] = -1), so its strongest pooled unit
    # is (1, 0), and its projection is the first one's, moved the same way.
    px, values, p, q = deconv.project_strongest(OneLayer(), dev(np.concatenate(
        [X, np.roll(X, 2, axis=2)])), 2, 0)
    assert (list(values), list(p), list(q)) == ([3, 3], [0, 1], [0, 0])
    np.testing.assert_allclose(px[0, 0], by_hand((0, 0)), atol=1e-6)
    np.testing.assert_allclose(px[1, 0], np.roll(by_hand((0, 0)), 2, axis=0), atol=1e-6)
    assert all(m.grad is None for m in OneLayer.features.parameters())


def test_rectification_is_of_the_reconstruction_not_the_forward_mask():
    # conv1 (weight 1) -> ReLU -> conv2 (weight -1, bias 5) -> ReLU on x = [1, 2]:
    # relu2 = [4, 3]. Back from relu2[0] = 4: conv2's transpose gives -4, which ZFNet's
    # rectification turns to 0, so the projection is 0; the gradient would pass -4
    # through ReLU1's mask (relu1 = 1 > 0) and give -4.
    layers = [conv([[1]]), nn.ReLU(), conv([[-1]], 5.0), nn.ReLU()]
    steps = deconv.record(layers, dev([[[[1, 2]]]]))
    np.testing.assert_array_equal(backend.to_host(steps[-1].y.data)[0, 0], [[4, 3]])
    seed = seeded((1, 1, 1, 2), (0, 0, 0, 0), 4)
    np.testing.assert_array_equal(backend.to_host(deconv.project(steps, seed)), 0)
    grad = deconv.record(layers, dev([[[[1, 2]]]]))
    grad[-1].y.backward(seed)
    assert backend.to_host(grad[0].x.grad)[0, 0, 0, 0] == -4  # the gradient differs


def switches_by_loops(x, window, stride, P, Q):
    """Each window's first maximum (row-major), by plain loops over the windows."""
    out = {}
    for n, c, p, q in np.ndindex(x.shape[0], x.shape[1], P, Q):
        win = x[n, c, p * stride:p * stride + window, q * stride:q * stride + window]
        i, j = np.unravel_index(np.argmax(win), win.shape)
        out[n, c, p, q] = (p * stride + i, q * stride + j)
    return out


@pytest.mark.parametrize("window, stride, ceil, side", [(2, 2, False, 6), (3, 2, False, 7),
                                                        (3, 2, True, 8)])
def test_unpooling_puts_each_value_at_its_switch(device, window, stride, ceil, side):
    rng = np.random.default_rng(window + side)
    x = rng.permutation(2 * 3 * side * side).reshape(2, 3, side, side).astype(np.float32)
    steps = deconv.record([nn.MaxPool2d(window, stride, ceil)], dev(x))
    P, Q = steps[0].y.shape[2:]
    signal = rng.uniform(1, 2, (2, 3, P, Q)).astype(np.float32)
    got = backend.to_host(deconv.project(steps, dev(signal)))
    want = np.zeros_like(x)
    for (n, c, p, q), (i, j) in switches_by_loops(x, window, stride, P, Q).items():
        want[n, c, i, j] += signal[n, c, p, q]  # overlapping windows can share a switch
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_tower_projects_through_its_own_filters_only():
    # AlexNet's conv2 has groups=2: a map of tower 2 sees only conv1's second half of maps,
    # so its transposed convolution puts nothing on the first half.
    m = VGG("AlexNet", num_classes=3, width=1 / 8, fc_width=8, input_size=67, init="kaiming")
    rows = common.feature_rows(m)
    upto = [r.name for r in rows].index("relu2")
    x = dev(np.random.default_rng(0).standard_normal((1, 3, 67, 67)))
    steps = deconv.record(list(m.features)[:upto + 1], x)
    K, C = steps[-1].y.shape[1], steps[-3].x.shape[1]  # conv2's maps and inputs
    seed = np.zeros(steps[-1].y.shape, np.float32)
    seed[0, K - 1] = backend.to_host(steps[-1].y.data)[0, K - 1]  # a map of tower 2
    below = deconv.undo(steps[-2], deconv.undo(steps[-1], dev(seed)))  # ReLU, conv2
    below = backend.to_host(below)[0]
    assert below.shape[0] == C and np.abs(below[C // 2:]).max() > 0
    assert (below[:C // 2] == 0).all()


def test_a_grey_net_projects_to_three_equal_channels():
    m = VGG("LeNet-5", init="glorot")  # 1 channel, fed RGB through its grey level
    x = dev(np.random.default_rng(1).uniform(-1, 1, (2, 3, 32, 32)))
    px, values, _, _ = deconv.project_strongest(m, x, 3, 0)  # C1, tanh, S2, C3
    assert px.shape == (2, 3, 32, 32) and np.abs(px).max() > 0
    np.testing.assert_allclose(px[:, 0], px[:, 1])
    np.testing.assert_allclose(px[:, 0], px[:, 2])


def test_lrn_passes_the_signal_on_and_an_unknown_layer_is_refused():
    s = dev(np.ones((1, 2, 3, 3)))
    step = deconv.record([nn.LRN()], s)[0]
    assert deconv.undo(step, s) is s

    class Odd(nn.Module):
        def forward(self, x):
            return x
    with pytest.raises(Exception, match="no inverse for a Odd layer"):
        deconv.undo(deconv.Step(Odd(), None, None), s)


# -- occlusion ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_net(tmp_path_factory):
    path = save_tiny(tmp_path_factory.mktemp("ckpt") / "tiny.npz")
    backend.set_device("cpu")
    return common.load(path)


def test_a_zero_size_square_gives_the_unoccluded_probability_everywhere(tiny_net):
    x = common.batch([image(32, 32, seed=3)], tiny_net.meta)
    p0 = common.probabilities(tiny_net, x)[0]
    prob, best, best_p = occlusion.sensitivity(tiny_net, x, 1, 0, 4)
    assert prob.shape == (9, 9)  # corners 0, 4, ..., 32: (32 - 0) // 4 + 1
    np.testing.assert_allclose(prob, p0[1], rtol=1e-5)  # float32, batched: not bit-equal
    assert (best == p0.argmax()).all()
    np.testing.assert_allclose(best_p, p0.max(), rtol=1e-5)


def test_occlusion_hides_exactly_the_square_and_maps_every_position(tiny_net):
    x = common.batch([image(32, 32, seed=4)], tiny_net.meta)
    host = backend.to_host(x)[0]
    corners = [(0, 0), (4, 28)]
    out = occlusion.occluded(host, 4, corners)
    for (y0, x0), o in zip(corners, out):
        assert (o[:, y0:y0 + 4, x0:x0 + 4] == 0).all()
        o[:, y0:y0 + 4, x0:x0 + 4] = host[:, y0:y0 + 4, x0:x0 + 4]
        np.testing.assert_array_equal(o, host)
    prob, _, _ = occlusion.sensitivity(tiny_net, x, 2, 8, 8)
    for i, j in [(0, 0), (1, 2), (3, 3)]:  # cell (i, j): the square at (8 i, 8 j)
        one = occlusion.occluded(host, 8, [(8 * i, 8 * j)])
        want = common.probabilities(tiny_net, backend.to_device(one))[0, 2]
        assert prob[i, j] == pytest.approx(want, rel=1e-5)


# -- nearest neighbours --------------------------------------------------------------------------
def brute_force(q, d, k, exclude_self):
    out = []
    for i, a in enumerate(q):
        dist = [(float(np.sum((a - b) ** 2)), j) for j, b in enumerate(d)
                if not (exclude_self and i == j)]
        out.append([j for _, j in sorted(dist)[:k]])
    return np.array(out)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_nearest_neighbours_are_the_brute_force_ones_ties_by_index(exclude_self):
    rng = np.random.default_rng(0)
    d = rng.integers(0, 4, (300, 5)).astype(np.float64)  # small integers: many exact ties
    q = d[:40] if exclude_self else rng.integers(0, 4, (40, 5)).astype(np.float64)
    idx, dist = neighbours.nearest(q, d, 6, exclude_self)
    np.testing.assert_array_equal(idx, brute_force(q, d, 6, exclude_self))
    want = np.sqrt(((q[:, None] - d[idx]) ** 2).sum(axis=2))
    np.testing.assert_allclose(dist, want[np.arange(40)[:, None], np.arange(6)], atol=1e-9)
    assert (np.diff(dist, axis=1) >= 0).all()


def test_match_rates_count_the_nearest_and_all_k_over_labelled_queries():
    idx = np.array([[0, 1], [1, 2], [2, 0]])
    rates = neighbours.match_rates(idx, np.array([0, 1, -1]), np.array([0, 0, 1]))
    # query 0 (class 0) finds classes [0, 0]: same, same; query 1 (class 1) [0, 1]: a
    # different nearest, then the same; query 2 has no label and does not count
    assert rates == (0.5, 0.75)
    assert neighbours.match_rates(idx, np.array([-1, -1, -1]), np.zeros(3, int)) == (None,
                                                                                     None)


# -- top-5, picking images, reading folders ---------------------------------------------------
def test_top5_ranks_ties_by_index_and_finds_the_true_label():
    probs = np.array([0.1, 0.3, 0.3, 0.05, 0.2, 0.05])
    assert top5.rank(probs, 4) == ([1, 2, 4, 0, 3], 2)
    e = top5.entry("a.png", 5, probs, list("abcdef"))
    assert e["top"][:2] == [["b", 0.3], ["c", 0.3]] and e["label"] == "f"
    assert (e["label_rank"], e["label_probability"]) == (6, 0.05)  # outside the top 5
    assert top5.entry("a.png", -1, probs, list("abcdef"))["label_rank"] is None


def test_pick_takes_one_image_of_each_class_in_turn():
    labels = np.array([0, 0, 0, 1, 1, 2, -1])
    assert sorted(labels[common.pick(labels, 4)]) == [-1, 0, 1, 2]
    assert sorted(common.pick(labels, 10)) == list(range(7))


def test_a_folder_of_class_folders_is_labelled_by_the_nets_classes(tmp_path):
    for name in ("star", "blob"):
        (tmp_path / name).mkdir()
        Image.fromarray(image(8, 8)).save(tmp_path / name / "0.png")
    src = common.read_source(tmp_path, "val", ["circle", "star"])
    assert [p.split("/")[-2] for p in src.paths] == ["blob", "star"]
    assert list(src.labels) == [-1, 1]  # blob is not one of the net's classes
    assert not common.is_tree(tmp_path) and src.image(1).shape == (8, 8, 3)


# -- filters, receptive fields -------------------------------------------------------------------
def test_colourfulness_of_grey_single_channel_and_opponent_kernels():
    g = np.ones((1, 3, 2, 2))                     # the same in R, G, B: brightness only
    red = np.zeros((1, 3, 2, 2))
    red[0, 0] = 1                                  # ||(2/3, -1/3, -1/3)|| = sqrt(2/3)
    opp = np.zeros((1, 3, 2, 2))
    opp[0, 0], opp[0, 1] = 1, -1                   # red minus green: no grey at all
    scores = filters.colourfulness(np.concatenate([g, red, opp, np.zeros((1, 3, 2, 2))]))
    np.testing.assert_allclose(scores, [0, np.sqrt(2 / 3), 1, 0], atol=1e-12)
    assert np.isnan(filters.colourfulness(np.ones((2, 1, 3, 3)))).all()


def test_pixel_filters_undo_the_std_and_the_channel_order():
    w = np.ones((1, 3, 1, 1))
    f = filters.pixel_filters(w, dict(mean_rgb=[0, 0, 0], std_rgb=[1.0, 2.0, 4.0]))
    np.testing.assert_allclose(f[0, :, 0, 0], [1, 0.5, 0.25])
    bgr = dict(preprocess=dict(channels="BGR", scale=1.0, mean=[0, 0, 0], std=[1, 2, 4]))
    np.testing.assert_allclose(filters.pixel_filters(w, bgr)[0, :, 0, 0], [0.25, 0.5, 1])


def test_alexnets_first_layer_splits_into_its_two_towers():
    m = VGG("AlexNet", num_classes=3, width=1 / 8, fc_width=8, input_size=67, init="kaiming")
    assert filters.towers(m) == 2
    assert filters.tower_split(12, 2) == [list(range(6)), list(range(6, 12))]
    assert filters.towers(VGG("AlexNet-1tower", 3, 1 / 8, 8, 67)) == 1
    s = np.array([0.1, 0.2, 0.1, 0.9, 0.8, 0.9])
    assert filters.permutation_p(s, [[0, 1, 2], [3, 4, 5]]) < 0.2  # the most extreme split
    assert filters.permutation_p(s, [[0, 3, 4], [1, 2, 5]]) > 0.5


def test_the_change_since_epoch_0_is_measured_on_what_training_added():
    from minivgg.visualise import evolution
    f0 = np.random.default_rng(0).standard_normal((2, 3, 2, 2))
    grey = np.ones((2, 3, 2, 2))  # added equally to R, G, B: colourless, size ||1|| = 4.9
    grey[1] *= -1
    groups = [[0], [1]]
    c = evolution.change((0, dict(filters=f0, groups=groups)),
                         (5, dict(filters=f0 + grey, groups=groups)))["change"]
    np.testing.assert_allclose(c["tower_means"], [0, 0], atol=1e-12)
    assert c["relative_size"] == pytest.approx(np.sqrt(24) / np.linalg.norm(f0))
    assert evolution.change((1, dict(filters=f0, groups=groups)),
                            (5, dict(filters=f0, groups=groups))) == {}  # no epoch 0


def test_receptive_boxes_of_a_vgg_start_with_the_padding():
    m = VGG("A", num_classes=3, width=1 / 16, fc_width=8, input_size=32)
    rows = common.feature_rows(m)
    assert common.receptive_box(rows, 0, 0, 0) == (-1, -1, 2, 2)  # conv1_1: 3x3, pad 1
    assert common.receptive_box(rows, 2, 0, 0) == (-1, -1, 3, 3)  # pool1: 4x4 at jump 1
    i = [r.name for r in rows].index("conv2_1")  # 3x3 at jump 2 over pool1: 8, from -3
    assert common.receptive_box(rows, i, 1, 2) == (-3 + 2, -3 + 4, 5 + 2, 5 + 4)


# -- the command line ----------------------------------------------------------------------------
def write_tree(root, per_class=4, classes=("circle", "square", "star")):
    for split, n in (("train", per_class), ("val", 2)):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(image(40, 44, seed=10 * c + i + 100 * (split == "val"))).save(
                    d / f"{i}.png")
    return root


def run(capsys, *argv):
    try:
        status = run_cli(cli.main, [str(a) for a in argv])
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line(result, *words):
    status, _, err = result
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vis")
    return save_tiny(tmp / "tiny.npz"), write_tree(tmp / "data"), tmp


@pytest.mark.parametrize("command, stem, extra", [
    ("filters", "filters", []),
    ("top5", "top5", ["--count", "3", "--hardest", "1"]),
    ("neighbours", "neighbours", ["--count", "2", "-k", "3"]),
    ("deconv", "deconv_relu3_2", ["--layer", "relu3_2", "--count", "2", "--top", "2"]),
    ("occlusion", "occlusion", ["--count", "2", "--size", "8", "--stride", "8"]),
])
def test_every_command_writes_its_png_and_json(setup, capsys, command, stem, extra):
    ckpt, data, tmp = setup
    out = tmp / command
    args = [command, ckpt, "--device", "cpu", "--out", out, *extra]
    status, text, err = run(capsys, *(args + ([] if command == "filters" else
                                              ["--data", data])))
    assert status == 0, err
    with Image.open(out / f"{stem}.png") as im:
        assert im.format == "PNG" and min(im.size) > 100
    assert json.loads((out / f"{stem}.json").read_text())["checkpoint"] == ckpt


def test_threads_flag_puts_the_loops_on_two_threads(setup, capsys):
    """--threads and --blas-threads, as minivgg.train's (minivgg/device_flags.py). Through
    `filters`, which runs no conv: the loops' first calls on two threads would compile
    their parallel variants, 20 s of a cold suite (tests/test_cpu_fast.py runs them)."""
    from kernels import threads as cpu
    ckpt, data, tmp = setup
    try:
        status, text, err = run(capsys, "filters", ckpt, "--device", "cpu",
                                "--out", tmp / "t2", "--threads", "2")
        assert status == 0, err
        assert text.splitlines()[0].endswith("; 2 threads for the convs' loops, "
                                             "1 BLAS thread a call")
        assert cpu.threads() == 2
    finally:
        cpu.set_threads(1)
    assert_one_line(run(capsys, "filters", ckpt, "--device", "cpu", "--threads", "-1"),
                    "--threads must be at least 0")


def test_the_json_holds_the_numbers(setup, capsys):
    ckpt, data, tmp = setup
    run(capsys, "neighbours", ckpt, "--data", data, "--device", "cpu", "--out", tmp / "n",
        "-k", "2")
    r = json.loads((tmp / "n" / "neighbours.json").read_text())
    assert (r["n_queries"], r["n_database"], r["k"]) == (6, 12, 2)
    assert 0 <= r["nearest_same_class"]["features"] <= 1
    run(capsys, "occlusion", ckpt, "--data", data, "--device", "cpu", "--out", tmp / "o",
        "--count", "1", "--size", "0", "--stride", "16")
    r = json.loads((tmp / "o" / "occlusion.json").read_text())["images"][0]
    np.testing.assert_allclose(r["probability"], r["unoccluded"], atol=1e-5)


def test_a_flat_folder_is_searched_against_itself(setup, capsys, tmp_path):
    ckpt, _, _ = setup
    for i in range(4):
        Image.fromarray(image(36, 36, seed=i)).save(tmp_path / f"{i}.png")
    status, _, err = run(capsys, "neighbours", ckpt, "--data", tmp_path, "--device", "cpu",
                         "--out", tmp_path / "o", "-k", "2", "--count", "1")
    assert status == 0, err
    r = json.loads((tmp_path / "o" / "neighbours.json").read_text())
    assert r["n_database"] == 4 and r["nearest_same_class"]["features"] is None
    assert all(p != r["shown"][0]["query"] for p, _ in r["shown"][0]["features"])


def test_bad_input_is_one_line(setup, capsys, tmp_path):
    ckpt, data, _ = setup
    common_args = ["--device", "cpu", "--out", tmp_path / "o", "--data", data]
    assert_one_line(run(capsys, "deconv", ckpt, "--layer", "conv9", *common_args),
                    "unknown layer 'conv9'", "conv1_1")
    assert_one_line(run(capsys, "deconv", ckpt, "--layer", "fc7", *common_args),
                    "'fc7' is a classifier layer")
    assert_one_line(run(capsys, "deconv", ckpt, "--layer", "relu1_1", "--maps", "4",
                        *common_args), "map 4 is out of range", "4 maps (0-3)")
    assert_one_line(run(capsys, "occlusion", ckpt, "--size", "33", *common_args),
                    "--size 33 is larger than the image", "32x32")
    (tmp_path / "empty").mkdir()
    for command in ("top5", "neighbours", "deconv", "occlusion"):
        assert_one_line(run(capsys, command, ckpt, "--device", "cpu", "--data",
                            tmp_path / "empty"), "no readable images in", "empty")
    assert_one_line(run(capsys, "filters", tmp_path / "none.npz"), "not found")
    assert_one_line(run(capsys, "evolution", tmp_path), "no snapshots in")
    assert_one_line(run(capsys, "top5", ckpt, "--count", "0"), "--count must be at least 1")
    assert_one_line(run(capsys, "nonsense"), "invalid choice")


def test_hardest_are_the_images_least_sure_of_their_class(setup):
    from minivgg.visualise import commands
    ckpt, data, _ = setup
    net = common.load(ckpt)
    src = common.read_source(data, "train", net.meta["classes"])
    p = [common.probabilities(net, common.batch([common.view(src.image(i), net)],
                                                net.meta))[0, src.labels[i]]
         for i in range(len(src))]
    assert commands._hardest(net, src, 3, batch_size=5) == list(np.argsort(p)[:3])


def test_the_module_runs_and_fails_in_one_line_too(setup):
    ckpt, _, tmp = setup
    proc = run_module("minivgg.visualise", "deconv", ckpt, "--layer", "pool9", "--out", tmp)
    assert_one_line_error(proc, "unknown layer 'pool9'")


def test_evolution_draws_every_snapshot(setup, capsys, tmp_path):
    from minivgg import checkpoint
    ckpt, data, _ = setup
    saved = checkpoint.load(ckpt)
    (tmp_path / "snapshots").mkdir()
    for epoch in (0, 3):
        model = checkpoint.model_from_checkpoint(saved)
        w = model.features[0].weight
        backend.copy_into(w.data, backend.to_host(w.data) * (epoch + 1))
        checkpoint.save(tmp_path / "snapshots" / f"epoch-{epoch:03d}.npz", model,
                        meta=saved["meta"])
    status, _, err = run(capsys, "evolution", tmp_path, "--device", "cpu", "--layer",
                         "relu2_1", "--maps", "0", "1", "--data", data)
    assert status == 0, err
    r = json.loads((tmp_path / "visualise" / "evolution.json").read_text())
    assert [e["epoch"] for e in r["epochs"]] == [0, 3]
    assert len(r["projections"]) == 2 and set(r["projections"][0]["maps"]) == {"0", "1"}
    assert (tmp_path / "visualise" / "evolution_projections.png").stat().st_size > 0


def test_neighbours_of_a_net_without_a_hidden_fc_layer_use_its_pooled_last_maps(setup, capsys):
    """NiN has no FC layer: the neighbours are searched in its hidden_features (the pooled
    maps before the class maps), one row per image, as many columns as those maps."""
    from minivgg import checkpoint
    from minivgg.model import VGG
    from helpers import CLASSES, META, SETTINGS
    _, data, tmp = setup
    model = VGG("NiN", num_classes=len(CLASSES), width=1 / 16, input_size=64,
                init="kaiming", seed=0).eval()
    ckpt = tmp / "nin.npz"  # 64 px views: NiN's 11x11/4 layer and three pools need them
    checkpoint.save(ckpt, model, meta=dict(META, classes=CLASSES,
                                           settings=dict(SETTINGS, crop=64, scale=72)))
    status, _, err = run(capsys, "neighbours", ckpt, "--device", "cpu", "--out",
                         tmp / "nin", "--data", data, "--count", "2", "-k", "2")
    assert status == 0, err
    got = json.loads((tmp / "nin" / "neighbours.json").read_text())
    assert got["n_queries"] == 6 and 0 <= got["nearest_same_class"]["features"] <= 1
