"""The connection-table mask of LeNet-5's C3: reference against finite differences (the
mask is in the gradient), the kernel against the reference over several blocks and
passes, the launchers' checks."""
from contextlib import nullcontext

import numpy as np
import pytest
from hypothesis import given, strategies as st

from helpers import (assert_close, dev, directional_check, empty, kernel_settings,
                     split_on_every_axis)
from kernels import mask

shapes = st.tuples(*(st.integers(1, 4) for _ in range(4)))


def arrays(shape, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    w, dwm = rng.standard_normal(shape), rng.standard_normal(shape)
    table = (rng.random(shape[:2]) < 0.5).astype(dtype)
    return w.astype(dtype), table, dwm.astype(dtype)


@given(shapes, st.integers(0, 2**32 - 1))
def test_reference_gradient(shape, seed):
    w, table, _ = arrays(shape, seed)
    directional_check(lambda w: mask.forward_ref(w, table),
                      lambda w, dy: (mask.backward_ref(dy, table),),
                      [w], wrt=[0], rng=np.random.default_rng(seed))


def test_masked_filters_and_their_gradients_are_zero():
    w, table, dwm = arrays((3, 4, 2, 2), seed=0)
    table[:] = [[1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 1, 1]]
    wm, dw = mask.forward_ref(w, table), mask.backward_ref(dwm, table)
    for k, c in np.ndindex(3, 4):
        keep = table[k, c] == 1
        np.testing.assert_array_equal(wm[k, c], w[k, c] if keep else 0)
        np.testing.assert_array_equal(dw[k, c], dwm[k, c] if keep else 0)


def check_kernel(shape, seed, **launch):
    w, table, dwm = arrays(shape, seed, np.float32)
    wm, dw = empty(w.shape), empty(w.shape)
    mask.forward(dev(w), dev(table), wm, **launch)
    assert_close(wm, mask.forward_ref(w, table), "forward")
    mask.backward(dev(dwm), dev(table), dw, **launch)
    assert_close(dw, mask.backward_ref(dwm, table), "backward")


@kernel_settings
@given(shapes, st.integers(0, 2**32 - 1))
def test_kernel_matches_reference(shape, seed):
    check_kernel(shape, seed)


# LeNet's C3 shape, 16 x 6 x 5 x 5 = 2400 weights, in blocks of 256: 10 blocks; capped at 3:
# four passes, the last partial.
@pytest.mark.parametrize("max_blocks", [mask.MAX_BLOCKS, 3, 1])
def test_kernel_over_blocks_and_passes(max_blocks):
    with split_on_every_axis() if max_blocks > 1 else nullcontext():
        check_kernel((16, 6, 5, 5), 1, max_blocks=max_blocks)


def test_launchers_reject_bad_arguments():
    w = dev(np.zeros((2, 3, 1, 1)))
    with pytest.raises(ValueError, match=r"mask table has shape \(3, 2\), expected \(2, 3\)"):
        mask.forward(w, dev(np.zeros((3, 2))), empty(w.shape))
    with pytest.raises(ValueError, match="mask w must have 4 dimensions"):
        mask.forward(dev(np.zeros((2, 3))), dev(np.zeros((2, 3))), empty((2, 3)))
    with pytest.raises(ValueError, match="float32"):
        mask.backward(w, dev(np.zeros((2, 3)), np.float64), empty(w.shape))
