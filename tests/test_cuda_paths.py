"""The `cuda` code path outside kernels/, run without a GPU (issue 12).

Every test here runs under the strict_device fixture (tests/strict_arrays.py): the sim
device, whose arrays refuse what CuPy's refuse -- np.asarray and friends, mixing with
host arrays -- so a NumPy-only line fails here instead of on the GPU. With
MINIVGG_DEVICE=cuda the same tests run on the GPU with CuPy itself (the tooling's own
tests then skip). Each path is checked against the cpu device where it computes.

Shapes are tiny: the simulator runs one Python thread per CUDA thread.
"""
import numpy as np
import pytest

from helpers import KERNEL_DEVICE
from minivgg import backend, checkpoint, evaluate, nn, ops, predict
from minivgg.errors import UserError
from minivgg.model import VGG
from minivgg.optim import SGD, PlateauSchedule
from minivgg.tape import Tensor
from strict_arrays import DeviceArray, cpu_device, on_device, strict_device  # noqa: F401

STRICT_ONLY = pytest.mark.skipif(KERNEL_DEVICE == "cuda", reason="the tooling's own test")
TINY_VGG = dict(num_classes=3, width=1 / 64, fc_width=4, input_size=32)


def host(a):
    return backend.to_host(a)


def close(got, want, name=""):  # float32 kernels against the NumPy references
    np.testing.assert_allclose(host(got), want, rtol=1e-4, atol=1e-5, err_msg=name)


# -- the tooling: what a DeviceArray refuses, and that kernels still run on it -------------
@STRICT_ONLY
def test_device_arrays_refuse_implicit_conversion_and_mixing(strict_device):
    d, h = on_device([[1.0, 2.0], [3.0, 4.0]]), np.ones((2, 2), np.float32)
    for convert in (np.asarray, np.array, np.asanyarray, np.ascontiguousarray):
        with pytest.raises(TypeError, match="Implicit conversion"):
            convert(d)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray([d, d])
    for mix in (lambda: d + h, lambda: h * d, lambda: np.take_along_axis(d, h, 1),
                lambda: np.stack([d, h]), lambda: backend.xp().maximum(d, h)):
        with pytest.raises(TypeError, match="mixed with a host NumPy array"):
            mix()


@STRICT_ONLY
def test_device_arrays_compute_like_cupy_arrays(strict_device):
    d = on_device(np.arange(6).reshape(2, 3))
    assert type(d + 1.0) is DeviceArray and type(np.exp(d)) is DeviceArray
    total = d.sum()
    assert type(total) is DeviceArray and total.shape == () and float(total) == 15.0
    view = d.reshape(3, 2)
    view[0, 0] = 7.0
    assert type(view) is DeviceArray and d[0, 0] == 7.0  # reshape is a view, as in CuPy
    assert type(d.get()) is np.ndarray and type(backend.to_device(d.get())) is DeviceArray
    assert type(backend.xp().zeros(3)) is DeviceArray


@STRICT_ONLY
def test_the_simulator_runs_kernels_on_device_arrays(strict_device):
    x = Tensor(backend.to_device(np.array([[-1.0, 2.0, -3.0, 4.0]])), requires_grad=True)
    y = ops.relu(x)
    y.backward(backend.to_device(np.ones((1, 4))))
    assert type(y.data) is DeviceArray and type(x.grad) is DeviceArray
    np.testing.assert_array_equal(y.data.get(), [[0, 2, 0, 4]])
    np.testing.assert_array_equal(x.grad.get(), [[0, 1, 0, 1]])


@STRICT_ONLY
def test_a_kernel_launched_with_a_host_array_is_refused(strict_device):
    from kernels import relu
    with pytest.raises(TypeError, match="argument 0 is a host NumPy array of shape"):
        relu.forward(np.ones(4, np.float32), backend.xp().empty(4, dtype=np.float32))


# -- backend helpers ---------------------------------------------------------------------------
def test_backend_helpers_on_device_arrays(strict_device):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    d = backend.to_device(a)
    assert backend.is_device_array(d) and backend.location(d) == "device"
    for h in (a, np.float32(1), 1.0, [1.0], {"get": 1}):
        assert not backend.is_device_array(h) and backend.location(h) == "host"
    assert backend.array_module(a) is np and backend.array_module(d) is backend.xp()
    got = backend.to_host(d)
    assert type(got) is np.ndarray and np.array_equal(got, a)
    got[0, 0] = 9.0
    assert host(d)[0, 0] == 0.0  # the transfer is a copy
    assert backend.to_host(a) is a and backend.to_host(a, copy=True) is not a
    assert backend.shape(d) == (2, 3) and backend.shape([[1, 2]]) == (1, 2)
    assert backend.scalar(d[1, 2]) == 5.0 and backend.scalar(d.sum()) == 15.0
    assert backend.scalar(backend.to_device(np.array([[4.0]]))) == 4.0
    with pytest.raises(ValueError, match=r"scalar\(\) of an array of shape \(2, 3\)"):
        backend.scalar(d)
    view = d.reshape(3, 2)
    backend.copy_into(d, a[::-1])              # from the host, in place: views see it
    assert np.array_equal(host(view), a[::-1].reshape(3, 2))
    backend.copy_into(d, backend.to_device(a))  # device to device
    assert np.array_equal(host(d), a)
    with pytest.raises(ValueError, match=r"copy_into: shape \(3, 2\) into an array of shape"):
        backend.copy_into(d, a.reshape(3, 2))


# -- the tape ----------------------------------------------------------------------------------
def _small_graph(x, cw, cb, w, b, labels):
    h = ops.flatten(ops.max_pool2d(ops.relu(ops.conv2d(x, cw, cb, 1, 1)), 2, 2))
    return ops.softmax_cross_entropy(ops.linear(h, w, b), labels)


def test_tape_backward_on_the_device_matches_cpu(strict_device):
    rng = np.random.default_rng(0)
    shapes = ((2, 2, 4, 4), (3, 2, 3, 3), (3,), (4, 12), (4,))
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    labels = np.array([1, 3], np.int32)
    with cpu_device():
        ref = [Tensor(backend.to_device(a), requires_grad=True) for a in arrays]
        _small_graph(*ref, backend.to_device(labels, np.int32)).backward()
    leaves = [Tensor(backend.to_device(a), requires_grad=True) for a in arrays]
    loss = _small_graph(*leaves, backend.to_device(labels, np.int32))
    loss.backward()  # the implicit one: ones on the loss's own device
    for t, r in zip(leaves, ref):
        assert backend.is_device_array(t.grad)
        close(t.grad, r.grad)


def test_a_host_gradient_for_a_device_tensor_names_the_op(strict_device):
    t = Tensor(backend.to_device(np.zeros((2, 2))), requires_grad=True)
    with pytest.raises(ValueError, match="^relu: gradient on the host for a tensor on the "
                                         "device$"):
        t.accumulate(np.ones((2, 2), np.float32), "relu")
    y = ops.relu(t)
    with pytest.raises(ValueError, match="^backward\\(\\): gradient on the host"):
        y.backward(np.ones((2, 2), np.float32))


# -- optimizer state ---------------------------------------------------------------------------
def test_sgd_state_round_trip_on_the_device(strict_device):
    layer = nn.Linear(3, 2, init="kaiming", rng=np.random.default_rng(0))
    opt = SGD(layer.named_parameters(), lr=0.1)
    for p in layer.parameters():
        p.grad = backend.to_device(np.ones(p.shape))
    opt.step()
    state = opt.state_dict()
    v = state["velocity.weight"]
    assert type(v) is np.ndarray and np.all(v != 0)
    opt.step()
    assert not np.array_equal(host(opt.velocity["weight"]), v)  # a copy, not the live one
    other = SGD(layer.named_parameters(), lr=1.0)
    held = other.velocity["weight"]
    other.load_state_dict(state)
    assert other.velocity["weight"] is held and backend.is_device_array(held)  # in place
    close(held, v)
    assert other.lr == pytest.approx(0.1)


# -- module state ------------------------------------------------------------------------------
def test_state_dict_and_load_on_the_device(strict_device):
    a = nn.Linear(3, 2, init="kaiming", rng=np.random.default_rng(1))
    b = nn.Linear(3, 2, init="zeros")
    state = a.state_dict()
    assert all(type(v) is np.ndarray for v in state.values())
    held = b.weight.data
    b.load_state_dict(state)  # from the host
    assert b.weight.data is held and backend.is_device_array(held)
    close(b.weight.data, state["weight"])
    c = nn.Linear(3, 2, init="zeros")
    c.load_state_dict({n: p.data for n, p in a.named_parameters()})  # from the device
    close(c.weight.data, state["weight"])
    with pytest.raises(UserError, match=r"shape \(2, 4\) in the state but \(2, 3\)"):
        b.load_state_dict(dict(state, weight=np.zeros((2, 4), np.float32)))


def test_preinitialise_from_a_model_on_the_device(strict_device):
    a = VGG("A", **TINY_VGG, init="kaiming", seed=1)
    for as_state_dict in (False, True):
        deep = VGG("B", **TINY_VGG, init="zeros")
        deep.preinitialise_from(a.state_dict() if as_state_dict else a)
        close(dict(deep.named_parameters())["features.5.weight"].data,
              a.state_dict()["features.3.weight"], "conv2_1")
        assert backend.is_device_array(deep.classifier[0].weight.data)
    with pytest.raises(UserError, match="cannot pre-initialise features.0.weight"):
        VGG("B", **dict(TINY_VGG, width=1 / 32)).preinitialise_from(a)


def test_the_dense_view_shares_the_weights_on_the_device(strict_device):
    model = VGG("A", **TINY_VGG, init="zeros")
    dense = model.dense()
    new = {n: np.random.default_rng(2).standard_normal(p.shape).astype(np.float32)
           for n, p in model.named_parameters()}
    model.load_state_dict(new)  # in place: the view must see it
    views = dict(dense.named_parameters())
    for name in ("classifier.0.weight", "classifier.6.weight"):
        assert backend.is_device_array(views[name].data)
        close(views[name].data, new[name].reshape(views[name].shape), name)


# -- checkpoints ---------------------------------------------------------------------------
def test_checkpoint_round_trip_on_the_device(strict_device, tmp_path):
    model = VGG("A", **TINY_VGG, init="kaiming", seed=3)
    opt = SGD(model.named_parameters(), lr=0.05)
    for p in model.parameters():
        p.grad = backend.to_device(np.full(p.shape, 0.5))
    opt.step()
    sched = PlateauSchedule(opt)
    loss_sum = backend.xp().ones(1, dtype=np.float32)  # a device number in the train state
    path = tmp_path / "ck.npz"
    checkpoint.save(path, model, opt, sched, {"epoch": 2, "loss_sum": loss_sum})
    ck = checkpoint.load(path)
    fresh = checkpoint.model_from_checkpoint(ck)
    fresh_opt = SGD(fresh.named_parameters(), lr=1.0)
    state = checkpoint.restore(fresh, ck, fresh_opt, PlateauSchedule(fresh_opt))
    assert state["epoch"] == 2 and np.array_equal(state["loss_sum"], [1.0])
    for (n, p), (_, q) in zip(model.named_parameters(), fresh.named_parameters()):
        assert backend.is_device_array(q.data)
        np.testing.assert_array_equal(host(q.data), host(p.data), n)
        np.testing.assert_array_equal(host(fresh_opt.velocity[n]), host(opt.velocity[n]), n)


# -- evaluation and prediction -------------------------------------------------------------
class TinyNet(nn.Module):
    """A stand-in for VGG with the interface evaluate and predict use: 2x2 crops and one
    2x2 conv as the whole network, so the simulator takes a second, not minutes."""

    input_size = 2

    def __init__(self):
        self.conv = nn.Conv2d(3, 3, 2, init="kaiming", rng=np.random.default_rng(4))

    def forward(self, x):
        return ops.flatten(self.conv(x))

    def dense(self):
        return self.conv


def _on_both(run):
    """run(model) on the strict device and on cpu, with the same weights."""
    model = TinyNet()
    with cpu_device():
        ref = TinyNet()
        got = run(ref)
    return run(model), got


IMAGE = np.random.default_rng(5).integers(0, 256, (3, 4, 3), dtype=np.uint8)
META = dict(mean_rgb=[120.0, 110.0, 100.0], std_rgb=[60.0, 60.0, 60.0])


def test_dense_and_multicrop_posteriors_on_the_device(strict_device):
    got, want = _on_both(lambda m: evaluate.posteriors_dense(m, IMAGE, [3], True, META))
    assert type(got) is np.ndarray and got.shape == (3,)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    got, want = _on_both(lambda m: evaluate.posteriors_multicrop(m, IMAGE, [3], meta=META,
                                                                 n=2))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_score_map_and_measures_on_the_device(strict_device):
    got, want = _on_both(lambda m: predict.score_map(m, IMAGE, 3, META))
    assert type(got) is np.ndarray and got.shape == (3, 2, 3)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    probs = backend.to_device(np.array([[0.2, 0.2, 0.6], [0.5, 0.5, 0.0]]))
    labels = backend.to_device(np.array([2, 1]), np.int32)
    assert evaluate.top_k_error(probs, labels, 1) == pytest.approx(0.5)
    np.testing.assert_array_equal(evaluate.confusion_matrix(probs, labels, 3),
                                  [[0, 0, 0], [1, 0, 0], [0, 0, 1]])
    assert predict.top_classes(probs[1], "abc", 2) == [("a", 0.5), ("b", 0.5)]
    np.testing.assert_allclose(evaluate.softmax(probs)[0], evaluate.softmax(host(probs))[0])

