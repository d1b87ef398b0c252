"""train --init-from: fine-tuning a converted (or trained) net on a new image folder, the
paper's pre-initialisation from net A (sect. 3.1), and SGD's per-parameter learning rates."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minivgg import backend, checkpoint, finetune
from minivgg.data import normalise
from minivgg.evaluate import preprocess
from minivgg.optim import SGD
from minivgg.tape import Tensor, no_grad
from helpers import assert_one_line_error, image
from test_train import make_folder, train

RUN = ["--device", "cpu", "--batch-size", "8", "--lr", "0.01", "--workers", "1",
       "--lr-schedule", "plateau", "--warmup-steps", "0"]


@pytest.fixture(autouse=True)
def cpu():
    backend.set_device("cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data"))


def converted(tmp_path, source="torchvision", seed=0):
    """A VGG-16 at width 1/16 for 32-pixel inputs, 1000 classes, built in PyTorch and
    converted from a .pth (torchvision) or a Keras .h5 (BGR, Caffe's mean)."""
    fv = pytest.importorskip("foreign_vgg")
    from minivgg import convert
    tv = fv.torchvision_vgg("D", side=1, seed=seed)
    if source == "torchvision":
        src = tmp_path / "vgg16.pth"
        fv.torch.save(tv.state_dict(), src)
    else:
        pytest.importorskip("h5py")
        src = tmp_path / "vgg16.h5"
        fv.write_keras_h5(src, fv.keras_layers(tv, "D"))
    dst = str(tmp_path / f"vgg16-{source}.npz")
    convert.write(convert.read(str(src)), dst)
    return dst


# -- folding a checkpoint's preprocessing into the loader's (pixel - mean) / std ---------------
floats = st.floats(0.1, 200, allow_nan=False)


@given(bgr=st.booleans(), scale=st.sampled_from([1.0, 1 / 255, 0.017]),
       mean=st.lists(floats, min_size=3, max_size=3),
       std=st.none() | st.lists(floats, min_size=3, max_size=3), seed=st.integers(0, 99))
def test_fold_feeds_the_same_numbers_as_preprocess(bgr, scale, mean, std, seed):
    spec = dict(channels="BGR" if bgr else "RGB", scale=scale, mean=mean, std=std)
    img = image(3, 4, seed)
    mean_rgb, std_rgb, flip = finetune.fold(spec)
    folded = normalise(img, mean_rgb, std_rgb)  # what the training loader computes
    assert flip == bgr
    np.testing.assert_allclose(folded[..., ::-1] if bgr else folded,
                               preprocess(img, dict(preprocess=spec)), rtol=2e-5, atol=2e-5)


# -- SGD: learning-rate scales, frozen parameters ------------------------------------------------
def test_sgd_lr_scale_scales_the_step_and_zero_freezes():
    rng = np.random.default_rng(0)
    w0, g = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((3, 4))
    params = {n: Tensor(w0.copy()) for n in ("a.weight", "b.weight", "c.weight")}
    for p in params.values():
        p.grad = g.astype(np.float32)
    opt = SGD(params.items(), lr=0.1, momentum=0.9, weight_decay=5e-4,
              lr_scale={"b.weight": 0.1, "c.weight": 0.0})
    opt.step()
    step_a, step_b = params["a.weight"].data - w0, params["b.weight"].data - w0
    assert np.abs(step_a).min() > 0
    np.testing.assert_allclose(step_b, 0.1 * step_a, rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(params["c.weight"].data, w0)
    np.testing.assert_array_equal(opt.velocity["c.weight"], 0)


# -- fine-tuning, end to end ---------------------------------------------------------------------
def test_fine_tuning_keeps_all_but_the_last_layer_and_the_preprocessing(data, tmp_path):
    src = converted(tmp_path)
    out = tmp_path / "run"
    proc = train("--init-from", src, "--data", str(data), "--out", str(out), "--epochs", "1",
                 "--freeze", "features", *RUN)
    assert "fine-tuning" in proc.stdout and "copied 30 tensors; last layer new, 2 outputs" \
        in proc.stdout
    a, b = checkpoint.load(src), checkpoint.load(out / "last.npz")
    assert b["model"]["config"] == "D" and b["model"]["input_size"] == 32
    assert b["meta"]["classes"] == ["dark", "light"]
    assert b["params"]["classifier.6.weight"].shape == (2, 64)
    for k in a["params"]:
        if k.startswith("features."):  # frozen: exactly as converted
            np.testing.assert_array_equal(b["params"][k], a["params"][k], err_msg=k)
    assert not np.array_equal(b["params"]["classifier.0.weight"],
                              a["params"]["classifier.0.weight"])  # learned, at 0.1 x lr
    # torchvision's preprocessing, RGB 0-255: (x / 255 - m) / s = (x - 255 m) / (255 s)
    np.testing.assert_allclose(b["meta"]["mean_rgb"], [123.675, 116.28, 103.53], rtol=1e-6)
    np.testing.assert_allclose(b["meta"]["std_rgb"], [58.395, 57.12, 57.375], rtol=1e-6)
    assert b["meta"]["settings"]["finetune"]["freeze"] == "features"
    resumed = train("--resume", str(out / "last.npz"), "--data", str(data), "--out", str(out),
                    "--epochs", "2", *RUN)  # no --config: the checkpoint's, D
    assert "copied layers at 0.1 x lr (26 tensors frozen)" in resumed.stdout
    c = checkpoint.load(out / "last.npz")
    assert c["train_state"]["epoch"] == 2
    np.testing.assert_array_equal(c["params"]["features.0.weight"],
                                  a["params"]["features.0.weight"])


def test_a_bgr_net_is_fine_tuned_on_rgb_inputs_with_its_first_conv_reversed(data, tmp_path):
    """The Keras (Caffe) net reads BGR minus the mean pixel; the loader feeds RGB. Copied
    with its first conv's input channels reversed, the fine-tuned net's conv layers compute
    on the loader's numbers exactly what the source computes on its own."""
    from minivgg import train as train_cli
    from minivgg.model import VGG
    src = converted(tmp_path, "keras")
    args = train_cli.build_parser().parse_args(["--init-from", src, "--data", str(data)])
    s = train_cli.settings_from(args, "cpu")
    assert args.config == "D" and s["finetune"]["flip_channels"]
    assert s["crop"] == 32 and s["scale_jitter"] == (37, 73)  # Caffe's [256, 512] at 32/224
    np.testing.assert_allclose(s["finetune"]["mean_rgb"], [123.68, 116.779, 103.939])
    model = VGG("D", 2, s["width"], s["fc_width"], s["crop"], init="kaiming")
    finetune.initialise(model, src, s, ["dark", "light"])
    source = checkpoint.model_from_checkpoint(checkpoint.load(src))
    img = image(32, 32, seed=3)
    loader_input = normalise(img, s["finetune"]["mean_rgb"], s["finetune"]["std_rgb"])
    source_input = preprocess(img, checkpoint.load(src)["meta"])  # BGR - mean
    with no_grad():
        mine = model.features(Tensor(loader_input.transpose(2, 0, 1)[None].copy()))
        theirs = source.features(Tensor(source_input.transpose(2, 0, 1)[None].copy()))
    assert np.abs(theirs.data).max() > 0.1
    np.testing.assert_allclose(mine.data, theirs.data, rtol=1e-4, atol=1e-4)


def test_the_papers_preinitialisation_from_net_a_still_works(data, tmp_path):
    from minivgg import train as train_cli
    from minivgg.model import VGG
    from minivgg.trainer import Trainer
    net_a = VGG("A", 2, 1 / 16, 16, 32, init="kaiming", seed=5)
    checkpoint.save(tmp_path / "a.npz", net_a, meta=dict(classes=["dark", "light"],
                                                          mean_rgb=[0.0] * 3))
    flags = ["--config", "D", "--init-from", str(tmp_path / "a.npz"), "--data", str(data),
             "--out", str(tmp_path / "d"), "--width", "0.0625", "--fc-width", "16",
             "--crop", "32", "--scale", "36", *RUN]
    args = train_cli.build_parser().parse_args(flags)
    s = train_cli.settings_from(args, "cpu")
    assert "finetune" not in s
    trainer = Trainer(args, s)
    d, a = dict(trainer.model.named_parameters()), dict(net_a.named_parameters())
    for mine, theirs in (("features.0", "features.0"), ("features.12", "features.8"),
                         ("classifier.6", "classifier.6")):
        np.testing.assert_array_equal(d[mine + ".weight"].data, a[theirs + ".weight"].data)
    assert all(p.requires_grad for p in d.values()) and not trainer.opt.lr_scale


def test_fine_tuning_flags_that_cannot_work(data, tmp_path):
    src = converted(tmp_path)
    common = ["--data", str(data), "--out", str(tmp_path / "x"), *RUN]
    assert_one_line_error(train("--init-from", src, "--width", "0.5", *common, check=False),
                          "--width 0.5: fine-tuning keeps the net of", "width 0.0625")
    assert_one_line_error(train("--resume", src, *common, check=False),
                          "holds no optimizer state", "--init-from")
    assert_one_line_error(train("--init-from", src, "--lr-copied", "2", *common, check=False),
                          "--lr-copied must be in [0, 1]")
