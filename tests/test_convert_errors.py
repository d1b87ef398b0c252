"""minivgg.convert on bad files: one line naming the problem, exit status 2, no traceback,
nothing written. And the optional extras: missing, they are named in one line; a plain
install never pulls them in."""
import os
import subprocess
import sys

import numpy as np
import pytest

from minivgg.convert.__main__ import main
from minivgg.errors import run_cli

fv = pytest.importorskip("foreign_vgg")  # skips without torch
torch = fv.torch
safetensors_torch = pytest.importorskip("safetensors.torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def vgg16_sd():
    return fv.state_dict(fv.torchvision_vgg("D"))


def error_line(capsys, tmp_path, src, *flags, dst=None):
    """Run the command in-process: exit status 2, one 'error: ...' line, no DST written."""
    dst = str(dst or tmp_path / "out.npz")
    with pytest.raises(SystemExit) as e:
        run_cli(main, [str(src), dst, *map(str, flags)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not os.path.exists(dst)
    return err[0]


def save_pth(tmp_path, obj, name="bad.pth"):
    torch.save(obj, tmp_path / name)
    return tmp_path / name


class NotAllowed:
    """A class torch.load(weights_only=True) must refuse to instantiate."""


@pytest.mark.parametrize("obj,words", [
    ([1, 2, 3], ["holds a list, not a state dict"]),
    (torch.zeros(3), ["holds a Tensor, not a state dict"]),
    ({"lr": 0.1, "features.0.weight": torch.zeros(1)}, ["'lr' is a float"]),
    ({"a": NotAllowed()}, ["refusing", "NotAllowed", "weights_only=True", "state_dict()"]),
])
def test_not_a_state_dict(capsys, tmp_path, obj, words):
    line = error_line(capsys, tmp_path, save_pth(tmp_path, obj))
    assert all(w in line for w in words), line


def test_another_architecture(capsys, tmp_path):
    """A ResNet-style state dict (conv1, bn1, layer1..., fc) is not taken for a VGG."""
    net = torch.nn.Sequential()
    net.add_module("conv1", torch.nn.Conv2d(3, 8, 7, 2, 3))
    net.add_module("bn1", torch.nn.BatchNorm2d(8))
    net.add_module("fc", torch.nn.Linear(8, 10))
    line = error_line(capsys, tmp_path, save_pth(tmp_path, net.state_dict()))
    assert "not a VGG state dict" in line and "'conv1.weight'" in line


def test_a_vgg_with_batch_norm(capsys, tmp_path, vgg16_sd):
    sd = dict(vgg16_sd, **{"features.1.running_mean": torch.zeros(4)})
    assert "batch normalisation ('features.1.running_mean'" in \
        error_line(capsys, tmp_path, save_pth(tmp_path, sd))


def test_missing_extra_and_misshapen_tensors_are_named(capsys, tmp_path, vgg16_sd):
    sd = {k: v for k, v in vgg16_sd.items() if k != "features.28.bias"}
    sd["classifier.7.weight"] = torch.zeros(2, 2)
    sd["features.2.weight"] = torch.zeros(4, 4, 5, 5)
    line = error_line(capsys, tmp_path, save_pth(tmp_path, sd))
    assert "does not fit config D (VGG-16) at width 0.0625" in line
    assert "missing: 'features.28.bias' (32)" in line
    assert "unexpected: 'classifier.7.weight' (2, 2)" in line
    assert "'features.2.weight' is (4, 4, 5, 5) where it should be (4, 4, 3, 3)" in line


def test_timm_files_are_told_about_in_timm_names(capsys, tmp_path, vgg16_sd):
    sd = fv.state_dict(fv.TimmVGG(fv.torchvision_vgg("D")))
    del sd["pre_logits.fc2.bias"]
    safetensors_torch.save_file(sd, str(tmp_path / "m.safetensors"))
    assert "missing: 'pre_logits.fc2.bias' (64)" in \
        error_line(capsys, tmp_path, tmp_path / "m.safetensors")


def test_fc6_that_fits_no_input_size(capsys, tmp_path, vgg16_sd):
    sd = dict(vgg16_sd, **{"classifier.0.weight": torch.zeros(64, 33)})
    assert "classifier.0.weight takes 33 inputs" in \
        error_line(capsys, tmp_path, save_pth(tmp_path, sd))


@pytest.mark.parametrize("kind", ["pth", "safetensors", "h5"])
def test_truncated_files(capsys, tmp_path, vgg16_sd, kind):
    path = tmp_path / f"whole.{kind}"
    if kind == "pth":
        torch.save(vgg16_sd, path)
    elif kind == "safetensors":
        safetensors_torch.save_file(vgg16_sd, str(path))
    else:
        fv.write_keras_h5(path, fv.keras_layers(fv.torchvision_vgg("D"), "D"))
    data = path.read_bytes()
    cut = tmp_path / f"cut.{kind}"
    cut.write_bytes(data[:len(data) // 2])
    line = error_line(capsys, tmp_path, cut)
    assert "truncated or corrupt" in line and str(cut) in line


def test_keras_files_without_the_classifier_or_with_other_layers(capsys, tmp_path):
    layers = fv.keras_layers(fv.torchvision_vgg("D"), "D")
    fv.write_keras_h5(tmp_path / "notop.h5", [(n, w) for n, w in layers
                                              if n not in ("fc1", "fc2", "predictions")])
    assert "notop" in error_line(capsys, tmp_path, tmp_path / "notop.h5")
    bn = [(n, w + [np.ones(4)] if n == "block1_conv2" else w) for n, w in layers]
    fv.write_keras_h5(tmp_path / "bn.h5", bn)
    assert "layer 'block1_conv2' holds 3 weights" in \
        error_line(capsys, tmp_path, tmp_path / "bn.h5")
    bad = [(n, [w[0][:, :, :8], w[1]] if n == "block3_conv2" else w) for n, w in layers]
    fv.write_keras_h5(tmp_path / "shape.h5", bad)
    assert "layer 'block3_conv2' has a kernel of shape (3, 3, 8, 16) where config D " \
           "(VGG-16) has (3, 3, 16, 16)" in error_line(capsys, tmp_path, tmp_path / "shape.h5")


def test_paths_formats_and_flags(capsys, tmp_path, vgg16_sd):
    src = save_pth(tmp_path, vgg16_sd, "vgg16.pth")
    assert "not found" in error_line(capsys, tmp_path, tmp_path / "nope.pth")
    (tmp_path / "notes.txt").write_text("hello")
    assert "cannot tell what" in error_line(capsys, tmp_path, tmp_path / "notes.txt")
    assert "write a .npz" in error_line(capsys, tmp_path, src, dst=tmp_path / "out.pth")
    assert "--from keras expects a Keras HDF5 file" in \
        error_line(capsys, tmp_path, src, "--from", "keras")
    assert "has torchvision's tensor names" in error_line(capsys, tmp_path, src, "--from", "timm")
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    assert "--classes names 2 classes but" in \
        error_line(capsys, tmp_path, src, "--classes", tmp_path / "names.txt")


def test_the_cli_in_a_subprocess_one_line(tmp_path):
    torch.save([1, 2], tmp_path / "list.pth")
    env = {k: v for k, v in os.environ.items() if k != "MINIVGG_DEVICE"}
    proc = subprocess.run([sys.executable, "-m", "minivgg.convert", str(tmp_path / "list.pth"),
                           str(tmp_path / "out.npz")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'list.pth'} holds a list, not a state dict (a dict of tensor "
        "names to tensors, model.state_dict())"]


# -- the optional extras --------------------------------------------------------------------------
@pytest.mark.parametrize("module,extra,suffix", [("torch", "weights", ".pth"),
                                                  ("safetensors", "weights", ".safetensors"),
                                                  ("h5py", "keras", ".h5")])
def test_a_missing_extra_is_named(capsys, tmp_path, monkeypatch, vgg16_sd, module, extra,
                                  suffix):
    src = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save(vgg16_sd, src)
    elif suffix == ".safetensors":
        safetensors_torch.save_file(vgg16_sd, str(src))
    else:
        fv.write_keras_h5(src, fv.keras_layers(fv.torchvision_vgg("D"), "D"))
    for name in list(sys.modules):  # as if not installed: importing it raises ImportError
        if name == module or name.startswith(module + "."):
            monkeypatch.setitem(sys.modules, name, None)
    line = error_line(capsys, tmp_path, src)
    assert f"pip install 'minivgg[{extra}]'" in line and f"needs the {module} package" in line


def test_a_plain_install_never_pulls_the_extras_in():
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    names = {d.split("[")[0].split(">")[0].split("=")[0].strip()
             for d in project["dependencies"]}
    assert not names & {"torch", "safetensors", "h5py"}
    extras = project["optional-dependencies"]
    assert {"torch", "safetensors"} <= set(extras["weights"]) and extras["keras"] == ["h5py"]
    assert {"safetensors", "h5py"} <= set(extras["test"])  # CI installs them for these tests
    code = ("import sys, minivgg.convert, minivgg.convert.__main__, minivgg.evaluate, "
            "minivgg.predict, minivgg.train, minivgg.finetune; "
            "print(sorted(m for m in ('torch', 'safetensors', 'h5py') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr
