"""Soft-max cross-entropy: reference against an independent oracle and finite differences,
its numerical stability, and the kernels against the reference."""
import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from helpers import (assert_close, dev, directional_check, empty, host, kernel_settings,
                     split_on_every_axis)
from kernels import softmax_xent as sx

seeds = st.integers(0, 2**32 - 1)
# (N, M): batch 1, one class, odd sizes; M up to 150 lets rows span more than one stride
# of the 128-thread block (BLOCK).
sizes = st.tuples(st.integers(1, 3), st.integers(1, 150))


def draw(seed, N, M, scale=3.0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal((N, M))).astype(dtype)
    labels = rng.integers(0, M, N).astype(np.int32)
    return rng, logits, labels


@given(sizes, seeds)
def test_reference_matches_hand_computed_log_softmax(size, seed):
    _, z, labels = draw(seed, *size, dtype=np.float64)
    log_softmax = z - np.log(np.sum(np.exp(z), axis=1, keepdims=True))  # naive, fine at |z|~3
    loss, probs = sx.forward_ref(z, labels)
    assert loss.shape == (1,) and loss.dtype == z.dtype
    np.testing.assert_allclose(loss[0], -np.mean(log_softmax[np.arange(len(z)), labels]),
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(probs, np.exp(log_softmax), rtol=1e-12, atol=1e-15)


@given(sizes, seeds)
def test_reference_gradient(size, seed):
    rng, z, labels = draw(seed, *size, dtype=np.float64)

    def forward(z):
        return sx.forward_ref(z, labels)[0]

    def backward(z, dloss):
        return (sx.backward_ref(sx.forward_ref(z, labels)[1], labels, dloss),)
    directional_check(forward, backward, [z], wrt=[0], rng=rng)


def test_reference_is_stable_for_huge_logits():
    z = np.array([[1e4, -1e4, 0.0], [3e4, 3e4, -3e4]], dtype=np.float32)
    loss, probs = sx.forward_ref(z, np.array([1, 2], dtype=np.int32))
    assert np.all(np.isfinite(probs)) and np.isfinite(loss[0])
    np.testing.assert_allclose(loss[0], (2e4 + 6e4 + np.log(2)) / 2, rtol=1e-6)


def check_kernels(N, M, seed, **launch):
    rng, z, labels = draw(seed, N, M)
    loss, probs = sx.forward_ref(z, labels)
    got_probs, got_loss = empty((N, M)), empty((1,))
    sx.forward(dev(z), dev(labels, np.int32), got_probs, got_loss)
    assert_close(got_probs, probs, "probs")
    assert_close(got_loss, loss, "loss")
    dloss = rng.standard_normal(1).astype(np.float32)
    got = empty((N, M))
    sx.backward(dev(probs), dev(labels, np.int32), dev(dloss), got, **launch)
    assert_close(got, sx.backward_ref(probs, labels, dloss), "backward")


@kernel_settings
@given(sizes, seeds)
@example((1, 257), 0)  # a row over two block strides, and a remainder
def test_kernels_match_reference(size, seed):
    check_kernels(*size, seed)


def test_kernels_over_several_blocks():
    """Soft-max: one block per row (2), rows of 130 > BLOCK columns (two strides). The
    backward: blocks of 32 threads, 5 along a row of 130 (the last partial), 2 rows."""
    with split_on_every_axis(single_block=["xent_loss_v1"]):
        check_kernels(2, 130, 3, threads=32)


def test_loss_kernel_over_more_rows_than_threads():
    """xent_loss_v1 is one block of BLOCK threads; 131 rows make thread 0..2 take a second
    row (rows t and t + BLOCK), which a loop that stopped after one row would drop."""
    rng, z, labels = draw(4, sx.BLOCK + 3, 2)
    loss = empty((1,))
    sx.xent_loss_v1[1, sx.BLOCK](dev(z), dev(labels, np.int32), loss)
    assert_close(loss, sx.forward_ref(z, labels)[0], "loss")


def test_kernels_are_stable_for_huge_logits():
    z = np.array([[1e4, -1e4, 0.0], [3e4, 3e4, -3e4]], dtype=np.float32)
    labels = np.array([1, 2], dtype=np.int32)
    probs, loss = empty(z.shape), empty((1,))
    sx.forward(dev(z), dev(labels, np.int32), probs, loss)
    want_loss, want_probs = sx.forward_ref(z, labels)
    assert_close(probs, want_probs, "probs")
    assert_close(loss, want_loss, "loss")


def test_kernels_guard_labels_out_of_range():
    """The launcher cannot see device labels; the kernels must not read out of bounds."""
    z = np.zeros((2, 3), dtype=np.float32)
    labels = dev(np.array([0, 3], dtype=np.int32), np.int32)
    probs, loss = empty(z.shape), empty((1,))
    sx.forward(dev(z), labels, probs, loss)
    assert np.isnan(host(loss)[0])
    dz = empty(z.shape)
    sx.backward(probs, labels, dev(np.ones(1)), dz)
    np.testing.assert_allclose(host(dz)[1], np.full(3, 1 / 6), rtol=1e-6)  # no one-hot term
    with pytest.raises(ValueError, match="labels"):
        sx.forward_ref(z, np.array([0, 3], dtype=np.int32))


def test_launchers_reject_bad_arguments():
    z, labels = dev(np.zeros((2, 3))), dev(np.zeros(2), np.int32)
    with pytest.raises(ValueError, match="int32"):
        sx.forward(z, dev(np.zeros(2), np.int64), empty((2, 3)), empty((1,)))
    with pytest.raises(ValueError, match=r"labels has shape \(3,\)"):
        sx.forward(z, dev(np.zeros(3), np.int32), empty((2, 3)), empty((1,)))
    with pytest.raises(ValueError, match="probs"):
        sx.forward(z, labels, empty((3, 2)), empty((1,)))
    with pytest.raises(ValueError, match="loss"):
        sx.forward(z, labels, empty((2, 3)), empty((2,)))
    with pytest.raises(ValueError, match=r"\(0, 3\)"):
        sx.forward(dev(np.zeros((0, 3))), dev(np.zeros(0), np.int32), empty((0, 3)),
                   empty((1,)))
    with pytest.raises(ValueError, match="dloss"):
        sx.backward(z, labels, empty((2,)), empty((2, 3)))


@given(sizes, seeds)
def test_matches_torch(size, seed):
    torch = pytest.importorskip("torch")
    _, z, labels = draw(seed, *size)
    want = torch.nn.functional.cross_entropy(torch.from_numpy(z),
                                             torch.from_numpy(labels).long())
    np.testing.assert_allclose(sx.forward_ref(z, labels)[0][0], want.item(), rtol=1e-5)


def test_launch_geometry_and_the_grid_limit_on_the_batch():
    """The loss is one block by design (its sum has one fixed order); the backward's rows
    are grid y, at most 65535 of them. Recorded without running (dry launches)."""
    from kernels.common import recording
    for N, ok in [(65535, True), (65536, False)]:
        z, labels = dev(np.zeros((N, 2))), dev(np.zeros(N), np.int32)
        with recording(execute=False) as launches:
            sx.forward(z, labels, empty((N, 2)), empty((1,)))
            if not ok:
                with pytest.raises(ValueError, match="65535"):
                    sx.backward(z, labels, dev(np.ones(1)), empty((N, 2)))
                continue
            sx.backward(z, labels, dev(np.ones(1)), empty((N, 2)))
        grids = {launch.kernel: launch.grid for launch in launches}
        assert grids["xent_loss_v1"] == (1, 1, 1) and grids["softmax_forward_v1"][0] == N
        assert grids["xent_backward_v1"][:2] == (1, N)
