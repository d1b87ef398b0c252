"""Linear: reference against finite differences; every kernel version against the reference.

Simulated shapes stay tiny (one Python thread per CUDA thread); sizes up to 20 put some
outputs and reductions across the TPB = 16 tile edge.
"""
import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from helpers import (ON_GPU, assert_close, dev, directional_check, empty, kernel_settings,
                     split_on_every_axis)
from kernels import linear

seeds = st.integers(0, 2**32 - 1)
# (N, I, O): batch 1, one feature, odd sizes, sizes beyond one tile (on a GPU, several).
sizes = st.tuples(st.integers(1, 70 if ON_GPU else 4), *[st.integers(1, 70 if ON_GPU else 20)] * 2)


def draw(seed, N, I, O, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x, w, b, dy = (rng.standard_normal(s).astype(dtype) for s in [(N, I), (O, I), (O,), (N, O)])
    return rng, x, w, b, dy


@given(sizes, seeds)
def test_reference_gradient(size, seed):
    rng, x, w, b, _ = draw(seed, *size, dtype=np.float64)
    directional_check(linear.forward_ref, lambda x, w, b, dy: linear.backward_ref(x, w, dy),
                      [x, w, b], wrt=[0, 1, 2], rng=rng)


def check_kernels(version, N, I, O, seed, **launch):
    _, x, w, b, dy = draw(seed, N, I, O)
    dx, dw, db = linear.backward_ref(x, w, dy)
    y = empty((N, O))
    linear.forward(dev(x), dev(w), dev(b), y, version=version)
    assert_close(y, linear.forward_ref(x, w, b), "forward")
    got = empty((N, I))
    linear.backward_data(dev(dy), dev(w), got, version=version)
    assert_close(got, dx, "backward_data")
    got = empty((O, I))
    linear.backward_weight(dev(x), dev(dy), got, version=version)
    assert_close(got, dw, "backward_weight")
    got = empty((O,))
    linear.backward_bias(dev(dy), got, **launch)
    assert_close(got, db, "backward_bias")


# The version is drawn too: the simulator is slow, so each version gets about half the
# examples. The explicit example makes sure the tiled kernels see I and O one past the
# tile edge.
@kernel_settings
@given(version=st.sampled_from([1, 2]), size=sizes, seed=seeds)
@example(version=2, size=(2, 17, 18), seed=1)
def test_kernels_match_reference(version, size, seed):
    check_kernels(version, *size, seed)


@pytest.mark.parametrize("version", [1, 2])
def test_kernels_over_several_blocks_and_tiles(version):
    """N, I, O = 17, 18, 19: every product's output is 2 x 2 blocks of 16 x 16, the last
    ones partial, and every reduction (I, O, N) is 2 tiles; the bias gradient's 19 outputs
    in blocks of 16 are 2 blocks. A kernel that ignores a block index, or stops its tile
    loop early, leaves NaNs or partial sums."""
    with split_on_every_axis():
        check_kernels(version, 17, 18, 19, 2, threads=16)


def test_launchers_reject_bad_arguments():
    x, w, b = dev(np.zeros((2, 3))), dev(np.zeros((4, 3))), dev(np.zeros(4))
    with pytest.raises(ValueError, match=r"linear w has shape \(4, 5\)"):
        linear.forward(x, dev(np.zeros((4, 5))), b, empty((2, 4)))
    with pytest.raises(ValueError, match=r"linear y has shape \(2, 5\), expected \(2, 4\)"):
        linear.forward(x, w, b, empty((2, 5)))
    with pytest.raises(ValueError, match="float32"):
        linear.forward(dev(np.zeros((2, 3)), np.float64), w, b, empty((2, 4)))
    with pytest.raises(ValueError, match="linear b"):
        linear.forward(x, w, dev(np.zeros(3)), empty((2, 4)))
    with pytest.raises(ValueError, match="linear dx"):
        linear.backward_data(dev(np.zeros((2, 4))), w, empty((2, 4)))
    with pytest.raises(ValueError, match="linear dy"):
        linear.backward_weight(x, dev(np.zeros((3, 4))), empty((4, 3)))
    with pytest.raises(ValueError, match="C-contiguous"):
        linear.backward_bias(dev(np.zeros((4, 2))).T, empty((4,)))
    with pytest.raises(ValueError, match="version"):
        linear.forward(x, w, b, empty((2, 4)), version=3)


@given(sizes, seeds)
def test_matches_torch(size, seed):
    torch = pytest.importorskip("torch")
    _, x, w, b, _ = draw(seed, *size)
    want = torch.nn.functional.linear(*(torch.from_numpy(a) for a in (x, w, b))).numpy()
    np.testing.assert_allclose(linear.forward_ref(x, w, b), want, rtol=1e-5, atol=1e-5)
