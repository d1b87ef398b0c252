"""nn.py: names, state dicts, modes, dropout seeds, initialisation statistics (sect. 3.1)."""
import numpy as np
import pytest

from minivgg import backend, nn
from minivgg.errors import UserError
from minivgg.tape import Tensor


@pytest.fixture(autouse=True)
def cpu():
    backend.set_device("cpu")


class Net(nn.Module):
    def __init__(self):
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                                  nn.MaxPool2d(2, 2), nn.Flatten())
        self.head = nn.Linear(4 * 4 * 4, 5)
        self.drop = nn.Dropout(0.5, seed=7)

    def forward(self, x):
        return self.head(self.drop(self.body(x)))


def test_names_follow_attributes_and_sequential_indices():
    net = Net()
    assert [(n, tuple(p.shape)) for n, p in net.named_parameters()] == [
        ("body.0.weight", (4, 3, 3, 3)), ("body.0.bias", (4,)),
        ("head.weight", (5, 64)), ("head.bias", (5,))]
    assert net.num_parameters() == 4 * 27 + 4 + 5 * 64 + 5
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in net.parameters())


def test_state_dict_is_a_host_copy_and_load_writes_in_place():
    net = Net()
    sd = net.state_dict()
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    sd["head.weight"][:] = 3.0
    assert not np.all(net.head.weight.data == 3.0)  # a copy, not the parameter itself
    before = net.head.weight.data
    net.load_state_dict(sd)
    assert net.head.weight.data is before and np.all(before == 3.0)


@pytest.mark.parametrize("change, words", [
    (lambda d: d.pop("head.bias"), ["missing", "head.bias", "(5)"]),
    (lambda d: d.__setitem__("extra.weight", np.zeros((2, 2))), ["unexpected", "extra.weight",
                                                                 "(2, 2)"]),
    (lambda d: d.__setitem__("head.weight", np.zeros((6, 64))), ["head.weight", "(6, 64)",
                                                                 "(5, 64)"]),
])
def test_load_state_dict_errors_are_one_line_and_name_the_tensor(change, words):
    net = Net()
    sd = net.state_dict()
    change(sd)
    with pytest.raises(UserError) as e:
        net.load_state_dict(sd)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_train_eval_and_dropout_seeds():
    net = Net()
    x = Tensor(np.ones((2, 3, 8, 8), dtype=np.float32))
    net.eval()
    assert not net.drop.training and not net.body[0].training
    h = net.body(x)
    assert net.drop(h) is h and net.drop.calls == 0  # identity in eval mode
    net.train()
    a, b = net.drop(h).data, net.drop(h).data
    assert net.drop.calls == 2
    assert not np.array_equal(a == 0, b == 0)  # a fresh mask every call
    other = Net()
    other.drop.seed, other.drop.calls = 7, 1  # restoring (seed, calls) resumes the sequence
    np.testing.assert_array_equal(other.drop(h).data, b)


def test_mix32_is_32_bit_and_spreads():
    seeds = {nn.mix32(s, c) for s in range(4) for c in range(256)}
    assert len(seeds) == 4 * 256 and all(0 <= v < 2**32 for v in seeds)


def test_zero_grad_clears_every_gradient():
    net = Net()
    for p in net.parameters():
        p.grad = np.ones_like(p.data)
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


# Initialisation. Sample sizes here are ~1e6, so a sample std is within ~0.1 % of the
# true one (relative standard error 1/sqrt(2n)); 3 % tolerances never flake.
def test_paper_init_std_001_and_zero_bias():
    layer = nn.Linear(1024, 1024, init="paper", rng=np.random.default_rng(1))
    w = layer.weight.data
    assert w.dtype == np.float32
    assert abs(w.mean()) < 1e-4
    assert w.std() == pytest.approx(0.01, rel=0.03)
    assert np.all(layer.bias.data == 0)


def test_glorot_uniform_bounds_and_variance():
    C, K, k = 256, 512, 3  # fan_in 2304, fan_out 4608
    conv = nn.Conv2d(C, K, k, init="glorot", rng=np.random.default_rng(2))
    w = conv.weight.data
    limit = np.sqrt(6.0 / (2304 + 4608))
    assert w.min() >= -limit and w.max() <= limit
    assert w.var() == pytest.approx(2.0 / (2304 + 4608), rel=0.03)
    assert np.all(conv.bias.data == 0)


def test_kaiming_normal_variance():
    conv = nn.Conv2d(256, 512, 3, init="kaiming", rng=np.random.default_rng(3))
    assert conv.weight.data.var() == pytest.approx(2.0 / 2304, rel=0.03)
    assert np.all(conv.bias.data == 0)


def test_init_is_deterministic_for_a_seed():
    a = nn.Linear(30, 20, rng=np.random.default_rng(5)).weight.data
    b = nn.Linear(30, 20, rng=np.random.default_rng(5)).weight.data
    c = nn.Linear(30, 20, rng=np.random.default_rng(6)).weight.data
    assert np.array_equal(a, b) and not np.array_equal(a, c)
