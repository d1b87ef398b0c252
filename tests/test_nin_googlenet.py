"""NiN and GoogLeNet (the compendium's sects. 0.12 and 0.14), the nets that are not chains:
parameter counts against the published architectures, with the arithmetic written out here
(not computed by the code under test); output sizes and receptive fields through branches;
summaries whose rows are the modules; logits, the auxiliary losses and every gradient
against PyTorch twins built here from torch.nn layers; dense evaluation (NiN: the network
itself); checkpoints, presets and the command lines."""
import numpy as np
import pytest

from minivgg import backend
from minivgg.model import VGG, count_parameters, format_summary, plan
from minivgg.tape import Tensor, no_grad
from minivgg.tasks import Classification


@pytest.fixture(autouse=True)
def cpu():
    backend.set_device("cpu")
    yield
    backend.set_device("cpu")


# -- parameter counts ---------------------------------------------------------------------
# NiN, the ImageNet model (Caffe's NIN-ImageNet): (weights per filter + 1) x filters.
NIN = {
    "conv1": (11 * 11 * 3 + 1) * 96,      # 34,944
    "cccp1": (96 + 1) * 96,               # 9,312
    "cccp2": (96 + 1) * 96,
    "conv2": (5 * 5 * 96 + 1) * 256,      # 614,656
    "cccp3": (256 + 1) * 256,             # 65,792
    "cccp4": (256 + 1) * 256,
    "conv3": (3 * 3 * 256 + 1) * 384,     # 885,120
    "cccp5": (384 + 1) * 384,             # 147,840
    "cccp6": (384 + 1) * 384,
    "conv4": (3 * 3 * 384 + 1) * 1024,    # 3,539,968
    "cccp7": (1024 + 1) * 1024,           # 1,049,600
    "cccp8": (1024 + 1) * 1000,           # 1,025,000: one map per class
}


def inception(C, n1, r3, n3, r5, n5, pp):
    """Fig. 2(b) with Table 1's widths: 1x1; 1x1 then 3x3; 1x1 then 5x5; pool then 1x1."""
    return ((C + 1) * n1 + (C + 1) * r3 + (9 * r3 + 1) * n3 + (C + 1) * r5
            + (25 * r5 + 1) * n5 + (C + 1) * pp)


GOOGLENET = {  # Table 1 of Szegedy et al.; C is the previous layer's output depth
    "conv1": (7 * 7 * 3 + 1) * 64,                        # 9,472
    "conv2": (64 + 1) * 64,                               # 4,160: 3x3 reduce
    "conv3": (3 * 3 * 64 + 1) * 192,                      # 110,784
    "3a": inception(192, 64, 96, 128, 16, 32, 32),        # 163,696
    "3b": inception(256, 128, 128, 192, 32, 96, 64),      # 388,736
    "4a": inception(480, 192, 96, 208, 16, 48, 64),       # 376,176
    "4b": inception(512, 160, 112, 224, 24, 64, 64),      # 449,160
    "4c": inception(512, 128, 128, 256, 24, 64, 64),      # 510,104
    "4d": inception(512, 112, 144, 288, 32, 64, 64),      # 605,376
    "4e": inception(528, 256, 160, 320, 32, 128, 128),    # 868,352
    "5a": inception(832, 256, 160, 320, 32, 128, 128),    # 1,043,456
    "5b": inception(832, 384, 192, 384, 48, 128, 128),    # 1,444,080
    "fc": (1024 + 1) * 1000,                              # 1,025,000
}
AUX1 = (512 + 1) * 128 + (128 * 4 * 4 + 1) * 1024 + (1024 + 1) * 1000  # 3,188,840 on 4a
AUX2 = (528 + 1) * 128 + (128 * 4 * 4 + 1) * 1024 + (1024 + 1) * 1000  # 3,190,888 on 4d


def by_prefix(rows, prefixes):
    """Parameters of the rows of each module ('inception3a', its branches, ...)."""
    return {k: sum(r.params for r in rows if (r.index + ".").startswith(p + "."))
            for k, p in prefixes.items()}


def test_nin_parameter_count_is_its_architectures():
    assert sum(NIN.values()) == 7_595_176
    assert {r.name: r.params for r in plan("NiN") if r.params} == NIN
    assert count_parameters("NiN") == 7_595_176


def test_googlenet_parameter_counts_without_and_with_the_auxiliary_heads():
    assert sum(GOOGLENET.values()) == 6_998_552
    assert (AUX1, AUX2) == (3_188_840, 3_190_888)
    rows = plan("GoogLeNet")
    prefixes = {k: "inception" + k if k[0].isdigit() else k for k in GOOGLENET}
    assert by_prefix(rows, prefixes) == GOOGLENET
    assert by_prefix(rows, {"aux1": "aux1", "aux2": "aux2"}) == {"aux1": AUX1, "aux2": AUX2}
    assert count_parameters("GoogLeNet") == 6_998_552 + AUX1 + AUX2 == 13_378_280


def test_allocated_nets_have_the_exact_counts():
    net = VGG("GoogLeNet", init="zeros")  # 53 MB of zeros: no random draws
    assert net.num_parameters() == 13_378_280
    assert net.inception3a.branch3[1].conv.weight.shape == (32, 16, 5, 5)  # the paper's 5x5
    no_aux = VGG("GoogLeNet", init="zeros", aux_classifiers=False)
    assert no_aux.num_parameters() == 6_998_552
    assert VGG("NiN", init="zeros").num_parameters() == 7_595_176


# -- shapes, receptive fields, names ------------------------------------------------------
def test_googlenet_output_sizes_are_table_1s():
    rows = {r.index: r.out_shape for r in plan("GoogLeNet")}
    want = {"conv1.conv": (64, 112, 112), "maxpool1": (64, 56, 56), "conv3.conv": (192, 56, 56),
            "maxpool2": (192, 28, 28), "inception3a": (256, 28, 28),
            "inception3b": (480, 28, 28), "maxpool3": (480, 14, 14),
            "inception4a": (512, 14, 14), "inception4b": (512, 14, 14),
            "inception4c": (512, 14, 14), "inception4d": (528, 14, 14),
            "inception4e": (832, 14, 14), "maxpool4": (832, 7, 7),
            "inception5a": (832, 7, 7), "inception5b": (1024, 7, 7), "avgpool": (1024, 1, 1),
            "fc": (1000, 1, 1), "aux1.avgpool": (512, 4, 4), "aux2.avgpool": (528, 4, 4),
            "aux1.fc1": (1024, 1, 1)}
    assert {k: rows[k] for k in want} == want
    assert plan("GoogLeNet")[-1].index == "fc"  # the heads come before the classifier


def test_nin_output_sizes_round_up_as_caffe():
    rows = {r.name: r.out_shape for r in plan("NiN")}
    want = {"conv1": (96, 54, 54), "pool1": (96, 27, 27), "conv2": (256, 27, 27),
            "pool2": (256, 13, 13), "conv3": (384, 13, 13), "pool3": (384, 6, 6),
            "cccp8": (1000, 6, 6), "pool4": (1000, 1, 1)}
    assert {k: rows[k] for k in want} == want  # 54 -> 26 had the pool rounded down


def test_receptive_field_of_a_concatenation_is_its_widest_branch():
    """At 3a's input r = 59, j = 8 (conv1 7, pool1 11, conv3 27, pool2 43 ... by hand:
    7x7/2 -> 7, 2; 3x3/2 -> 11, 4; 1x1; 3x3 -> 19, 4; 3x3/2 -> 27, 8). The 1x1 branch
    keeps 27, the 3x3 43, the 5x5 59, the pool-proj branch 43: the module sees 59."""
    rows = {r.index: r for r in plan("GoogLeNet")}
    assert (rows["maxpool2"].rf, rows["maxpool2"].jump) == (27, 8)
    assert [rows[f"inception3a.{b}"].rf for b in
            ("branch1.conv", "branch2.1.conv", "branch3.1.conv", "branch4.1.conv")] == \
        [27, 43, 59, 43]
    assert (rows["inception3a"].rf, rows["inception3a"].jump) == (59, 8)
    assert rows["inception3b"].rf == 59 + 4 * 8  # the 5x5 again


def test_summary_rows_are_the_modules():
    """Every row's index is a module of the net; a row's parameters are its module's."""
    for model in (VGG("GoogLeNet", num_classes=7, width=1 / 16, fc_width=8, input_size=96),
                  VGG("NiN", num_classes=7, width=1 / 16, input_size=80)):
        modules = dict(model.named_modules())
        for r in model.summary():
            assert r.index in modules, r.index
            params = sum(p.data.size for p in modules[r.index].parameters())
            assert r.params == (params if r.kind in ("conv", "fc") else 0), r.index
        assert sum(r.params for r in model.summary()) == model.num_parameters()
    text = format_summary(plan("GoogLeNet"))
    assert "inception_4a/3x3_reduce" in text and "inception4a.branch2.0.conv" in text


def test_parameter_names_are_torchvisions_where_they_fit():
    names = [n for n, _ in VGG("GoogLeNet", num_classes=5, width=1 / 16, fc_width=8,
                               input_size=96).named_parameters()]
    for n in ("conv1.conv.weight", "inception3a.branch1.conv.weight",
              "inception3a.branch2.1.conv.weight", "inception5b.branch4.1.conv.bias",
              "aux1.conv.conv.weight", "aux2.fc1.weight", "aux2.fc2.bias", "fc.weight"):
        assert n in names, n
    assert names[-2:] == ["fc.weight", "fc.bias"]  # the last layer: what fine-tuning replaces
    nin = [n for n, _ in VGG("NiN", num_classes=5, width=1 / 16, input_size=80)
           .named_parameters()]
    assert nin[:2] == ["mlpconv1.conv.weight", "mlpconv1.conv.bias"]
    assert nin[-2:] == ["mlpconv4.cccp2.weight", "mlpconv4.cccp2.bias"]


# -- PyTorch twins --------------------------------------------------------------------------
def torch_googlenet(torch, s, aux_side):
    """GoogLeNet from torch.nn layers with our names (= torchvision's), at our widths,
    which load_state_dict reads from our model."""
    nn = torch.nn

    class Basic(nn.Module):
        def __init__(self, conv):
            super().__init__()
            self.conv, self.relu = conv, nn.ReLU()

        def forward(self, x):
            return self.relu(self.conv(x))

    def basic(w, stride=1):
        K, C, k, _ = w.shape
        return Basic(nn.Conv2d(C, K, k, stride, k // 2))

    class Inception(nn.Module):
        def __init__(self, ws, m):
            super().__init__()
            p = f"inception{m}.branch"
            self.branch1 = basic(ws[p + "1.conv.weight"])
            self.branch2 = nn.Sequential(basic(ws[p + "2.0.conv.weight"]),
                                         basic(ws[p + "2.1.conv.weight"]))
            self.branch3 = nn.Sequential(basic(ws[p + "3.0.conv.weight"]),
                                         basic(ws[p + "3.1.conv.weight"]))
            self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True),
                                         basic(ws[p + "4.1.conv.weight"]))

        def forward(self, x):
            return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x),
                              self.branch4(x)], 1)

    class Aux(nn.Module):
        def __init__(self, ws, a):
            super().__init__()
            self.avgpool = nn.AvgPool2d(5, 3, ceil_mode=True)
            self.conv = basic(ws[f"{a}.conv.conv.weight"])
            self.fc1 = nn.Linear(*ws[f"{a}.fc1.weight"].shape[::-1])
            self.fc2 = nn.Linear(*ws[f"{a}.fc2.weight"].shape[::-1])

        def forward(self, x):
            x = torch.flatten(self.conv(self.avgpool(x)), 1)
            return self.fc2(torch.relu(self.fc1(x)))  # dropout: p = 0 in these tests

    class Net(nn.Module):
        def __init__(self, ws):
            super().__init__()
            lrn = lambda: nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)  # Caffe's alpha: mean
            pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv1, self.maxpool1, self.norm1 = basic(ws["conv1.conv.weight"], 2), pool(), lrn()
            self.conv2, self.conv3 = basic(ws["conv2.conv.weight"]), basic(ws["conv3.conv.weight"])
            self.norm2, self.maxpool2 = lrn(), pool()
            for m in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"):
                setattr(self, f"inception{m}", Inception(ws, m))
            self.maxpool3, self.maxpool4 = pool(), pool()
            self.aux1, self.aux2 = Aux(ws, "aux1"), Aux(ws, "aux2")
            self.avgpool = nn.AvgPool2d(s, 1)
            self.fc = nn.Linear(*ws["fc.weight"].shape[::-1])

        def forward(self, x):
            x = self.maxpool1(self.conv1(x))
            x = self.maxpool2(self.norm2(self.conv3(self.conv2(self.norm1(x)))))
            x = self.maxpool3(self.inception3b(self.inception3a(x)))
            a = self.inception4a(x)
            d = self.inception4d(self.inception4c(self.inception4b(a)))
            x = self.inception5b(self.inception5a(self.maxpool4(self.inception4e(d))))
            return self.fc(torch.flatten(self.avgpool(x), 1)), self.aux1(a), self.aux2(d)
    return Net


def torch_nin(torch, ws):
    nn = torch.nn

    class MLPConv(nn.Module):
        def __init__(self, b, stride, pad):
            super().__init__()
            w = [ws[f"mlpconv{b}.{n}.weight"] for n in ("conv", "cccp1", "cccp2")]
            self.conv = nn.Conv2d(w[0].shape[1], w[0].shape[0], w[0].shape[2], stride, pad)
            self.cccp1 = nn.Conv2d(w[1].shape[1], w[1].shape[0], 1)
            self.cccp2 = nn.Conv2d(w[2].shape[1], w[2].shape[0], 1)

        def forward(self, x):
            return torch.relu(self.cccp2(torch.relu(self.cccp1(torch.relu(self.conv(x))))))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlpconv1, self.mlpconv2 = MLPConv(1, 4, 0), MLPConv(2, 1, 2)
            self.mlpconv3, self.mlpconv4 = MLPConv(3, 1, 1), MLPConv(4, 1, 1)
            self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)

        def forward(self, x):
            x = self.pool(self.mlpconv2(self.pool(self.mlpconv1(x))))
            x = self.mlpconv4(self.pool(self.mlpconv3(x)))
            return nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
    return Net()


def jitter_biases(model, seed):
    rng = np.random.default_rng(seed)
    for p in model.parameters():  # biases away from 0, so a dropped one shows
        if p.data.ndim == 1:
            p.data += (0.1 * rng.standard_normal(p.shape)).astype(np.float32)


def our_step(model, x, labels):
    """Loss, main and auxiliary logits, {name: gradient} through the task's loss."""
    model.zero_grad()
    logits = model(Tensor(x))
    loss = Classification([str(i) for i in range(model.num_classes)]).loss(logits, labels)
    loss.backward()
    aux = [z.data for _, z in getattr(logits, "aux", ())]
    return loss, logits.data, aux, {n: p.grad for n, p in model.named_parameters()}


def test_googlenet_logits_aux_losses_and_gradients_equal_a_torch_twin():
    """96 x 96: 4a's map is 6x6, so each head's 5x5/3 pool keeps a clipped second window
    (Caffe's ceil mode); the last map is 3x3 (the "7x7" pool covers it)."""
    torch = pytest.importorskip("torch")
    model = VGG("GoogLeNet", num_classes=5, width=1 / 8, fc_width=12, input_size=96,
                dropout=0.0, init="kaiming", seed=1)
    model.aux1.dropout.p = model.aux2.dropout.p = 0.0  # 0.7 in the paper: masks differ
    jitter_biases(model, 2)
    x = np.random.default_rng(3).standard_normal((2, 3, 96, 96)).astype(np.float32)
    labels = np.array([1, 4], dtype=np.int32)
    loss, logits, aux, grads = our_step(model, x, labels)
    twin = torch_googlenet(torch, 3, 2)({k: v for k, v in model.state_dict().items()})
    twin.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    t_logits, t_aux1, t_aux2 = twin(torch.tensor(x))
    ce = lambda z: torch.nn.functional.cross_entropy(z, torch.tensor(labels, dtype=torch.long))
    t_main = ce(t_logits)
    t_loss = t_main + 0.3 * ce(t_aux1) + 0.3 * ce(t_aux2)
    t_loss.backward()
    np.testing.assert_allclose(logits, t_logits.detach().numpy(), rtol=1e-4, atol=1e-5)
    for got, want in zip(aux, (t_aux1, t_aux2)):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loss.main.data[0], t_main.item(), rtol=1e-5)
    np.testing.assert_allclose(loss.data[0], t_loss.item(), rtol=1e-5)
    assert loss.data[0] > loss.main.data[0] * 1.2  # the heads' terms are in
    want = {n: p.grad.numpy() for n, p in twin.named_parameters()}
    assert grads.keys() == want.keys()
    for name, g in grads.items():
        assert np.abs(g).max() > 0, name
        np.testing.assert_allclose(g, want[name], rtol=2e-3, atol=1e-6, err_msg=name)


def test_nin_logits_and_gradients_equal_a_torch_twin():
    torch = pytest.importorskip("torch")
    model = VGG("NiN", num_classes=5, width=1 / 16, input_size=80, dropout=0.0,
                init="kaiming", seed=4)
    jitter_biases(model, 5)
    x = np.random.default_rng(6).standard_normal((2, 3, 80, 80)).astype(np.float32)
    labels = np.array([0, 3], dtype=np.int32)
    loss, logits, aux, grads = our_step(model, x, labels)
    assert aux == []
    twin = torch_nin(torch, model.state_dict())
    twin.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})
    t_logits = twin(torch.tensor(x))
    t_loss = torch.nn.functional.cross_entropy(t_logits, torch.tensor(labels, dtype=torch.long))
    t_loss.backward()
    np.testing.assert_allclose(logits, t_logits.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loss.data[0], t_loss.item(), rtol=1e-5)
    for name, p in twin.named_parameters():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=2e-3, atol=1e-6,
                                   err_msg=name)


def test_auxiliary_heads_run_in_training_only():
    model = VGG("GoogLeNet", num_classes=3, width=1 / 16, fc_width=8, input_size=96,
                init="kaiming")
    x = Tensor(np.random.default_rng(7).standard_normal((1, 3, 96, 96)).astype(np.float32))
    out = model(x)
    assert [w for w, _ in out.aux] == [0.3, 0.3]
    model.eval()
    assert not hasattr(model(x), "aux")
    assert not hasattr(VGG("GoogLeNet", num_classes=3, width=1 / 16, fc_width=8,
                           input_size=96, aux_classifiers=False)(x), "aux")


# -- dense evaluation -------------------------------------------------------------------------
def test_nin_dense_evaluation_is_the_network_itself():
    """At any size the net's scores are the spatial mean of its class maps (dense())."""
    model = VGG("NiN", num_classes=4, width=1 / 16, input_size=80, init="kaiming", seed=8)
    model.eval()
    for side in (80, 112, 147):
        x = Tensor(np.random.default_rng(side).standard_normal((2, 3, side, side))
                   .astype(np.float32))
        with no_grad():
            scores, maps = model(x).data, model.dense()(x).data
        assert maps.shape[:2] == (2, 4) and (maps.shape[2] > 2) == (side > 80)
        np.testing.assert_allclose(scores, maps.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)


def test_googlenet_dense_view_shares_the_weights():
    model = VGG("GoogLeNet", num_classes=4, width=1 / 16, fc_width=8, input_size=96,
                init="kaiming", seed=9).eval()
    x = np.random.default_rng(10).standard_normal((1, 3, 128, 128)).astype(np.float32)
    crop = np.ascontiguousarray(x[:, :, :96, :96])
    with no_grad():
        maps = model.dense()(Tensor(x)).data
        np.testing.assert_allclose(model.dense()(Tensor(crop)).data[:, :, 0, 0],
                                   model(Tensor(crop)).data, rtol=1e-5, atol=1e-6)
    assert maps.shape == (1, 4, 2, 2)  # the last map is 4x4 at 128: the 3x3 pool slides once
    with pytest.raises(Exception, match="use dense"):
        model(Tensor(x))


# -- checkpoints, presets, the command lines --------------------------------------------------
def test_checkpoints_rebuild_both_nets(tmp_path):
    from minivgg import checkpoint
    for i, (config, kw) in enumerate([("NiN", dict(input_size=80)),
                                      ("GoogLeNet", dict(input_size=96, fc_width=8,
                                                         aux_classifiers=False))]):
        model = VGG(config, num_classes=3, width=1 / 16, init="kaiming", seed=i, **kw)
        checkpoint.save(tmp_path / f"{i}.npz", model)
        again = checkpoint.model_from_checkpoint(checkpoint.load(tmp_path / f"{i}.npz"))
        assert type(again) is type(model) and again.definition() == model.definition()
        for (n, p), (_, q) in zip(model.named_parameters(), again.named_parameters()):
            np.testing.assert_array_equal(q.data, p.data, n)


def test_presets_and_bad_sizes():
    from minivgg import train
    from minivgg.configs import ConfigError
    parse = train.build_parser().parse_args
    assert train.settings_from(parse(["--config", "NiN"]), "cpu")["preset"] == "cpu-nin"
    s = train.settings_from(parse(["--config", "GoogLeNet"]), "cpu")
    assert (s["preset"], s["crop"], s["width"]) == ("cpu-googlenet", 96, 0.125)
    with pytest.raises(ConfigError, match="input_size 64 is too small for GoogLeNet"):
        plan("GoogLeNet", input_size=64)  # 4a's 4x4 map under the heads' 5x5 pool
    with pytest.raises(Exception, match="pre-initialisation"):
        VGG("NiN", width=1 / 16, input_size=80).preinitialise_from({})


# -- the last hidden layer (visualise neighbours) ----------------------------------------------
def test_googlenet_hidden_features_are_what_its_classifier_reads():
    """At input_size the classifier is one FC layer on the pooled 5b maps: logits = W h + b."""
    model = VGG("GoogLeNet", num_classes=4, width=1 / 16, fc_width=8, input_size=96,
                init="kaiming", seed=11).eval()
    jitter_biases(model, 12)
    x = np.random.default_rng(13).standard_normal((3, 3, 96, 96)).astype(np.float32)
    h = model.hidden_features(x)
    assert h.shape == (3, model.fc.weight.shape[1])
    with no_grad():
        logits = model(Tensor(x)).data
    np.testing.assert_allclose(h @ model.fc.weight.data.T + model.fc.bias.data, logits,
                               rtol=1e-4, atol=1e-5)


def test_nin_hidden_features_are_the_pooled_maps_before_the_class_maps():
    """The mean over space of what the last block's cccp2 (the class maps) reads, caught
    on its way in during an ordinary forward pass."""
    model = VGG("NiN", num_classes=4, width=1 / 16, input_size=80, init="kaiming",
                seed=14).eval()
    x = np.random.default_rng(15).standard_normal((2, 3, 96, 96)).astype(np.float32)
    seen, conv = [], model.mlpconv4.cccp2
    forward = conv.forward
    conv.forward = lambda t: (seen.append(t.data.copy()), forward(t))[1]
    with no_grad():
        model(Tensor(x))
    h = model.hidden_features(x)
    assert h.shape == (2, model.mlpconv4.cccp1.weight.shape[0])
    np.testing.assert_allclose(h, seen[0].mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
