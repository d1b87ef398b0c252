"""Every op of minivgg/ops.py on the kernel device (sim, or cuda with MINIVGG_DEVICE=cuda)
against the same op on cpu (the NumPy references), forward and backward: the ops' kernel
branches are where arguments are passed to the launchers, and only these tests run them
op by op. Then a whole small VGG with LRN (A-LRN), and its dense view, the same way.

Each op test is one line: run(op, inputs, **arguments) does the op on both devices with
the same inputs and a random output gradient, and compares outputs and input gradients.
"""
import numpy as np
import pytest

from helpers import KERNEL_DEVICE, ON_GPU
from minivgg import backend, ops
from minivgg.model import VGG
from minivgg.tape import Tensor

RTOL, ATOL = 2e-4, 2e-5


@pytest.fixture(autouse=True)
def back_to_cpu():
    yield
    backend.set_device("cpu")


def on(device, op, arrays, dy_seed, **kw):
    """op(*tensors, **kw) on `device`; -> (output, gradient of every input) on the host."""
    backend.set_device(device)
    inputs = [Tensor(backend.to_device(a), requires_grad=True) for a in arrays]
    out = op(*inputs, **kw)
    dy = np.random.default_rng(dy_seed).standard_normal(out.shape).astype(np.float32)
    out.backward(backend.to_device(dy))
    return backend.to_host(out.data), [backend.to_host(t.grad) for t in inputs]


def run(op, shapes, **kw):
    """Compare `op` on the kernel device with cpu for random inputs of these shapes."""
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    want, want_grads = on("cpu", op, arrays, 1, **kw)
    got, got_grads = on(KERNEL_DEVICE, op, arrays, 1, **kw)
    np.testing.assert_allclose(got, want, RTOL, ATOL, err_msg=f"{op.__name__} forward")
    for i, (g, w) in enumerate(zip(got_grads, want_grads)):
        assert np.abs(w).max() > 0, f"input {i}: a zero gradient would make this vacuous"
        np.testing.assert_allclose(g, w, RTOL, ATOL, err_msg=f"{op.__name__} grad {i}")


@pytest.mark.parametrize("stride, pad", [(1, 1), (2, 0)])
def test_conv2d(stride, pad):
    run(ops.conv2d, [(2, 3, 5, 6), (4, 3, 3, 3), (4,)], stride=stride, pad=pad)


@pytest.mark.parametrize("groups, shapes", [
    (2, [(2, 4, 5, 4), (6, 2, 3, 3), (6,)]),   # two towers
    (3, [(1, 3, 4, 5), (3, 1, 3, 3), (3,)]),   # depthwise
])
def test_conv2d_groups(groups, shapes):
    with ops.kernel_versions(conv=3):  # the default version runs above; groups in v3 here
        run(ops.conv2d, shapes, pad=1, groups=groups)


def test_relu():
    run(ops.relu, [(2, 3, 4)])


@pytest.mark.parametrize("op", [ops.tanh, ops.sigmoid])
def test_squashing_functions(op):
    run(op, [(2, 3, 4)])


@pytest.mark.parametrize("window, stride", [(2, 2), (3, 2)])
def test_subsample2d(window, stride):
    run(ops.subsample2d, [(2, 3, 5, 6), (3,), (3,)], window=window, stride=stride)


def test_masked_weight():
    """Only w is an input; the table is a constant of the op (a device array)."""
    table = np.array([[1, 0, 1], [0, 1, 1]], dtype=np.float32)
    run(lambda w: ops.masked_weight(w, backend.to_device(table)), [(2, 3, 2, 2)])


def test_channel_mean():
    run(ops.channel_mean, [(2, 3, 4, 5)])


@pytest.mark.parametrize("window, stride, ceil_mode", [(2, 2, False), (3, 2, True)])
def test_max_pool2d(window, stride, ceil_mode):
    run(ops.max_pool2d, [(2, 3, 7, 6)], window=window, stride=stride, ceil_mode=ceil_mode)


def test_lrn():
    """Constants far from their defaults and from each other, so a swapped pair shows."""
    run(ops.lrn, [(2, 6, 2, 3)], size=3, k=1.5, alpha=0.3, beta=0.6)


def test_linear():
    run(ops.linear, [(3, 5), (4, 5), (4,)])


def test_dropout():
    run(ops.dropout, [(4, 8)], p=0.3, seed=7)  # the same mask on both devices


def test_kernel_versions_switch_and_restore():
    with ops.kernel_versions(conv=3, linear=1):
        assert ops.VERSIONS == {"conv": 3, "linear": 1}
        run(ops.conv2d, [(1, 2, 3, 3), (3, 2, 3, 3), (3,)], pad=1)
    assert ops.VERSIONS == {"conv": 2, "linear": 2}
    with pytest.raises(ValueError, match="no op 'pool'"):
        with ops.kernel_versions(pool=2):
            pass


def test_add():
    run(ops.add, [(2, 3), (2, 3)])


def test_flatten():
    run(ops.flatten, [(2, 2, 3, 2)])


def test_global_avg_pool():
    run(ops.global_avg_pool, [(2, 3, 3, 4)])


def test_softmax_cross_entropy():
    labels = np.array([2, 0, 4], dtype=np.int32)
    run(lambda z: ops.softmax_cross_entropy(z, labels), [(3, 5)])


@pytest.mark.parametrize("device", ["cpu", KERNEL_DEVICE])
@pytest.mark.parametrize("labels, says", [
    ([0, 5], r"labels must be in \[0, 5\), got \[0, 5\]"),
    ([-1, 0], r"labels must be in \[0, 5\), got \[-1, 0\]"),
    ([3, 0, 9], r"labels have shape \(3,\) for logits of shape \(2, 5\)"),
])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_softmax_cross_entropy_checks_labels_on_every_device(device, labels, says, dtype):
    backend.set_device(device)
    logits = Tensor(backend.to_device(np.zeros((2, 5))))
    with pytest.raises(ValueError, match=says):
        ops.softmax_cross_entropy(logits, np.array(labels, dtype=dtype))
    with pytest.raises(ValueError, match=says):  # labels already on the device
        ops.softmax_cross_entropy(logits, backend.to_device(np.array(labels), np.int32))
    with pytest.raises(ValueError, match=says):  # every other one of 4: not contiguous
        ops.softmax_cross_entropy(logits, np.repeat(np.array(labels, dtype=dtype), 2)[::2])


# ----------------------------------------------------------------------------------------
# A whole VGG: config A-LRN (LRN after the first conv), at the smallest size the five
# pools allow (32 x 32, one channel in the first block), one training step's forward and
# backward, then the dense view (sect. 3.2) on the same weights.

# Under the simulator the convs run as v1 (one thread per output): v2's 16 x 16 tiles
# would launch 16 threads per output where a layer has one channel, and the step would
# take minutes; test_conv2d above runs the default version through the op, and
# tests/test_conv.py every version.
VERSIONS = {} if ON_GPU else dict(conv=1)


def vgg_step(device, x, labels):
    with ops.kernel_versions(**VERSIONS):
        return _vgg_step(device, x, labels)


def _vgg_step(device, x, labels):
    backend.set_device(device)
    model = VGG("A-LRN", num_classes=3, width=1 / 64, fc_width=8, input_size=32,
                dropout=0.5, init="kaiming", seed=3)
    loss = ops.softmax_cross_entropy(model(Tensor(backend.to_device(x))), labels)
    loss.backward()
    grads = {n: backend.to_host(p.grad) for n, p in model.named_parameters()}
    model.eval()
    scores = model.dense()(Tensor(backend.to_device(x)))
    return backend.to_host(loss.data), grads, backend.to_host(scores.data)


@pytest.fixture(scope="module")
def vgg_both():
    x = np.random.default_rng(4).standard_normal((1, 3, 32, 32)).astype(np.float32)
    labels = np.array([2], dtype=np.int32)
    both = vgg_step("cpu", x, labels), vgg_step(KERNEL_DEVICE, x, labels)
    backend.set_device("cpu")
    return both


def test_vgg_with_lrn_step(vgg_both):
    (loss, grads, _), (got_loss, got_grads, _) = vgg_both
    np.testing.assert_allclose(got_loss, loss, RTOL, ATOL)
    assert "features.1.weight" not in grads and len(grads) == 22  # 8 convs, 3 FCs
    for name, g in grads.items():
        assert np.abs(g).max() > 0, f"{name}: a zero gradient would make this vacuous"
        np.testing.assert_allclose(got_grads[name], g, RTOL, ATOL, err_msg=name)


def test_vgg_dense_view(vgg_both):
    (_, _, scores), (_, _, got_scores) = vgg_both
    assert scores.shape == (1, 3, 1, 1)
    np.testing.assert_allclose(got_scores, scores, RTOL, ATOL)
