"""model.py and configs.py: Table 1 and 2, receptive fields, torchvision names, the dense
view (sect. 3.2), pre-initialisation from net A (sect. 3.1), a backward through a VGG.

Expected numbers are written out here, from the paper and torchvision, not computed by
the code under test.
"""
import gc

import numpy as np
import pytest

from minivgg import backend, configs, nn, ops
from minivgg.errors import UserError
from minivgg.model import VGG, count_parameters, format_summary, plan
from minivgg.tape import Tensor, no_grad


@pytest.fixture(autouse=True)
def cpu():
    backend.set_device("cpu")


TINY = dict(num_classes=5, width=1 / 16, fc_width=32, input_size=32)

# Full-size counts (width 1, 1000 classes, 224 input), and Table 2 in millions.
COUNTS = {"A": 132_863_336, "A-LRN": 132_863_336, "B": 133_047_848, "C": 133_638_952,
          "D": 138_357_544, "E": 143_667_240}
TABLE2 = {"A": 133, "A-LRN": 133, "B": 133, "C": 134, "D": 138, "E": 144}


@pytest.mark.parametrize("config", list(COUNTS))
def test_parameter_counts_match_table_2(config):
    n = count_parameters(config)
    assert n == COUNTS[config]
    assert round(n / 1e6) == TABLE2[config]


def test_allocated_model_a_has_the_exact_count():
    # ~0.5 GB of float32. Zeros: drawing 133M normals takes seconds and is checked at
    # small size in test_nn.py.
    model = VGG("A", init="zeros")
    assert model.num_parameters() == 132_863_336
    del model
    gc.collect()


# torchvision vgg16 (D): index -> (weight shape) for features, then classifier.
VGG16 = {
    "features.0": (64, 3, 3, 3), "features.2": (64, 64, 3, 3),
    "features.5": (128, 64, 3, 3), "features.7": (128, 128, 3, 3),
    "features.10": (256, 128, 3, 3), "features.12": (256, 256, 3, 3),
    "features.14": (256, 256, 3, 3),
    "features.17": (512, 256, 3, 3), "features.19": (512, 512, 3, 3),
    "features.21": (512, 512, 3, 3),
    "features.24": (512, 512, 3, 3), "features.26": (512, 512, 3, 3),
    "features.28": (512, 512, 3, 3),
    "classifier.0": (4096, 25088), "classifier.3": (4096, 4096), "classifier.6": (1000, 4096),
}


def _vgg16_shapes():
    out = {}
    for prefix, shape in VGG16.items():
        out[f"{prefix}.weight"], out[f"{prefix}.bias"] = shape, (shape[0],)
    return out


def test_d_names_and_shapes_are_torchvision_vgg16():
    model = VGG("D", init="zeros")  # no random draws: fast
    got = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert got == _vgg16_shapes()
    assert list(got)[:2] == ["features.0.weight", "features.0.bias"]
    assert model.num_parameters() == 138_357_544
    try:
        import torchvision
    except ImportError:
        return
    tv = torchvision.models.vgg16(weights=None).state_dict()
    assert {n: tuple(t.shape) for n, t in tv.items()} == got


def _rf(rows):
    return {r.name: r.rf for r in rows}


def test_receptive_fields_of_d():
    rf = _rf(VGG("D", init="zeros").summary())  # full size, 224: zeros cost no draws
    assert [rf[f"pool{i}"] for i in range(1, 6)] == [6, 16, 44, 100, 212]
    assert rf["conv1_1"] == 3 and rf["conv5_3"] == 196
    assert rf["fc6"] == 404 and rf["fc8"] == 404  # fc6 = a 7x7 conv over pool5


def test_summary_rows_of_a_built_model():
    model = VGG("D", **TINY)
    rows = model.summary()
    by = {r.name: r for r in rows}
    assert by["conv1_1"].index == "features.0" and by["conv5_3"].index == "features.28"
    assert by["fc6"].index == "classifier.0" and by["fc8"].index == "classifier.6"
    assert by["pool5"].out_shape == (32, 1, 1)  # 512/16 channels, 32/32 pixels
    assert by["conv1_1"].out_shape == (4, 32, 32)
    # conv1_1: 4 out x 3 in x 9 taps at each of 32x32 outputs
    assert by["conv1_1"].madds == 4 * 3 * 9 * 32 * 32
    assert by["conv1_1"].act_bytes == 4 * 4 * 32 * 32
    assert sum(r.params for r in rows) == model.num_parameters()
    text = format_summary(rows)
    assert "conv5_3" in text and "features.28" in text and "fc6" in text


def test_c_has_1x1_convs_closing_blocks_3_to_5():
    by = {r.name: r for r in plan("C")}
    assert [by[n].kernel for n in ("conv3_3", "conv4_3", "conv5_3")] == [1, 1, 1]
    assert by["conv3_2"].kernel == 3
    assert by["pool5"].rf == 156  # 1x1 convs add nothing: D's 212 minus three 3x3 layers


def test_b5x5_and_lrn_layouts():
    rows = plan("B-5x5")
    convs = [r for r in rows if r.kind == "conv"]
    assert len(convs) == 5 and all(r.kernel == 5 and r.padding == 2 for r in convs)
    # each 5x5 sees what B's pair of 3x3s sees: B's pool5 field, 156 (D's three-conv
    # blocks reach 212)
    assert {r.name: r.rf for r in rows}["pool5"] == 156
    kinds = [r.kind for r in plan("A-LRN")][:4]
    assert kinds == ["conv", "relu", "lrn", "pool"]


def test_alexnet_at_224_has_a_6x6_last_map():
    by = {r.name: r for r in plan("AlexNet")}
    assert by["conv1"].out_shape == (96, 55, 55)
    assert by["pool5"].out_shape == (256, 6, 6)
    assert by["fc6"].params == 256 * 6 * 6 * 4096 + 4096
    model = VGG("AlexNet", num_classes=3, width=1 / 8, fc_width=16, init="kaiming")
    model.eval()
    with no_grad():
        y = model(Tensor(np.zeros((1, 3, 224, 224), dtype=np.float32)))
    assert y.shape == (1, 3)


def test_unknown_config_lists_the_valid_names():
    with pytest.raises(UserError) as e:
        VGG("F")
    msg = str(e.value)
    assert "\n" not in msg and "'F'" in msg
    assert all(n in msg for n in ("A", "A-LRN", "B", "C", "D", "E", "B-5x5", "AlexNet"))
    assert configs.names()[:6] == ["A", "A-LRN", "B", "C", "D", "E"]


def test_too_small_input_and_bad_width_are_errors():
    with pytest.raises(ValueError, match="input_size 16"):
        VGG("D", **dict(TINY, input_size=16))  # pool5 would get a 0x0 map
    with pytest.raises(UserError, match="width"):
        VGG("A", **dict(TINY, width=0))
    model = VGG("A", num_classes=5, width=0.001, fc_width=8, input_size=32)
    assert model.features[0].weight.shape == (1, 3, 3, 3)  # rounded up to one channel


def test_forward_rejects_an_input_of_another_size():
    model = VGG("A", **TINY)
    with pytest.raises(UserError, match="dense"):
        model(Tensor(np.zeros((1, 3, 64, 64), dtype=np.float32)))


def _randomise(model, seed):
    """Kaiming-sized weights and non-zero biases, so every term shows in the outputs."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        scale = 0.1 if name.endswith("bias") else np.sqrt(2.0 / np.prod(p.shape[1:]))
        p.data[...] = (rng.standard_normal(p.shape) * scale).astype(np.float32)


def test_dense_equals_the_classifier_and_slides_it():
    # input_size 64 makes the final map 2x2, so fc6 becomes a 2x2 conv: the reshape of its
    # weight must put (C, H, W) in the order flatten does.
    model = VGG("A", num_classes=5, width=1 / 16, fc_width=32, input_size=64)
    _randomise(model, 0)
    model.eval()
    dense = model.dense()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    with no_grad():
        logits = model(Tensor(x)).data
        scores = dense(Tensor(x)).data
    assert scores.shape == (2, 5, 1, 1)
    np.testing.assert_allclose(scores[:, :, 0, 0], logits, rtol=1e-4, atol=1e-5)

    m = 2  # 64 + 32 m input -> (2 + m) x (2 + m) features -> (m + 1) x (m + 1) scores
    big = rng.standard_normal((1, 3, 64 + 32 * m, 64 + 32 * m)).astype(np.float32)
    with no_grad():
        scores = dense(Tensor(big)).data
        feats = model.features(Tensor(big)).data
        assert scores.shape == (1, 5, m + 1, m + 1)
        for p in range(m + 1):  # each score = the classifier on one 2x2 window of features
            for q in range(m + 1):
                window = np.ascontiguousarray(feats[:, :, p:p + 2, q:q + 2])
                want = model.classifier(ops.flatten(Tensor(window))).data
                np.testing.assert_allclose(scores[:, :, p, q], want, rtol=1e-4, atol=1e-5)


def test_dense_shares_the_weight_arrays():
    model = VGG("A", **TINY)
    _randomise(model, 2)
    model.eval()
    dense = model.dense()
    fc6 = model.classifier[0].weight.data
    assert np.shares_memory(dict(dense.named_parameters())["classifier.0.weight"].data, fc6)
    x = Tensor(np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32))
    with no_grad():
        before = dense(x).data.copy()
        model.classifier[6].bias.data[2] += 1.0  # in place, in the model
        model.classifier[0].weight.data[:] *= 2.0
        after = dense(x).data
        np.testing.assert_allclose(after[:, :, 0, 0], model(x).data, rtol=1e-4, atol=1e-5)
    assert not np.allclose(after, before)
    with pytest.raises(UserError):
        dense.train()


# Pre-initialisation (sect. 3.1). A's convs at features 0, 3, 6, 8 are conv1_1, conv2_1,
# conv3_1, conv3_2; in B, C, D and E those layers sit at features 0, 5, 10, 12.
A_CONVS = ["features.0", "features.3", "features.6", "features.8"]
DEEP_CONVS = ["features.0", "features.5", "features.10", "features.12"]
FCS = ["classifier.0", "classifier.3", "classifier.6"]


@pytest.fixture(scope="module")
def net_a():
    backend.set_device("cpu")
    a = VGG("A", **TINY, seed=1)
    _randomise(a, 10)  # non-zero biases, so copied biases are told from fresh zeros
    return a


@pytest.mark.parametrize("config", ["B", "C", "D", "E"])
@pytest.mark.parametrize("as_state_dict", [False, True])
def test_preinitialise_copies_four_convs_and_three_fcs(net_a, config, as_state_dict):
    deep = VGG(config, **TINY, seed=2)
    fresh = deep.state_dict()
    copied = deep.preinitialise_from(net_a.state_dict() if as_state_dict else net_a)
    pairs = list(zip(A_CONVS, DEEP_CONVS)) + [(f, f) for f in FCS]
    want = [f"{t}.{k}" for _, t in pairs for k in ("weight", "bias")]
    assert copied == want
    a = net_a.state_dict()
    got = deep.state_dict()
    for s, t in pairs:
        for k in ("weight", "bias"):
            np.testing.assert_array_equal(got[f"{t}.{k}"], a[f"{s}.{k}"])
    for name, value in got.items():
        if name not in want:  # untouched: still the deep net's own random init
            np.testing.assert_array_equal(value, fresh[name])
            if name.endswith("weight"):
                assert not any(value.shape == a[n].shape and np.array_equal(value, a[n])
                               for n in a)


def test_preinitialise_refuses_another_width(net_a):
    deep = VGG("D", **dict(TINY, width=1 / 8))
    with pytest.raises(UserError) as e:
        deep.preinitialise_from(net_a)
    msg = str(e.value)
    assert "\n" not in msg and "features.0.weight" in msg and "(4, 3, 3, 3)" in msg


@pytest.mark.parametrize("config", ["A-LRN", "C"])
def test_forward_backward_gives_every_parameter_a_gradient(config):
    model = VGG(config, **TINY, init="kaiming")
    model.train()
    x = Tensor(np.random.default_rng(4).standard_normal((2, 3, 32, 32)).astype(np.float32))
    loss = ops.softmax_cross_entropy(model(x), np.array([0, 3], dtype=np.int32))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
    assert any(np.any(p.grad != 0) for p in model.parameters())
    assert model.classifier[2].calls == 1 and model.classifier[5].calls == 1
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_same_seed_same_model():
    a, b = VGG("A", **TINY, seed=3), VGG("A", **TINY, seed=3)
    c = VGG("A", **TINY, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    assert not np.array_equal(sa["features.0.weight"], sc["features.0.weight"])
    assert a.classifier[2].seed != a.classifier[5].seed


def test_module_classes_are_nn_layers():
    model = VGG("A-LRN", **TINY)
    kinds = [type(m).__name__ for m in model.features][:4]
    assert kinds == ["Conv2d", "ReLU", "LRN", "MaxPool2d"]
    assert [type(m) for m in model.classifier] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear,
                                                  nn.ReLU, nn.Dropout, nn.Linear]
