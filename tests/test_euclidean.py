"""The Euclidean loss of box regression (appendix A.1): the reference against a hand-written
loss, finite differences and PyTorch's mse_loss; the kernels against the reference, on
more than one block along every grid axis; the guards of the group index."""
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from helpers import (assert_close, dev, directional_check, empty, host, kernel_settings,
                     split_on_every_axis)
from kernels import euclidean as eu

seeds = st.integers(0, 2**32 - 1)
# (N, G): batch 1, SCR (one group), PCR with a few. Kept small for the simulator; the
# loss block's second stride (4N > 128) has its own example and test below.
sizes = st.tuples(st.integers(1, 9), st.integers(1, 4))


def draw(seed, N, G, dtype=np.float32):
    rng = np.random.default_rng(seed)
    pred = rng.standard_normal((N, 4 * G)).astype(dtype)
    target = rng.standard_normal((N, 4)).astype(dtype)
    groups = rng.integers(0, G, N).astype(np.int32)
    return rng, pred, target, groups


def test_reference_by_hand():
    """PCR, two images, two classes: image 0 is class 1 (columns 4-7), image 1 class 0."""
    pred = np.array([[9, 9, 9, 9, 1, 2, 3, 4], [0, 0, 1, 1, 7, 7, 7, 7]], np.float64)
    target = np.array([[1, 2, 3, 5], [0, 1, 1, 1]], np.float64)
    groups = np.array([1, 0], np.int32)
    loss, boxes = eu.forward_ref(pred, target, groups)
    np.testing.assert_array_equal(boxes, [[1, 2, 3, 4], [0, 0, 1, 1]])
    assert loss[0] == (1 + 1) / (2 * 2)  # one unit off in each image, / 2N
    d = eu.backward_ref(pred, target, groups, np.array([1.0]))
    np.testing.assert_array_equal(d, [[0, 0, 0, 0, 0, 0, 0, -0.5], [0, -0.5, 0, 0, 0, 0, 0, 0]])


@given(sizes, seeds)
def test_reference_gradient(size, seed):
    rng, pred, target, groups = draw(seed, *size, dtype=np.float64)
    directional_check(lambda p, t: eu.forward_ref(p, t, groups)[0],
                      lambda p, t, dl: (eu.backward_ref(p, t, groups, dl),
                                        -eu.backward_ref(p, t, groups, dl).reshape(
                                            len(p), -1, 4)[np.arange(len(p)), groups]),
                      [pred, target], wrt=[0, 1], rng=rng)


@settings(max_examples=10)  # the oracle agrees or it does not: a few shapes are enough
@given(sizes, seeds)
def test_matches_torch(size, seed):
    torch = pytest.importorskip("torch")
    _, pred, target, groups = draw(seed, *size)
    p = torch.from_numpy(pred.astype(np.float64)).requires_grad_()
    gathered = p.view(len(pred), -1, 4)[torch.arange(len(pred)), torch.from_numpy(groups).long()]
    # mse_loss averages over the 4N numbers; the Euclidean loss is the sum over 2N.
    want = torch.nn.functional.mse_loss(gathered, torch.from_numpy(target.astype(np.float64)))
    want = want * 2
    want.backward()
    loss, _ = eu.forward_ref(pred.astype(np.float64), target.astype(np.float64), groups)
    np.testing.assert_allclose(loss[0], want.item(), rtol=1e-12)
    np.testing.assert_allclose(eu.backward_ref(pred.astype(np.float64), target, groups,
                                               np.ones(1)), p.grad.numpy(), rtol=1e-6,
                               atol=1e-12)


def check_kernels(N, G, seed, **launch):
    rng, pred, target, groups = draw(seed, N, G)
    loss, boxes = eu.forward_ref(pred, target, groups)
    got_boxes, got_loss = empty((N, 4)), empty((1,))
    eu.forward(dev(pred), dev(target), dev(groups, np.int32), got_boxes, got_loss, **launch)
    assert_close(got_boxes, boxes, "boxes")
    assert_close(got_loss, loss, "loss")
    dloss = rng.standard_normal(1).astype(np.float32)
    got = empty((N, 4 * G))
    eu.backward(dev(pred), dev(target), dev(groups, np.int32), dev(dloss), got, **launch)
    assert_close(got, eu.backward_ref(pred, target, groups, dloss), "backward")


@kernel_settings
@given(sizes, seeds)
@example((33, 1), 0)  # SCR, 132 elements: the loss block's second stride
def test_kernels_match_reference(size, seed):
    check_kernels(*size, seed, threads=32)  # 32-thread blocks: fewer simulated threads


def test_kernels_over_several_blocks():
    """Gather: 4 x 5 = 20 elements in blocks of 8 (3 blocks, the last partial). Backward:
    3 classes = 12 columns in blocks of 8 (2 along x, the second partial), 5 rows."""
    with split_on_every_axis(single_block=["euclidean_loss_v1"]):
        check_kernels(5, 3, 1, threads=8)


def test_loss_kernel_over_more_elements_than_threads():
    """The loss is one block of BLOCK threads; 4 x 40 = 160 elements make threads 0..31
    take a second element, which a loop that stopped after one would drop."""
    _, pred, target, groups = draw(2, 40, 1)
    loss = empty((1,))
    eu.euclidean_loss_v1[1, eu.BLOCK](dev(pred), dev(target), loss)
    assert_close(loss, eu.forward_ref(pred, target, groups)[0], "loss")


def test_kernels_guard_groups_out_of_range():
    """The launchers cannot see device groups: a bad one gives NaN, no gradient, no bad read."""
    pred, target = np.ones((2, 8), np.float32), np.zeros((2, 4), np.float32)
    groups = dev(np.array([1, 2], np.int32), np.int32)  # G = 2: group 2 is out of range
    boxes, loss = empty((2, 4)), empty((1,))
    eu.forward(dev(pred), dev(target), groups, boxes, loss)
    assert np.isnan(host(loss)[0]) and np.isnan(host(boxes)[1]).all()
    np.testing.assert_array_equal(host(boxes)[0], 1)
    d = empty((2, 8))
    eu.backward(dev(pred), dev(target), groups, dev(np.ones(1)), d)
    np.testing.assert_array_equal(host(d)[1], 0)  # nothing scattered for the bad row
    np.testing.assert_array_equal(host(d)[0], [0, 0, 0, 0, .5, .5, .5, .5])
    with pytest.raises(ValueError, match="groups"):
        eu.forward_ref(pred, target, np.array([1, 2], np.int32))


def test_launchers_reject_bad_arguments():
    pred, target, groups = dev(np.zeros((2, 8))), dev(np.zeros((2, 4))), dev(np.zeros(2), np.int32)
    with pytest.raises(ValueError, match="4 x groups"):
        eu.forward(dev(np.zeros((2, 6))), target, groups, empty((2, 4)), empty((1,)))
    with pytest.raises(ValueError, match="int32"):
        eu.forward(pred, target, dev(np.zeros(2), np.int64), empty((2, 4)), empty((1,)))
    with pytest.raises(ValueError, match=r"target has shape \(3, 4\)"):
        eu.forward(pred, dev(np.zeros((3, 4))), groups, empty((2, 4)), empty((1,)))
    with pytest.raises(ValueError, match="boxes"):
        eu.forward(pred, target, groups, empty((2, 8)), empty((1,)))
    with pytest.raises(ValueError, match="loss"):
        eu.forward(pred, target, groups, empty((2, 4)), empty((2,)))
    with pytest.raises(ValueError, match="dpred"):
        eu.backward(pred, target, groups, empty((1,)), empty((2, 4)))
    with pytest.raises(ValueError, match="dloss"):
        eu.backward(pred, target, groups, empty((2,)), empty((2, 8)))


@pytest.mark.parametrize("shape", [(2, 0), (0, 4)])
def test_launchers_refuse_an_empty_batch_or_no_box_columns(shape):
    N = shape[0]
    with pytest.raises(ValueError, match=r"needs N >= 1 and 4 x groups columns, got shape"):
        eu.forward(dev(np.zeros(shape)), dev(np.zeros((N, 4))), dev(np.zeros(N), np.int32),
                   empty((N, 4)), empty((1,)))


def test_backward_takes_the_grid_y_limit_and_refuses_a_row_more():
    """One row of blocks per image on grid axis y, whose CUDA limit is 65535: a batch of
    65535 launches (recorded, not run: stand-ins with only shapes), 65536 is refused."""
    from test_common import Shape
    from kernels.common import recording

    def ints(shape):
        a = Shape(shape)
        a.dtype = np.dtype(np.int32)
        return a
    for N in (65535, 65536):
        args = (Shape((N, 8)), Shape((N, 4)), ints((N,)), Shape((1,)), Shape((N, 8)))
        if N == 65535:
            with recording(execute=False) as launches:
                eu.backward(*args)
            assert launches[-1].grid[1] == 65535
        else:
            with pytest.raises(ValueError, match="batch 65536 exceeds the grid's y limit 65535"):
                eu.backward(*args)


# -- the op (minivgg/ops.py) on the kernel device against cpu --------------------------------
@pytest.mark.parametrize("G", [1, 3])  # SCR, PCR
def test_op_on_the_kernel_device_equals_cpu(G):
    from helpers import KERNEL_DEVICE
    from minivgg import backend, ops
    from minivgg.tape import Tensor
    _, pred, target, groups = draw(5, 6, G)
    got = {}
    for device in ("cpu", KERNEL_DEVICE):
        backend.set_device(device)
        p = Tensor(backend.to_device(pred), requires_grad=True)
        loss = ops.euclidean_loss(p, target, groups)
        loss.backward(backend.to_device(np.array([1.5], np.float32)))
        got[device] = [backend.to_host(a) for a in (loss.data, loss.boxes, p.grad)]
    backend.set_device("cpu")
    want, boxes = eu.forward_ref(pred, target, groups)
    np.testing.assert_allclose(got["cpu"][0], want, rtol=1e-6)
    np.testing.assert_allclose(got["cpu"][1], boxes)
    assert np.abs(got["cpu"][2]).max() > 0
    for a, b in zip(got[KERNEL_DEVICE], got["cpu"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_op_checks_groups_and_target_on_the_host():
    from minivgg import backend, ops
    from minivgg.tape import Tensor
    backend.set_device("cpu")
    p = Tensor(np.zeros((2, 8), np.float32))
    with pytest.raises(ValueError, match=r"groups must be in \[0, 2\), got \[0, 2\]"):
        ops.euclidean_loss(p, np.zeros((2, 4), np.float32), np.array([0, 2]))
    with pytest.raises(ValueError, match="groups have shape"):
        ops.euclidean_loss(p, np.zeros((2, 4), np.float32), np.array([0]))
    with pytest.raises(ValueError, match="target has shape"):
        ops.euclidean_loss(p, np.zeros((2, 5), np.float32), np.array([0, 1]))
