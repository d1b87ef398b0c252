"""Localisation (appendix A): the greedy merging by hand, boxes of the dense view and of the
crop grid put back where their windows are, protocol 1 against the trainer's own measure,
protocol 2's counting, and `python -m minivgg.localise` (train, resume, evaluate, bad input);
predict --boxes."""
import json

import numpy as np
import pytest
from PIL import Image

from helpers import CLASSES, assert_one_line_error, run_cli, save_tiny
from minivgg import backend, checkpoint, data
from minivgg.errors import UserError
from minivgg.localise import cli, merge, nets as ln, protocols


@pytest.fixture(autouse=True)
def cpu():
    backend.set_device("cpu")


# -- merging (OverFeat sect. 4.3), by hand --------------------------------------------------
def test_match_score_by_hand():
    a = np.array([0, 0, 4, 4.0])
    assert merge.match_score(a, a) == 0
    # a quarter of the side to the right: centres 1 apart, mean side 4; IoU 12 / 20
    assert merge.match_score(a, a + [1, 0, 1, 0]) == pytest.approx(0.25 + 1 - 0.6)
    # half the side: 0.5 + 1 - 8 / 24
    assert merge.match_score(a, a + [2, 0, 2, 0]) == pytest.approx(0.5 + 1 - 1 / 3)
    assert merge.match_score(a, a + [5, 0, 5, 0]) > 2  # apart: more than 1 + the distance


def test_two_overlapping_boxes_merge_and_a_far_one_does_not():
    boxes = [[0, 0, 4, 4], [20, 20, 24, 24], [1, 0, 5, 4]]
    merged, scores, members = merge.greedy_merge(boxes, [0.5, 0.9, 0.25])
    assert members == [[1], [0, 2]]  # unmerged first, then the group formed
    np.testing.assert_allclose(merged, [[20, 20, 24, 24], [0.5, 0, 4.5, 4]])
    np.testing.assert_allclose(scores, [0.9, 0.75])  # the scores add up
    box, score = merge.best_box(boxes, [0.5, 0.9, 0.25])
    np.testing.assert_allclose(box, [20, 20, 24, 24])  # one confident far box wins here
    box, score = merge.best_box(boxes, [0.5, 0.6, 0.25])
    np.testing.assert_allclose(box, [0.5, 0, 4.5, 4])  # two weaker ones together win here
    assert score == pytest.approx(0.75)


def test_a_merged_box_is_the_mean_of_all_its_members():
    """Three boxes merge into one: (a + b) / 2 first, then with c weighted 2 : 1, so the
    result is the plain mean of the three, not ((a + b) / 2 + c) / 2."""
    boxes = np.array([[0, 0, 4, 4], [0.5, 0, 4.5, 4], [1.5, 0, 5.5, 4.0]])
    trace = []
    merged, scores, members = merge.greedy_merge(boxes, [1, 1, 1], trace=trace)
    assert [t[:2] for t in trace] == [(0, 1), (0, 1)]  # a with b, then c with the group
    np.testing.assert_allclose(merged, [boxes.mean(axis=0)])
    assert members == [[2, 0, 1]] and scores[0] == 3


def test_ties_merge_the_first_pair():
    """b is as close to a as to c (the same shift): (a, b) merge first, then the threshold
    stops (a+b) with c (shift 1.5 of 4: score above 1.0)."""
    boxes = [[0, 0, 4, 4], [2, 0, 6, 4], [4, 0, 8, 4]]
    trace = []
    merged, _, members = merge.greedy_merge(boxes, [1, 1, 1], threshold=1.2, trace=trace)
    assert trace[0][:2] == (0, 1) and trace[0][2] == pytest.approx(0.5 + 1 - 1 / 3)
    assert merge.match_score(np.array(boxes[1], float), np.array(boxes[2], float)) == trace[0][2]
    assert members == [[2], [0, 1]]


def test_nothing_merges_above_the_threshold_and_nan_never_merges():
    boxes = [[0, 0, 4, 4], [1, 0, 5, 4]]  # score 0.65
    assert len(merge.greedy_merge(boxes, [1, 1], threshold=0.6)[0]) == 2
    assert len(merge.greedy_merge(boxes, [1, 1], threshold=0.7)[0]) == 1
    assert len(merge.greedy_merge([[np.nan] * 4, [np.nan] * 4], [1, 1])[0]) == 2


# -- boxes back in the image ----------------------------------------------------------------
def tiny_localiser(path, regression="pcr", classes=CLASSES, scale=40, seed=0):
    """A loc checkpoint as localise train writes it: VGG A with 4 G outputs."""
    from helpers import META
    from minivgg.model import VGG
    G = len(classes) if regression == "pcr" else 1
    model = VGG("A", num_classes=4 * G, width=1 / 16, fc_width=16, input_size=32,
                init="kaiming", seed=seed).eval()
    settings = dict(crop=32, scale=scale, scale_jitter=None, task="localisation",
                    regression=regression)
    checkpoint.save(path, model, meta=dict(META, classes=list(classes), settings=settings))
    return str(path)


class FakeDense:
    """Stands in for model.dense(): a fixed (1, 4G, P, R) map of box codes."""

    def __init__(self, codes):
        self.codes = codes

    def __call__(self, x):
        from minivgg.tape import Tensor
        return Tensor(self.codes[None].astype(np.float32))


def test_dense_boxes_go_back_to_their_windows(tmp_path):
    """A 40 x 61 image at Q = 64 is 64 x 98 (61 * 1.6 rounded): a 2 x 3 map, windows every
    32 px. Each position's code says 'the box [4, 24) x [8, 16) of my window'; in the
    original image that is window (p, r)'s corner + the box, x divided by 98 / 61 and y
    by 64 / 40."""
    net = ln.load_localisers([tiny_localiser(tmp_path / "l.npz", "scr")])[0]
    codes = np.zeros((4, 2, 3))
    codes[:] = data.encode([4, 8, 24, 16], 32)[:, None, None]
    net.model.dense = lambda: FakeDense(codes)
    got = ln.dense_boxes(net, np.zeros((40, 61, 3), np.uint8), 64)
    assert got.shape == (1, 2, 3, 4)
    for p in range(2):
        for r in range(3):
            want = np.array([32 * r + 4, 32 * p + 8, 32 * r + 24, 32 * p + 16]) / \
                [98 / 61, 1.6, 98 / 61, 1.6]
            np.testing.assert_allclose(got[0, p, r], want, err_msg=f"({p}, {r})")


def test_grid_boxes_are_each_crops_box_in_the_image(tmp_path):
    """Each window of the 3 x 3 grid of a 48 x 64 image at Q = 48 through the net by hand."""
    from minivgg.evaluate import preprocess
    from minivgg.tape import Tensor
    net = ln.load_localisers([tiny_localiser(tmp_path / "l.npz")])[0]
    img = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    got = ln.grid_boxes(net, img, 48, 3)  # image already 48 high: no rescale
    assert got.shape == (3, 9, 4)
    x = preprocess(img, net.meta)
    for k, (y0, x0) in enumerate([(y, x) for y in (0, 8, 16) for x in (0, 16, 32)]):
        crop = np.ascontiguousarray(x[y0:y0 + 32, x0:x0 + 32].transpose(2, 0, 1)[None])
        out = net.model(Tensor(crop)).data[0].astype(np.float64)
        for g in range(3):
            want = data.decode(out[4 * g:4 * g + 4], 32) + [x0, y0, x0, y0]
            np.testing.assert_allclose(got[g, k], want, rtol=1e-5, atol=1e-4)


# -- a tiny box data set, a classifier, and the command line ---------------------------------
def make_boxes(root, per_class=4, size=40, seed=0):
    """Bright rectangles on dark noise, one per image, in class folders of CLASSES."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", per_class // 2)):
        rows = ["file,class,x0,y0,x1,y1"]
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
                x0, y0 = rng.integers(0, size // 2, 2)
                x1, y1 = x0 + rng.integers(10, size // 2), y0 + rng.integers(10, size // 2)
                img[y0:y1, x0:x1] = 200
                Image.fromarray(img).save(root / split / c / f"{i}.png")
                rows.append(f"{c}/{i}.png,{c},{x0},{y0},{x1},{y1}")
        (root / split / "bboxes.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("loc")
    return make_boxes(root / "data"), save_tiny(root / "cls.npz"), root


TRAIN = ["--epochs", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu",
         "--blas-threads", "0", "--lr", "0.01"]


def train(setup, out, *flags):
    data_root, cls, root = setup
    assert cli.main(["train", "--init-from", cls, "--data", str(data_root),
                     "--out", str(root / out), *TRAIN, *flags]) == 0
    return root / out


@pytest.fixture(scope="module")
def trained(setup):
    return {f: train(setup, f"pcr_{f}", "--finetune", f) for f in ("all", "fc")}


def params(path):
    return checkpoint.load(str(path))["params"]


def test_fc_fine_tuning_freezes_the_convs_and_all_trains_them(setup, trained):
    cls = params(setup[1])
    for finetune, path in trained.items():
        loc = params(path / "last.npz")
        assert loc["classifier.6.weight"].shape == (12, 16)  # PCR: 4 x 3 classes
        frozen = [np.array_equal(loc[k], cls[k]) for k in loc if k.startswith("features.")]
        fcs = [np.array_equal(loc[k], cls[k]) for k in ("classifier.0.weight",
                                                        "classifier.3.weight")]
        assert (all(frozen) and not any(fcs)) if finetune == "fc" else not any(frozen)
    row = json.loads((trained["all"] / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"train_loss", "train_loc_accuracy", "val_loc_error", "val_mean_iou"} <= set(row)
    settings = checkpoint.load(str(trained["all"] / "last.npz"))["meta"]["settings"]
    assert settings["task"] == "localisation" and settings["lr"] == 0.01


def test_scr_has_four_outputs_and_resume_continues_exactly(setup, tmp_path):
    plateau = ["--regression", "scr", "--lr-schedule", "plateau"]  # cosine's depends on --epochs
    straight = train(setup, "scr2", *plateau, "--epochs", "2")
    half = train(setup, "scr1", *plateau, "--epochs", "1")
    data_root = setup[0]
    assert cli.main(["train", "--resume", str(half / "last.npz"), "--data", str(data_root),
                     "--out", str(half), *TRAIN[:-2], "--epochs", "2"]) == 0
    a, b = params(straight / "last.npz"), params(half / "last.npz")
    assert a["classifier.6.weight"].shape == (4, 16)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_protocol1_is_the_trainers_validation_measure(setup, tmp_path):
    """Two paths to the same numbers: the Localisation task's measures over BoxLoader's
    validation batches (centre crop, IoU in crop units) and protocol 1 (nets.centre_boxes,
    back in the image's pixels). The net predicts a fixed box per class, so IoUs vary."""
    from minivgg.tape import Tensor
    from minivgg.tasks import Localisation
    net = ln.load_localisers([tiny_localiser(tmp_path / "l.npz")])[0]
    last = net.model.classifier[6]
    last.weight.data[...] = 0
    last.bias.data[...] = [0.1, 0, 0.5, 0.4, 0, 0.1, 0.3, 0.6, -0.1, -0.1, 0.6, 0.6]
    ds = data.BoxFolder(setup[0], "val", classes=CLASSES)
    r = protocols.protocol1(net, ds, progress=False)
    task = Localisation(CLASSES)
    loader = task.loader(ds, 4, False, crop=32, scale=40, mean_rgb=net.meta["mean_rgb"],
                         std_rgb=net.meta["std_rgb"], workers=0)
    totals = task.totals(train=False)
    for x, y in loader:
        t = task.targets(y)
        task.add(totals, task.loss(net.model(Tensor(x)), t), t)
    row = task.measures(totals, len(ds), "val")
    assert 0 < r["error"] < 1 and r["error"] == pytest.approx(row["val_loc_error"])
    assert np.mean(r["iou"]) == pytest.approx(row["val_mean_iou"], rel=1e-5)


def test_protocol2_counts_class_and_overlap(monkeypatch):
    """Image 0: its class second with a good box (top-5 right, top-1 wrong). Image 1: its
    class first but a bad box. Image 2: a good box under the wrong class."""
    class DS:
        boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10.0]])

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return None, [1, 0, 2][i]
    good, bad = np.array([0, 0, 10, 9.0]), np.array([5, 5, 15, 15.0])
    guesses = [[(0, bad, 1), (1, good, 1)], [(0, bad, 1), (1, good, 1)],
               [(0, good, 1), (1, good, 1)]]
    calls = iter(guesses)
    monkeypatch.setattr(protocols, "localise", lambda *a, **k: (next(calls), None))
    r = protocols.protocol2([], [], DS(), progress=False)
    assert r["top5_error"] == pytest.approx(2 / 3) and r["top1_error"] == 1
    assert r["class_top5_error"] == pytest.approx(1 / 3)


def test_evaluate_both_protocols_and_predict_draws_boxes(setup, trained, capsys):
    data_root, cls, root = setup
    loc = str(trained["all"] / "last.npz")
    assert cli.main(["evaluate", loc, "--protocol", "centre", "--data", str(data_root),
                     "--device", "cpu", "--out", str(root / "ev")]) == 0
    fc = str(trained["fc"] / "last.npz")
    for more in (["--scales", "64"], ["--grid", "2", "--scales", "40", "--scales", "48", "64"]):
        assert cli.main(["evaluate", loc, fc, "--classifier", cls, "--data", str(data_root),
                         "--device", "cpu", "--out", str(root / "ev"), *more]) == 0
    report = json.loads((root / "ev" / "localise_val_dense.json").read_text())
    assert len(report["guesses"]) == 6 and len(report["guesses"][0]) == 3  # 3 classes
    assert 0 <= report["top5_error"] <= report["top1_error"] <= 1
    assert report["nets"] == {loc: [64], fc: [64]}
    report = json.loads((root / "ev" / "localise_val_dense_grid2.json").read_text())
    assert report["nets"] == {loc: [40], fc: [48, 64]} and report["grid"] == 2
    from minivgg import predict
    image = data_root / "val" / "star" / "0.png"
    out = root / "boxes.png"
    assert predict.main([cls, str(image), "--boxes", str(out), "--localiser", loc,
                         "--device", "cpu"]) == 0
    with Image.open(out) as im:
        assert im.format == "PNG" and min(im.size) > 100
    assert "boxes:" in capsys.readouterr().out
    with pytest.raises(UserError, match="go together"):
        predict.main([cls, str(image), "--boxes", str(out), "--device", "cpu"])
    with pytest.raises(UserError, match="trained on other classes"):
        predict.main([save_tiny(root / "abc.npz", classes=["a", "b", "c"]), str(image),
                      "--boxes", str(out), "--localiser", loc, "--device", "cpu"])


def test_threads_flag_puts_the_loops_on_two_threads(setup, trained, capsys):
    """--threads (minivgg.train's flag) sets the cpu device's threads in both commands:
    train inherits the flag from minivgg.train's parser and once ignored it."""
    from kernels import threads as cpu
    data_root, cls, root = setup
    loc = str(trained["all"] / "last.npz")
    try:
        for argv in (["evaluate", loc, "--protocol", "centre", "--data", str(data_root),
                      "--device", "cpu", "--out", str(root / "ev2")],
                     ["train", "--init-from", cls, "--data", str(data_root),
                      "--out", str(root / "two"), *TRAIN]):
            cpu.set_threads(1)
            assert cli.main([*argv, "--threads", "2"]) == 0
            first = capsys.readouterr().out.splitlines()[0]
            assert first.endswith("; 2 threads for the convs' loops, 1 BLAS thread a call")
            assert cpu.threads() == 2
    finally:
        cpu.set_threads(1)


# -- bad input: one line, exit status 2 -------------------------------------------------------
def test_bad_input_is_one_line(setup, trained, tmp_path):
    data_root, cls, root = setup
    loc = str(trained["all"] / "last.npz")
    other = save_tiny(tmp_path / "other.npz", classes=["a", "b", "c"])
    cases = [
        (["train", "--data", str(data_root)], "--init-from CLS.npz is required"),
        (["train", "--init-from", loc, "--data", str(data_root)], "is a localisation net"),
        (["train", "--resume", cls, "--data", str(data_root)], "is not a localisation run"),
        (["train", "--init-from", cls, "--config", "B"], "the classifier's own net"),
        (["evaluate", loc, "--data", str(data_root)], "needs --classifier"),
        (["evaluate", loc, "--classifier", other, "--data", str(data_root)],
         "trained on other classes than the localisation nets"),
        (["evaluate", cls, "--protocol", "centre", "--data", str(data_root)],
         "is not a localisation net"),
        (["evaluate", loc, "--classifier", loc, "--data", str(data_root)],
         "is a localisation net, not a classifier"),
        (["evaluate", loc, "--classifier", cls, "--data", str(data_root), "--scales", "40",
          "--scales", "48"], "--scales given 2 times for 1 net:"),
        (["train", "--init-from", cls, "--threads", "-1"], "--threads must be at least 0"),
        (["evaluate", loc, "--protocol", "centre", "--data", str(data_root), "--threads",
          "-2"], "--threads must be at least 0"),
        (["nonsense"], "unknown command"),
    ]
    for argv, words in cases:
        with pytest.raises(UserError, match=words):
            cli.main([*argv, "--device", "cpu"] if argv[0] != "nonsense" else argv)
    (tmp_path / "d").mkdir()
    no_csv = make_boxes(tmp_path / "d" / "x")
    (no_csv / "val" / "bboxes.csv").unlink()
    proc = run_cli("minivgg.localise", "evaluate", loc, "--protocol", "centre",
                   "--data", no_csv)
    assert_one_line_error(proc, "no bboxes.csv in")


def test_a_nan_loss_stops_the_run_naming_the_step(setup, tmp_path, capsys):
    """The trainer's NaN stop through the Localisation task: step 2's loss is NaN."""
    import functools
    from minivgg.tasks import Localisation
    from minivgg.trainer import Trainer
    data_root, cls, _ = setup
    args = cli.build_train_parser().parse_args(
        ["--init-from", cls, "--data", str(data_root), "--out", str(tmp_path), *TRAIN])
    trainer = Trainer(args, cli.train_settings(args, "cpu"), task=functools.partial(
        Localisation, regression="pcr"))
    loss_of = trainer.task.loss

    def loss(outputs, targets):
        out = loss_of(outputs, targets)
        if trainer.step + 1 == 2:
            out.data[...] = np.nan
        return out
    trainer.task.loss = loss
    assert trainer.run() == 1
    assert "the loss became nan at step 2" in capsys.readouterr().err
