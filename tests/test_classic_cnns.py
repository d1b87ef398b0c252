"""The classic nets of the compendium (../shared/papers/alexnet-and-classic-cnns.txt) on the
same kernels as VGG: AlexNet as published (two towers), its one-tower variant, ZFNet and
LeNet-5. Their parameter counts against the published ones, with the arithmetic written
out here (not computed by the code under test); output sizes and receptive fields; the
C3 connection table; and each net's logits and every gradient against a PyTorch twin built
here from torch.nn layers, with the same weights."""
import numpy as np
import pytest

from helpers import KERNEL_DEVICE, ON_GPU
from minivgg import backend, configs, ops
from minivgg.model import VGG, count_parameters, plan
from minivgg.tape import Tensor


@pytest.fixture(autouse=True)
def cpu():
    backend.set_device("cpu")
    yield
    backend.set_device("cpu")


# -- parameter counts ---------------------------------------------------------------------
# (weights per filter + 1) x filters, layer by layer, as the compendium's tables write them.
ALEXNET = {  # two towers: conv2, conv4, conv5 see 48, 192, 192 maps (one GPU's half)
    "conv1": (11 * 11 * 3 + 1) * 96,          # 34,944
    "conv2": (5 * 5 * 48 + 1) * 256,          # 307,456  (one tower: 614,656)
    "conv3": (3 * 3 * 256 + 1) * 384,         # 885,120
    "conv4": (3 * 3 * 192 + 1) * 384,         # 663,936  (one tower: 1,327,488)
    "conv5": (3 * 3 * 192 + 1) * 256,         # 442,624  (one tower: 884,992)
    "fc6": (6 * 6 * 256 + 1) * 4096,          # 37,752,832
    "fc7": (4096 + 1) * 4096,                 # 16,781,312
    "fc8": (4096 + 1) * 1000,                 # 4,097,000
}
ZFNET = {  # the compendium's ZFNet table (one GPU, no groups)
    "conv1": (7 * 7 * 3 + 1) * 96,            # 14,208
    "conv2": (5 * 5 * 96 + 1) * 256,          # 614,656
    "conv3": (3 * 3 * 256 + 1) * 384,         # 885,120
    "conv4": (3 * 3 * 384 + 1) * 384,         # 1,327,488
    "conv5": (3 * 3 * 384 + 1) * 256,         # 884,992
    "fc6": (6 * 6 * 256 + 1) * 4096,
    "fc7": (4096 + 1) * 4096,
    "fc8": (4096 + 1) * 1000,
}
LENET = {  # the compendium's LeNet-5 table
    "C1": (5 * 5 * 1 + 1) * 6,                # 156
    "S2": (1 + 1) * 6,                        # 12: a coefficient and a bias per map
    "C3": 6 * (25 * 3 + 1) + 6 * (25 * 4 + 1) + 3 * (25 * 4 + 1) + 1 * (25 * 6 + 1),  # 1,516
    "S4": (1 + 1) * 16,                       # 32
    "C5": (5 * 5 * 16 + 1) * 120,             # 48,120
    "F6": (120 + 1) * 84,                     # 10,164
    "output": (84 + 1) * 10,                  # 850
}


@pytest.mark.parametrize("config, layers, total", [
    ("AlexNet", ALEXNET, 60_965_224),
    ("ZFNet", ZFNET, 62_357_608),
    ("LeNet-5", LENET, 60_850),
])
def test_parameter_counts_are_the_published_ones(config, layers, total):
    assert sum(layers.values()) == total
    rows = {r.name: r.params for r in plan(config) if r.params}
    assert rows == layers
    assert count_parameters(config) == total


def test_one_tower_alexnet_has_the_merged_count():
    """Merging the towers doubles what conv2, conv4 and conv5 see: +1,413,120."""
    merged = dict(ALEXNET, conv2=(5 * 5 * 96 + 1) * 256, conv4=(3 * 3 * 384 + 1) * 384,
                  conv5=(3 * 3 * 384 + 1) * 256)
    assert count_parameters("AlexNet-1tower") == sum(merged.values()) == 62_378_344
    assert 62_378_344 - 60_965_224 == 307_200 + 663_552 + 442_368 == 1_413_120


def test_allocated_nets_have_the_exact_counts():
    alexnet = VGG("AlexNet", init="zeros")  # 244 MB of zeros: no random draws
    assert alexnet.num_parameters() == 60_965_224
    assert alexnet.features[4].weight.shape == (256, 48, 5, 5)  # conv2: half the maps
    assert alexnet.features[8].weight.shape == (384, 256, 3, 3)  # conv3: all of them
    del alexnet
    lenet = VGG("LeNet-5")
    assert lenet.num_parameters() == 60_850
    c3 = lenet.features[4].weight
    assert c3.shape == (16, 6, 5, 5) and c3.trainable == 1_500  # 60 connections x 25


# -- shapes and receptive fields ----------------------------------------------------------
@pytest.mark.parametrize("config, want", [
    # name: (output side, receptive field, jump), by r <- r + (k-1) j, j <- j s
    ("AlexNet", {"conv1": (55, 11, 4), "pool1": (27, 19, 8), "conv2": (27, 51, 8),
                 "pool2": (13, 67, 16), "conv3": (13, 99, 16), "conv5": (13, 163, 16),
                 "pool5": (6, 195, 32)}),
    ("ZFNet", {"conv1": (110, 7, 2), "pool1": (55, 11, 4), "conv2": (26, 27, 8),
               "pool2": (13, 43, 16), "conv5": (13, 139, 16), "pool5": (6, 171, 32)}),
    ("LeNet-5", {"C1": (28, 5, 1), "S2": (14, 6, 2), "C3": (10, 14, 2), "S4": (5, 16, 4),
                 "C5": (1, 32, 4)}),
])
def test_output_sizes_and_receptive_fields(config, want):
    rows = {r.name: r for r in plan(config)}
    assert {n: (rows[n].out_shape[1], rows[n].rf, rows[n].jump) for n in want} == want


def test_layouts():
    kinds = [r.kind for r in plan("AlexNet")][:4]
    assert kinds == ["conv", "relu", "lrn", "pool"]  # AlexNet: LRN after the ReLU, then pool
    assert [r.kind for r in plan("ZFNet")][:4] == ["conv", "relu", "pool", "lrn"]  # Fig. 3
    groups = {r.name: r.spec.groups for r in plan("AlexNet") if r.kind == "conv"}
    assert groups == {"conv1": 1, "conv2": 2, "conv3": 1, "conv4": 2, "conv5": 2}
    lenet = [(r.name, r.kind) for r in plan("LeNet-5")]
    assert lenet == [("C1", "conv"), ("tanh1", "tanh"), ("S2", "subsample"),
                     ("tanh2", "tanh"), ("C3", "conv"), ("tanh3", "tanh"),
                     ("S4", "subsample"), ("tanh4", "tanh"), ("C5", "conv"),
                     ("tanh5", "tanh"), ("F6", "fc"), ("tanh6", "tanh"), ("output", "fc")]


def test_c3_connection_table_is_lecuns():
    """LeCun et al. 1998, Table I: C3 map k takes the S2 maps listed (as the compendium's
    table); 6 x 3 + 6 x 4 + 3 x 4 + 6 = 60 connections."""
    want = [{0, 1, 2}, {1, 2, 3}, {2, 3, 4}, {3, 4, 5}, {0, 4, 5}, {0, 1, 5},
            {0, 1, 2, 3}, {1, 2, 3, 4}, {2, 3, 4, 5}, {0, 3, 4, 5}, {0, 1, 4, 5},
            {0, 1, 2, 5}, {0, 1, 3, 4}, {1, 2, 4, 5}, {0, 2, 3, 5}, {0, 1, 2, 3, 4, 5}]
    table = configs.get("LeNet-5").layers[2].connections()
    assert table.shape == (16, 6)
    assert [set(np.flatnonzero(row)) for row in table] == want


def test_alexnet_init_sets_the_biases_of_sect_5():
    model = VGG("AlexNet", num_classes=5, width=1 / 16, fc_width=16, input_size=64,
                init="alexnet")
    ones = {r.name for r in model.summary()
            if r.params and np.all(model_bias(model, r.index) == 1)}
    assert ones == {"conv2", "conv4", "conv5", "fc6", "fc7"}
    w = model.features[0].weight.data
    assert abs(w.std() - 0.01) < 0.002 and abs(w.mean()) < 0.002  # N(0, 0.01^2)


def model_bias(model, index):
    return dict(model.named_parameters())[f"{index}.bias"].data


# -- PyTorch twins --------------------------------------------------------------------------
def torch_twin(torch, model):
    import torch.nn.utils.prune  # noqa: F401  (not imported by torch itself)
    """The same net built from torch.nn layers, laid out like ours (so state dicts match):
    Conv2d with groups, LocalResponseNorm (its alpha divides by the window: ours times
    size), MaxPool2d (ceil_mode), LeNet's sub-sampling as an AvgPool2d times a coefficient
    plus a bias, C3 as a Conv2d whose weight torch.nn.utils.prune masks with the table."""
    nn = torch.nn

    class Subsample(nn.Module):
        def __init__(self, C, window, stride):
            super().__init__()
            self.pool = nn.AvgPool2d(window, stride)
            self.coef, self.bias = nn.Parameter(torch.ones(C)), nn.Parameter(torch.zeros(C))

        def forward(self, x):
            return self.pool(x) * self.coef[:, None, None] + self.bias[:, None, None]

    def layer(row, C):
        s = row.spec
        if row.kind == "conv":
            return nn.Conv2d(C, row.out_shape[0], row.kernel, row.stride, row.padding,
                             groups=s.groups)
        if row.kind == "fc":
            return nn.Linear(C * row.kernel ** 2, row.out_shape[0])
        if row.kind == "lrn":
            return nn.LocalResponseNorm(s.size, s.alpha * s.size, s.beta, s.k)
        if row.kind == "pool":
            return nn.MaxPool2d(row.kernel, row.stride, ceil_mode=s.ceil)
        if row.kind == "subsample":
            return Subsample(C, row.kernel, row.stride)
        return {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
                "dropout": nn.Identity}[row.kind]()

    twin, C = nn.Module(), model.in_channels
    for part in ("features", "classifier"):
        layers = []
        for row in model.summary():
            if row.index.startswith(part + "."):
                layers.append(layer(row, C))
                C = row.out_shape[0]
        setattr(twin, part, nn.Sequential(*layers))
    # every name matches ours (Subsample's too: "coef" and "bias")
    twin.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    for row in model.summary():  # C3: the table as a pruning mask (weight = orig * mask)
        table = row.spec.connections() if row.kind == "conv" else None
        if table is not None:
            conv = twin.features[int(row.index.split(".")[1])]
            mask = torch.tensor(table[:, :, None, None]).expand_as(conv.weight)
            torch.nn.utils.prune.custom_from_mask(conv, "weight", mask.clone())
    return twin


def our_step(model, x, labels):
    """Logits and {name: gradient} of the mean cross-entropy through minivgg.ops."""
    model.zero_grad()
    logits = model(Tensor(backend.to_device(x)))
    ops.softmax_cross_entropy(logits, labels).backward()
    grads = {n: backend.to_host(p.grad) for n, p in model.named_parameters()}
    return backend.to_host(logits.data), grads


def torch_step(torch, twin, x, labels):
    logits = torch.flatten(twin.features(torch.tensor(x)), 1)
    logits = twin.classifier(logits)
    torch.nn.functional.cross_entropy(logits, torch.tensor(labels, dtype=torch.long)).backward()
    grads = {n.replace("weight_orig", "weight"): p.grad.numpy()
             for n, p in twin.named_parameters()}
    return logits.detach().numpy(), grads


NETS = {  # reduced width where size does not matter; inputs just large enough
    "AlexNet": dict(width=1 / 16, fc_width=16, input_size=64),      # groups of 3 .. 12 maps
    "AlexNet-1tower": dict(width=1 / 16, fc_width=16, input_size=64),
    "ZFNet": dict(width=1 / 16, fc_width=16, input_size=80),        # 38, 19, 8, 4, 2: ceil
    "LeNet-5": dict(),                                              # as published, 32x32x1
}


@pytest.mark.parametrize("config", NETS)
def test_logits_and_gradients_equal_a_torch_twin(config):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = VGG(config, num_classes=5, dropout=0.0, init="kaiming", seed=1, **NETS[config])
    rng = np.random.default_rng(2)
    for p in model.parameters():  # biases and coefficients away from 0 and 1 too
        p.data += (0.1 * rng.standard_normal(p.shape)).astype(np.float32) * (p.data.ndim == 1)
    x = rng.standard_normal((3, model.in_channels, model.input_size, model.input_size))
    x = x.astype(np.float32)
    labels = np.array([0, 3, 4], dtype=np.int32)
    logits, grads = our_step(model, x, labels)
    want_logits, want_grads = torch_step(torch, torch_twin(torch, model), x, labels)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-5)
    assert grads.keys() == want_grads.keys()
    for name, g in grads.items():
        assert np.abs(g).max() > 0, name
        np.testing.assert_allclose(g, want_grads[name], rtol=1e-3, atol=1e-6, err_msg=name)


def test_lenet_c3_left_out_weights_get_no_gradient():
    model = VGG("LeNet-5", init="glorot")
    x = np.random.default_rng(3).standard_normal((2, 1, 32, 32)).astype(np.float32)
    _, grads = our_step(model, x, np.array([1, 7], dtype=np.int32))
    table = configs.get("LeNet-5").layers[2].connections()
    dw = grads["features.4.weight"]
    assert np.all(dw[table == 0] == 0) and np.all(np.abs(dw[table == 1]).max(axis=1) > 0)
    assert np.all(model.features[4].weight.data[table == 0] == 0)


def test_a_one_channel_net_takes_rgb_as_its_grey_level():
    """Image folders decode every image to RGB, a grey one to three equal channels: the
    net sees the channel mean, which is then the grey image itself; the dense view too."""
    model = VGG("LeNet-5", init="glorot").eval()
    grey = np.random.default_rng(4).standard_normal((2, 1, 32, 32)).astype(np.float32)
    rgb = np.repeat(grey, 3, axis=1)
    want = model(Tensor(grey)).data
    np.testing.assert_allclose(model(Tensor(rgb)).data, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model.dense()(Tensor(rgb)).data[:, :, 0, 0], want, rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(Exception, match="takes 1-channel input, got 2 channels"):
        model(Tensor(grey.repeat(2, axis=1)))


@pytest.mark.skipif(not ON_GPU, reason="a minute and more in the simulator; its kernels are "
                    "tested one by one there (test_ops.py and each kernel's tests)")
def test_lenet_step_through_the_kernels_equals_the_references():
    """One LeNet-5 step through the kernels (every new one: tanh, sub-sampling, the C3 mask,
    convs) equals the same step through the NumPy references on cpu."""
    x = np.random.default_rng(5).standard_normal((1, 1, 32, 32)).astype(np.float32)
    labels = np.array([3], dtype=np.int32)
    results = []
    for device in ("cpu", KERNEL_DEVICE):
        backend.set_device(device)
        with ops.kernel_versions(conv=1):  # one thread per output: the fewest threads
            results.append(our_step(VGG("LeNet-5", init="glorot", seed=6), x, labels))
    (logits, grads), (got_logits, got_grads) = results
    np.testing.assert_allclose(got_logits, logits, rtol=2e-4, atol=2e-5)
    for name, g in grads.items():
        np.testing.assert_allclose(got_grads[name], g, rtol=2e-4, atol=2e-5, err_msg=name)


# -- configuration errors, checkpoints ----------------------------------------------------
def test_widths_that_break_groups_or_the_table_are_config_errors():
    from minivgg.configs import ConfigError
    with pytest.raises(ConfigError, match="2 groups do not divide the 5 -> 13 channels"):
        plan("AlexNet", width=1 / 20)  # conv1 96/20 -> 5 maps, conv2 256/20 -> 13
    with pytest.raises(ConfigError, match="connection table is for 6 -> 16 maps"):
        plan("LeNet-5", width=0.5)
    with pytest.raises(ConfigError, match="input_size 62 is too small for config ZFNet"):
        plan("ZFNet", input_size=62)  # conv1 29, pool1 14, conv2 5, pool2 2: pool5 gets 2x2


@pytest.mark.parametrize("config", ["AlexNet", "LeNet-5"])
def test_checkpoints_rebuild_the_classic_nets(config, tmp_path):
    from minivgg import checkpoint
    model = VGG(config, num_classes=4, init="kaiming", seed=3, **NETS[config])
    checkpoint.save(tmp_path / "m.npz", model)
    again = checkpoint.model_from_checkpoint(checkpoint.load(tmp_path / "m.npz"))
    assert again.definition() == model.definition()
    assert again.definition()["in_channels"] == (1 if config == "LeNet-5" else 3)
    for (n, p), (_, q) in zip(model.named_parameters(), again.named_parameters()):
        np.testing.assert_array_equal(backend.to_host(q.data), backend.to_host(p.data), n)


# -- training presets, the digits set, the command lines ------------------------------------
def test_presets_follow_the_config():
    from minivgg import train
    parse = train.build_parser().parse_args
    s = train.settings_from(parse(["--config", "LeNet-5"]), "cpu")
    assert (s["preset"], s["dataset"], s["flip"], s["crop"], s["fc_width"]) == \
        ("lenet", "digits", False, 32, 84)
    for config in ("AlexNet", "AlexNet-1tower", "ZFNet"):
        assert train.settings_from(parse(["--config", config]), "cpu")["preset"] == "cpu-alexnet"
    assert train.settings_from(parse(["--config", "B"]), "cpu")["preset"] == "cpu"
    s = train.settings_from(parse(["--config", "AlexNet", "--preset", "alexnet"]), "cpu")
    assert (s["batch_size"], s["lr"], s["momentum"], s["weight_decay"], s["init"],
            s["schedule"], s["crop"], s["scale"], s["dropout"]) == \
        (128, 0.01, 0.9, 5e-4, "alexnet", "plateau", 224, 256, 0.5)


def test_digits_are_grey_balanced_and_reproducible(tmp_path):
    from PIL import Image
    from minivgg import data
    a = data.render_digit(7, np.random.default_rng([0, 0, 7]))
    assert a.shape == (32, 32) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, data.render_digit(7, np.random.default_rng([0, 0, 7])))
    root = data.make_digits(tmp_path / "d", n_train=20, n_val=10, seed=1)
    for split, n in (("train", 2), ("val", 1)):
        for d in data.DIGIT_CLASSES:
            files = sorted((tmp_path / "d" / split / d).iterdir())
            assert len(files) == n
            with Image.open(files[0]) as im:
                assert im.mode == "L" and im.size == (32, 32)
    assert data.ImageFolder(root, "train", warn=False).classes == [str(d) for d in range(10)]


def test_lenet_trains_evaluates_and_predicts_from_the_command_line(tmp_path):
    """A tiny digits set, one epoch of --config LeNet-5, then evaluate and predict read
    the grey checkpoint like any other (they feed RGB; the net takes its grey level)."""
    import subprocess
    import sys
    from minivgg import data
    root = tmp_path / "digits"
    data.make_digits(root, n_train=60, n_val=20)
    env = {k: v for k, v in __import__("os").environ.items() if k != "MINIVGG_DEVICE"}

    def run(module, *args):
        proc = subprocess.run([sys.executable, "-m", module, *map(str, args), "--device",
                               "cpu"], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    out = run("minivgg.train", "--config", "LeNet-5", "--data", root, "--epochs", "1",
              "--out", tmp_path / "run", "--workers", "1")
    assert "60,850 parameters, input 32x32, 10 classes" in out
    ckpt = tmp_path / "run" / "last.npz"
    assert "top-1" in run("minivgg.evaluate", ckpt, "--data", root, "--no-flip",
                          "--out", tmp_path / "eval")
    assert "1. " in run("minivgg.predict", ckpt, root / "val" / "3" / "000003.png")
