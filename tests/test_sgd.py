"""SGD with momentum and weight decay: the reference against a hand-computed update, the
kernel against the reference."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from helpers import assert_close, dev, host, kernel_settings, split_on_every_axis
from kernels import sgd

shapes = st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple)  # <= 216 elements
hyper = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)  # VGG's, sect. 3.1


def test_reference_two_steps_by_hand():
    w, v = np.array([1.0, -2.0]), np.zeros(2)
    g1, g2 = np.array([0.5, 0.25]), np.array([-1.0, 2.0])
    sgd.step_ref(w, g1, v, **hyper)
    # v1 = 0.9*0 - 5e-4*0.01*w0 - 0.01*g1;  w1 = w0 + v1
    v1 = np.array([-5e-6 - 0.005, 1e-5 - 0.0025])
    np.testing.assert_allclose(v, v1, rtol=1e-12)
    np.testing.assert_allclose(w, [1.0, -2.0] + v1, rtol=1e-12)
    w1 = w.copy()
    sgd.step_ref(w, g2, v, **hyper)
    v2 = 0.9 * v1 - 5e-6 * w1 - 0.01 * g2  # the velocity carries the first step on
    np.testing.assert_allclose(v, v2, rtol=1e-12)
    np.testing.assert_allclose(w, w1 + v2, rtol=1e-12)


def test_reference_equals_pytorch_form_at_constant_lr():
    """PyTorch: b <- m b + (g + wd w); w <- w - lr b. Same trajectory when lr is constant."""
    rng = np.random.default_rng(0)
    w, v = rng.standard_normal(5), np.zeros(5)
    w_pt, b = w.copy(), np.zeros(5)
    for _ in range(3):
        g = rng.standard_normal(5)
        sgd.step_ref(w, g, v, **hyper)
        b = hyper["momentum"] * b + (g + hyper["weight_decay"] * w_pt)
        w_pt = w_pt - hyper["lr"] * b
    np.testing.assert_allclose(w, w_pt, rtol=1e-12)


def check_kernel(shape, seed, **launch):
    rng = np.random.default_rng(seed)
    w, g, v = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    dw, dg, dv = dev(w), dev(g), dev(v)
    for _ in range(2):  # two steps: the second reads the velocity the first wrote
        sgd.step(dw, dg, dv, **hyper, **launch)
        sgd.step_ref(w, g, v, **hyper)
    assert_close(dv, v, "v")
    assert_close(dw, w, "w")


@kernel_settings
@given(shapes, st.integers(0, 2**32 - 1))
def test_kernel_matches_reference(shape, seed):
    check_kernel(shape, seed)


def test_kernel_over_blocks_and_passes():
    """100 elements in blocks of 32: 4 blocks, the last partial; capped at 2 blocks: two
    passes of the grid-stride loop, the second partial; capped at 1: four passes. An
    element visited twice would be updated twice, one skipped not at all."""
    for max_blocks in (sgd.MAX_BLOCKS, 2):
        with split_on_every_axis():
            check_kernel((4, 25), 3, threads=32, max_blocks=max_blocks)
    check_kernel((4, 25), 4, threads=32, max_blocks=1)


def test_launcher_rejects_bad_arguments():
    w = dev(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"sgd g has shape \(3, 2\)"):
        sgd.step(w, dev(np.zeros((3, 2))), dev(np.zeros((2, 3))), **hyper)
    with pytest.raises(ValueError, match="sgd v must be float32"):
        sgd.step(w, dev(np.zeros((2, 3))), dev(np.zeros((2, 3)), np.float64), **hyper)
    with pytest.raises(ValueError, match="C-contiguous"):
        sgd.step(dev(np.zeros((3, 2))).T, dev(np.zeros((2, 3))), dev(np.zeros((2, 3))),
                 **hyper)
    assert not np.any(host(w))  # nothing was touched
