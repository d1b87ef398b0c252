"""minivgg.convert: VGGs built in PyTorch from torch.nn layers, stored as torchvision, timm
and Keras store them, converted; minivgg's logits on a real photograph equal the source
model's within float32 rounding, dense evaluation included; the way back is exact.

Reduced widths (1/16) where the layout is under test; one full-size VGG-16."""
import json
import re

import numpy as np
import pytest

from minivgg import backend, checkpoint, convert
from minivgg.data import center_crop, rescale
from minivgg.evaluate import load_net, posteriors_dense, preprocess, softmax
from minivgg.tape import Tensor, no_grad

fv = pytest.importorskip("foreign_vgg")  # skips without torch
torch = fv.torch
safetensors_torch = pytest.importorskip("safetensors.torch")


@pytest.fixture(autouse=True)
def cpu():
    backend.set_device("cpu")


@pytest.fixture(scope="module")
def photo():
    return fv.photo()


def our_logits(net, img):
    """The FC network on one crop-size image, preprocessed by the checkpoint's meta."""
    x = preprocess(img, net.meta).transpose(2, 0, 1)[None]
    with no_grad():
        out = net.model(Tensor(backend.to_device(np.ascontiguousarray(x))))
    return backend.to_host(out.data)[0].astype(np.float64)


def assert_logits_close(ours, theirs):
    """float32 rounding through 16-19 layers, relative to the size of the logits."""
    scale = np.abs(theirs).max()
    assert scale > 0.1  # the comparison means something
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-5 * scale)
    assert np.argmax(ours) == np.argmax(theirs)


def torch_dense_posteriors(tv, img, q, convention="torchvision"):
    """Sect. 3.2 written in PyTorch: timm's VGG (fc6/fc7 as convs, global average pool),
    on the image rescaled to Q and its mirror, posteriors averaged."""
    timm = fv.TimmVGG(tv)
    x = rescale(img, q)
    scores = [fv.logits(timm, v, convention) for v in (x, x[:, ::-1])]
    return softmax(np.stack(scores)).mean(axis=0)


def convert_to(tmp_path, src, name="vgg.npz", **kw):
    dst = str(tmp_path / name)
    convert.write(convert.read(str(src), **kw), dst)
    return dst


# -- torchvision .pth --------------------------------------------------------------------------
def test_torchvision_pth_vgg16_same_logits_and_dense_posteriors(tmp_path, photo):
    tv = fv.torchvision_vgg("D")
    torch.save(tv.state_dict(), tmp_path / "vgg16.pth")
    net = load_net(convert_to(tmp_path, tmp_path / "vgg16.pth"))
    assert net.model.config == "D" and net.model.num_classes == 1000
    assert net.meta["classes"][281] == "tabby" and net.scales == [256]
    crop = center_crop(rescale(photo, 256), 224)
    assert_logits_close(our_logits(net, crop), fv.logits(tv, crop))
    for q in (256, 320):  # score maps of 2x2 and 4x3 positions
        np.testing.assert_allclose(posteriors_dense(net.model, photo, [q], True, net.meta),
                                   torch_dense_posteriors(tv, photo, q), rtol=1e-4, atol=1e-7)


def test_full_size_vgg16_from_pth(tmp_path, photo):
    """The real VGG-16's layout and size (138,357,544 parameters), random weights."""
    tv = fv.torchvision_vgg("D", width=1, fc=4096)
    crop = center_crop(rescale(photo, 256), 224)
    theirs = fv.logits(tv, crop)
    torch.save(tv.state_dict(), tmp_path / "vgg16-397923af.pth")
    del tv  # one full-size copy less in memory
    net = load_net(convert_to(tmp_path, tmp_path / "vgg16-397923af.pth", "vgg16.npz"))
    assert net.model.num_parameters() == 138_357_544
    assert_logits_close(our_logits(net, crop), theirs)


def test_wrapped_parallel_and_legacy_state_dicts(tmp_path):
    """{'state_dict': ..., 'epoch': ...} checkpoints, nn.DataParallel's 'module.' prefix and
    torch.save's legacy (non-zip) format, under an extension that says nothing."""
    sd = fv.state_dict(fv.torchvision_vgg("A", side=1))
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}},
               tmp_path / "wrapped.pth")
    torch.save(sd, tmp_path / "vgg11.weights", _use_new_zipfile_serialization=False)
    for name in ("wrapped.pth", "vgg11.weights"):
        got = convert.read(str(tmp_path / name))
        assert got.definition["config"] == "A" and got.definition["input_size"] == 32
        for k, v in sd.items():
            np.testing.assert_array_equal(got.params[k], v.numpy(), err_msg=f"{name} {k}")


# -- safetensors: torchvision and timm names ---------------------------------------------------
def test_safetensors_with_torchvision_names_vgg19(tmp_path, photo):
    tv = fv.torchvision_vgg("E", seed=1)
    safetensors_torch.save_file(fv.state_dict(tv), str(tmp_path / "vgg19.safetensors"))
    net = load_net(convert_to(tmp_path, tmp_path / "vgg19.safetensors"))
    assert net.model.config == "E"
    crop = center_crop(rescale(photo, 256), 224)
    assert_logits_close(our_logits(net, crop), fv.logits(tv, crop))


def test_safetensors_with_timm_names_dense_evaluation(tmp_path, photo):
    """timm's vgg16 (pre_logits fc1/fc2 as convs, head.fc) is dense evaluation itself:
    its logits on a whole non-square image equal the average of our class score map."""
    tv = fv.torchvision_vgg("D", seed=2)
    timm = fv.TimmVGG(tv)
    sd = fv.state_dict(timm)
    assert sd["pre_logits.fc1.weight"].shape == (64, 32, 7, 7)
    safetensors_torch.save_file(sd, str(tmp_path / "model.safetensors"))
    net = load_net(convert_to(tmp_path, tmp_path / "model.safetensors"))
    assert net.model.config == "D" and net.meta["source"]["format"] == "timm"
    x = rescale(photo, 288)  # 337 x 288: a 4 x 3 score map
    with no_grad():
        smap = net.model.dense()(Tensor(backend.to_device(np.ascontiguousarray(
            preprocess(x, net.meta).transpose(2, 0, 1)[None]))))
    ours = backend.to_host(smap.data)[0].mean(axis=(1, 2)).astype(np.float64)
    assert smap.shape[2:] == (4, 3)
    assert_logits_close(ours, fv.logits(timm, x))


# -- Keras HDF5 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("style", ["release", "model"])
def test_keras_h5_bgr_caffe_preprocessing(tmp_path, photo, style):
    """Keras's layout (HWIO kernels, channels-last flatten) and Caffe's inputs (BGR minus
    the mean pixel): the same logits as the Keras file's own net run channels-last in
    NumPy, and as the torch model fed Caffe's inputs."""
    tv = fv.torchvision_vgg("D", seed=3)
    h5 = tmp_path / f"vgg16_{style}.h5"
    fv.write_keras_h5(h5, fv.keras_layers(tv, "D"), style)
    net = load_net(convert_to(tmp_path, h5))
    assert net.meta["preprocess"]["channels"] == "BGR" and net.scales == [384]
    crop = center_crop(rescale(photo, 256), 224)
    keras = fv.keras_forward(h5, crop)
    assert_logits_close(our_logits(net, crop), keras)
    assert_logits_close(our_logits(net, crop), fv.logits(tv, crop, "caffe"))
    np.testing.assert_allclose(posteriors_dense(net.model, photo, [256], True, net.meta),
                               torch_dense_posteriors(tv, photo, 256, "caffe"), rtol=1e-4,
                               atol=1e-7)


# -- the way back ---------------------------------------------------------------------------------
def test_minivgg_to_safetensors_to_minivgg_is_exact(tmp_path):
    from helpers import save_tiny
    src = save_tiny(tmp_path / "trained.npz")
    out = convert_to(tmp_path, src, "model.safetensors")
    back = convert_to(tmp_path, out, "back.npz")
    a, b = checkpoint.load(src), checkpoint.load(back)
    assert a["model"] == b["model"] and a["meta"] == b["meta"]
    assert a["params"].keys() == b["params"].keys()
    for k in a["params"]:
        assert a["params"][k].dtype == b["params"][k].dtype == np.float32
        np.testing.assert_array_equal(a["params"][k], b["params"][k], err_msg=k)


def test_exported_safetensors_loads_in_pytorch(tmp_path, photo):
    """A converted (or trained) net, written back with torchvision's names, loads into
    torchvision's VGG with strict=True and computes the same logits."""
    tv = fv.torchvision_vgg("D", seed=4)
    torch.save(tv.state_dict(), tmp_path / "a.pth")
    out = convert_to(tmp_path, convert_to(tmp_path, tmp_path / "a.pth"), "out.safetensors")
    other = fv.torchvision_vgg("D", seed=5)
    other.load_state_dict(safetensors_torch.load_file(out), strict=True)
    crop = center_crop(rescale(photo, 256), 224)
    np.testing.assert_array_equal(fv.logits(other, crop), fv.logits(tv, crop))
    with open(out, "rb") as f:  # torchvision names, metadata as Hugging Face expects
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert header["__metadata__"]["format"] == "pt"
    assert "classifier.0.weight" in header and header["features.0.weight"]["shape"] == [4, 3, 3, 3]


# -- the command line -----------------------------------------------------------------------------
def test_cli_converts_and_says_what_it_found(tmp_path):
    from helpers import run_cli
    torch.save(fv.torchvision_vgg("A").state_dict(), tmp_path / "vgg11.pth")
    proc = run_cli_no_device(run_cli, "minivgg.convert", tmp_path / "vgg11.pth",
                             tmp_path / "vgg11.npz")
    assert proc.returncode == 0, proc.stderr
    assert "config A (VGG-11)" in proc.stdout and "1000 classes" in proc.stdout
    assert "RGB, / 255, - mean (0.485, 0.456, 0.406), / std (0.229, 0.224, 0.225)" in \
        proc.stdout
    assert checkpoint.load(tmp_path / "vgg11.npz")["model"]["config"] == "A"


def run_cli_no_device(run_cli, module, *args):
    """helpers.run_cli appends --device cpu; convert has no device: run it directly."""
    import os
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                          text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "MINIVGG_DEVICE"})


# -- lesson 4 on a converted net -------------------------------------------------------------------
def test_lesson_4_runs_the_converted_net_and_names_its_class(tmp_path):
    """--weights: the lesson's score map of the photograph, averaged, tops the same class
    as timm's VGG (dense evaluation in PyTorch) on the same picture."""
    import os
    import sys
    from test_lessons import run_lesson
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "lessons"))
    from _lesson import sample_photo
    tv = fv.torchvision_vgg("D", seed=6)
    torch.save(tv.state_dict(), tmp_path / "vgg16.pth")
    ckpt = convert_to(tmp_path, tmp_path / "vgg16.pth")
    out = run_lesson("04_dense_evaluation.py", tmp_path / "out", "--weights", ckpt)
    theirs = fv.logits(fv.TimmVGG(tv), sample_photo(384))
    printed = re.search(r"image scores = mean of the map over its 48 positions: \[([^]]*)\]",
                        out)
    np.testing.assert_allclose([float(v) for v in printed.group(1).split()], theirs[:5],
                               atol=1e-3)
    top = int(np.argmax(theirs))
    assert f"top class: {top} ({checkpoint.load(ckpt)['meta']['classes'][top]})" in out
    assert "photo score map size: 8 x 6" in out and "top 5 (soft-max" in out
    assert (tmp_path / "out" / "04_dense_evaluation.png").stat().st_size > 5000
