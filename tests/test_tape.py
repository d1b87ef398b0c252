"""The tape: a composite graph end to end against finite differences; accumulation when a
tensor is used twice; no_grad; shape errors named by op."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minivgg import backend, ops
from minivgg.tape import Tensor, no_grad


@pytest.fixture(autouse=True)
def cpu():
    backend.set_device("cpu")


def leaf(a):
    return Tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


def small_net(x, w1, b1, w2, b2, labels):
    """conv -> relu -> pool -> linear -> softmax cross-entropy, float64 on the cpu device."""
    h = ops.relu(ops.conv2d(x, w1, b1, stride=1, pad=1))
    h = ops.flatten(ops.max_pool2d(h, 2, 2))
    return ops.softmax_cross_entropy(ops.linear(h, w2, b2), labels)


@given(st.integers(1, 3), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_composite_graph_matches_finite_differences(N, C, seed):
    rng = np.random.default_rng(seed)
    K, H, classes = 4, 6, 5
    arrays = [rng.standard_normal((N, C, H, H)), 0.5 * rng.standard_normal((K, C, 3, 3)),
              0.1 * rng.standard_normal(K), 0.3 * rng.standard_normal((classes, K * 9)),
              0.1 * rng.standard_normal(classes)]
    labels = rng.integers(0, classes, N).astype(np.int32)
    leaves = [leaf(a) for a in arrays]
    small_net(*leaves, labels).backward()

    directions = [rng.standard_normal(a.shape) for a in arrays]
    analytic = sum(float(np.sum(t.grad * v)) for t, v in zip(leaves, directions))

    def loss(step):
        moved = [Tensor(a + step * v) for a, v in zip(arrays, directions)]
        return float(small_net(*moved, labels).data[0])

    eps = 1e-6  # float64: the central difference error is ~eps^2, rounding ~1e-16/eps
    numeric = (loss(eps) - loss(-eps)) / (2 * eps)
    # ReLU and max-pool have kinks; a random draw lands within eps of one with
    # probability ~1e-5, and then the two sides disagree by O(1), not O(1e-7).
    assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(numeric))


def test_a_tensor_used_twice_accumulates_both_gradients():
    x = leaf([[1.0, 2.0]])
    w = leaf([[3.0, 4.0]])
    b = leaf([0.0])
    y = ops.linear(x, w, b)           # (1, 1): 3 + 8 = 11 > 0
    s = ops.add(ops.relu(y), y)       # y reached twice: directly and through relu
    s.backward(np.ones((1, 1)))
    # ds/dy = 1 + 1 (relu is the identity above 0), so ds/dw = 2 x and ds/dx = 2 w
    np.testing.assert_allclose(w.grad, [[2.0, 4.0]])
    np.testing.assert_allclose(x.grad, [[6.0, 8.0]])


def test_gradients_accumulate_across_backward_calls_until_zeroed():
    x = leaf([1.0, -1.0])
    ops.relu(x).backward(np.ones(2))
    ops.relu(x).backward(np.ones(2))
    np.testing.assert_allclose(x.grad, [2.0, 0.0])


def test_no_grad_records_nothing():
    x = leaf(np.ones((2, 3)))
    with no_grad():
        y = ops.relu(x)
    assert not y.requires_grad and y._parents == ()
    y2 = ops.relu(x)
    assert y2.requires_grad and y2._parents == (x,)


def test_wrong_gradient_shape_names_the_op():
    x = leaf(np.ones((2, 3)))
    y = ops.relu(x)
    with pytest.raises(ValueError, match="backward"):
        y.backward(np.ones((3, 2)))
    with pytest.raises(ValueError, match="relu: gradient of shape"):
        x.accumulate(np.ones((3, 3)), "relu")


def test_implicit_seed_only_for_one_element_losses():
    with pytest.raises(ValueError, match="one-element"):
        ops.relu(leaf(np.ones(3))).backward()


def test_zero_grad_clears():
    x = leaf(np.ones(2))
    ops.relu(x).backward(np.ones(2))
    x.zero_grad()
    assert x.grad is None


def test_backward_frees_the_graph_and_a_second_backward_says_so():
    import gc
    import weakref
    x = leaf(np.ones((2, 3)))
    h = ops.relu(x)
    loss = ops.softmax_cross_entropy(h, np.array([0, 2], dtype=np.int32))
    probe = weakref.ref(h)
    loss.backward()
    assert x.grad is not None
    gc.disable()  # freed by reference counting alone: no cycle left for the collector
    try:
        del h
        assert probe() is None
    finally:
        gc.enable()
    with pytest.raises(RuntimeError, match="already backpropagated"):
        loss.backward()


def test_a_device_gradient_for_a_host_tensor_names_the_op():
    from strict_arrays import on_device
    x = leaf(np.ones((2, 3)))
    with pytest.raises(ValueError, match="^conv2d: gradient on the device for a tensor on "
                                         "the host$"):
        x.accumulate(on_device(np.ones((2, 3))), "conv2d")
    assert x.grad is None


def test_ops_on_inputs_that_need_no_gradient_are_skipped_by_backward():
    """flatten/relu of a constant input feed a layer with parameters: their outputs need no
    gradient, so backward must not run their closures (which would read a grad of None)."""
    x = Tensor(np.ones((2, 3, 2, 2)))
    w, b = leaf(np.ones((4, 12))), leaf(np.zeros(4))
    h = ops.linear(ops.relu(ops.flatten(x)), w, b)
    ops.softmax_cross_entropy(h, np.array([0, 1], dtype=np.int32)).backward()
    assert w.grad.shape == (4, 12) and x.grad is None
