"""predict.py: top-5 by dense evaluation (sect. 3.2), the score-map heat map, bad inputs."""
import re

import numpy as np
import pytest
from PIL import Image

from minivgg import backend, predict
from minivgg.evaluate import load_net, posteriors_dense
from helpers import CLASSES, META, assert_one_line_error, fc_posteriors, image, run_cli, \
    save_tiny, tiny_model


@pytest.fixture(autouse=True)
def cpu():
    backend.set_device("cpu")


def write_png(path, h, w, seed=0):
    Image.fromarray(image(h, w, seed)).save(path)
    return str(path)


def is_png(path):
    with Image.open(path) as im:
        return im.format == "PNG" and min(im.size) > 50


def test_top_classes_sorts_by_probability():
    got = predict.top_classes(np.array([0.1, 0.6, 0.3]), ["a", "b", "c"], k=2)
    assert got == [("b", 0.6), ("c", 0.3)]


def test_score_map_of_a_crop_size_image_is_the_fc_networks_posteriors():
    model = tiny_model()
    img = image(32, 32, seed=1)
    m = predict.score_map(model, img, 32, META)
    assert m.shape == (3, 1, 1)
    np.testing.assert_allclose(m[:, 0, 0], fc_posteriors(model, img, META), rtol=1e-5,
                               atol=1e-6)


def test_score_map_has_one_position_per_32_pixels():
    # Input 64x96 -> features 2x3 (five 2x2 poolings), fc6 as a 1x1 conv at input 32.
    m = predict.score_map(tiny_model(), image(64, 96), 64, META)
    assert m.shape == (3, 2, 3)
    np.testing.assert_allclose(m.sum(axis=0), 1.0, rtol=1e-12)
    assert predict.feature_jump(tiny_model()) == 32


def test_heatmap_paths():
    assert predict.heatmap_path("h.png", 0, 1) == "h.png"
    assert predict.heatmap_path("out/h.png", 1, 3) == "out/h_1.png"


def test_main_writes_one_heatmap_for_one_image(tmp_path, capsys):
    ckpt = save_tiny(tmp_path / "a.npz")
    img = write_png(tmp_path / "x.png", 45, 60)
    assert predict.main([ckpt, img, "--heatmap", str(tmp_path / "h.png"), "--device",
                         "cpu", "--scale", "48"]) == 0
    assert "Q=48" in capsys.readouterr().out
    assert is_png(tmp_path / "h.png")


def test_cli_end_to_end_top5_and_heatmaps(tmp_path):
    ckpt = save_tiny(tmp_path / "a.npz")
    paths = [write_png(tmp_path / "a.png", 40, 52, 1), write_png(tmp_path / "b.jpg", 70, 45, 2)]
    proc = run_cli("minivgg.predict", ckpt, *paths, "--heatmap", tmp_path / "h.png",
                   "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("device: cpu (asked for cpu")
    assert "; 2 threads for the convs' loops" in proc.stdout.splitlines()[0]
    rows = re.findall(r"^\s+(\d)\. (\w+)\s+([\d.]+)%$", proc.stdout, re.M)
    assert len(rows) == 6  # 3 classes per image: fewer than 5
    net = load_net(ckpt)
    assert net.scales == [40]  # the checkpoint's fixed S (sect. 4.1)
    from minivgg.data import read_image
    for k, path in enumerate(paths):
        probs = posteriors_dense(net.model, read_image(path), [40], True, net.meta)
        order = np.argsort(-probs)
        mine = rows[3 * k:3 * k + 3]
        assert [name for _, name, _ in mine] == [CLASSES[i] for i in order]
        np.testing.assert_allclose([float(p) for _, _, p in mine], 100 * probs[order],
                                   atol=0.006)
        assert is_png(tmp_path / f"h_{k}.png")


def test_cli_unreadable_image(tmp_path):
    ckpt = save_tiny(tmp_path / "a.npz")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    proc = run_cli("minivgg.predict", ckpt, bad)
    assert_one_line_error(proc, "bad.png")


def test_cli_missing_checkpoint(tmp_path):
    img = write_png(tmp_path / "x.png", 40, 40)
    proc = run_cli("minivgg.predict", tmp_path / "missing.npz", img)
    assert_one_line_error(proc, "missing.npz", "not found")


# -- the real VGG-16, converted (issue 14) ------------------------------------------------------
def test_weights_of_a_converted_imagenet_net_print_imagenet_names(tmp_path, capsys):
    """A VGG-16 built in PyTorch whose fc8 bias favours class 281, converted: predict
    --weights names it 'tabby', as a positional checkpoint does."""
    fv = pytest.importorskip("foreign_vgg")
    from minivgg import convert
    tv = fv.torchvision_vgg("D", side=1)
    with fv.torch.no_grad():
        tv.classifier[6].bias[281] = 50.0
    fv.torch.save(tv.state_dict(), tmp_path / "vgg16.pth")
    ckpt = str(tmp_path / "vgg16.npz")
    convert.write(convert.read(str(tmp_path / "vgg16.pth")), ckpt)
    img = write_png(tmp_path / "cat.png", 50, 60)
    assert predict.main(["--weights", ckpt, img, "--top", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  1\. tabby\s+100\.00%$", out, re.M), out
    assert predict.main([ckpt, img, "--top", "2", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == out


def test_weights_flag_or_positional_checkpoint_needs_an_image(tmp_path):
    ckpt = save_tiny(tmp_path / "a.npz")
    assert_one_line_error(run_cli("minivgg.predict", ckpt), "at least one image")
