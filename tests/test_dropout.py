"""Dropout: the mask's statistics and reproducibility, the reference's gradient, and the
kernel against the reference bit for bit."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from helpers import (assert_close, dev, directional_check, empty, host, kernel_settings,
                     split_on_every_axis)
from kernels import dropout

# <= 216 elements: one 256-thread block (the grid-stride test below covers several)
shapes = st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple)
seeds = st.integers(0, 2**32 - 1)
ps = st.sampled_from([0.0, 0.1, 0.5, 0.9])


@given(shapes, ps, seeds)
def test_reference_gradient(shape, p, seed):
    rng = np.random.default_rng(seed)
    directional_check(lambda x: dropout.forward_ref(x, p, seed),
                      lambda x, dy: (dropout.backward_ref(dy, p, seed),),
                      [rng.standard_normal(shape)], wrt=[0], rng=rng)


def test_mask_is_reproducible_and_differs_across_seeds():
    a = dropout.mask_ref((1000,), 0.5, 7)
    np.testing.assert_array_equal(a, dropout.mask_ref((1000,), 0.5, 7))
    assert (a != dropout.mask_ref((1000,), 0.5, 8)).mean() > 0.4  # ~0.5 for independent masks
    assert (a != dropout.mask_ref((1000,), 0.5, 2**32 - 1)).mean() > 0.4


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 1, 123456789])
def test_mask_keeps_one_minus_p(p, seed):
    # 100k Bernoulli(1-p) draws: the standard deviation of the fraction is <= 0.0016, so
    # 0.01 is over six of them (deterministic for a fixed seed anyway).
    keep = dropout.mask_ref((100_000,), p, seed)
    assert abs(keep.mean() - (1 - p)) < 0.01


def correlation(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return np.corrcoef(a, b)[0, 1]


# Independent Bernoulli masks of n elements have correlations of about N(0, 1/n): with
# n >= 65536, |r| < 0.02 is over five standard deviations. The distances are powers of
# two because the index enters the hash as i ^ key: a weak hash shows its structure
# along single index bits first.
LIMIT = 0.02


@pytest.mark.parametrize("distance", [1, 2, 3, 4, 16, 256, 4096])
def test_mask_has_no_correlation_between_elements(distance):
    keep = dropout.mask_ref((1 << 17,), 0.5, 3)
    assert abs(correlation(keep[distance:], keep[:-distance])) < LIMIT


@pytest.mark.parametrize("rows, row", [(4096, 128), (1024, 4096)])
def test_mask_has_no_correlation_between_rows(rows, row):
    """Element by element and by row (the fraction kept: dropout on an FC layer's batch
    must not keep more of one example's units whenever it keeps more of the previous)."""
    keep = dropout.mask_ref((rows, row), 0.5, 11)
    assert abs(correlation(keep[1:], keep[:-1])) < LIMIT
    kept = keep.mean(axis=1)
    assert abs(correlation(kept[1:], kept[:-1])) < 5 / np.sqrt(rows)


@pytest.mark.parametrize("seed", [0, 1, 2**31 - 1, 2**32 - 2])
def test_masks_of_consecutive_seeds_are_uncorrelated(seed):
    a, b = (dropout.mask_ref((1 << 16,), 0.5, s) for s in (seed, seed + 1))
    assert abs(correlation(a, b)) < LIMIT


def test_every_input_bit_changes_about_half_the_output_bits():
    """Avalanche: flipping one bit of the hashed word (i ^ key) flips each of the 32 output
    bits with probability close to 1/2. A hash whose rounds cancel, or that lacks a
    multiply, misses this by far."""
    words = np.random.default_rng(0).integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32)
    out = dropout._triple32_ref(words)
    bits = np.arange(32, dtype=np.uint32)
    for bit in range(32):
        flipped = dropout._triple32_ref(words ^ np.uint32(1 << bit)) ^ out
        rate = ((flipped[:, None] >> bits) & 1).mean(axis=0)   # per output bit
        assert np.all(np.abs(rate - 0.5) < 0.05), (bit, rate.round(2))


def test_expectation_is_preserved():
    x = np.full(100_000, 3.0, dtype=np.float32)
    assert abs(dropout.forward_ref(x, 0.5, 42).mean() - 3.0) < 0.05


def test_p_zero_is_identity():
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_array_equal(dropout.forward_ref(x, 0.0, 9), x)
    y = empty(x.shape)
    dropout.forward(dev(x), y, 0.0, 9)
    np.testing.assert_array_equal(host(y), x)


def check_kernels(x, p, seed, **launch):
    y = empty(x.shape)
    dropout.forward(dev(x), y, p, seed, **launch)
    np.testing.assert_array_equal(host(y) != 0, dropout.mask_ref(x.shape, p, seed))
    assert_close(y, dropout.forward_ref(x, p, seed), "forward")
    dx = empty(x.shape)
    dropout.backward(dev(x), dx, p, seed, **launch)
    assert_close(dx, dropout.backward_ref(x, p, seed), "backward")


@kernel_settings
@given(shapes, ps, seeds)
def test_kernel_matches_reference(shape, p, seed):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) + 5  # no 0s
    check_kernels(x, p, seed)


@pytest.mark.parametrize("max_blocks", [dropout.MAX_BLOCKS, 2, 1])
def test_kernel_over_blocks_and_passes(max_blocks):
    """100 elements in blocks of 32: 4 blocks, the last partial; capped at 2 or 1 blocks:
    two or four passes of the grid-stride loop. Every element is hashed with its own
    index (the mask matches the reference bit for bit)."""
    x = np.random.default_rng(5).standard_normal((4, 25)).astype(np.float32) + 5
    if max_blocks > 1:
        with split_on_every_axis():
            check_kernels(x, 0.3, 2**31 + 5, threads=32, max_blocks=max_blocks)
    else:
        check_kernels(x, 0.3, 2**31 + 5, threads=32, max_blocks=max_blocks)


# ---- offset: the global flat index of element 0 (data-parallel slices, sect. 3.3) ------

@st.composite
def batch_and_slice(draw):
    """A batch (N, F) and one process's slice of it: samples [s, e)."""
    N, F = draw(st.integers(1, 9)), draw(st.integers(1, 24))
    s = draw(st.integers(0, N - 1))
    return N, F, s, draw(st.integers(s + 1, N))


@given(batch_and_slice(), ps, seeds)
def test_a_slice_with_its_offset_draws_the_whole_batchs_mask(case, p, seed):
    """Rung 1: samples [s, e) of a batch, given offset s * F, keep exactly the elements
    the whole batch keeps there: R processes apply the masks of one."""
    N, F, s, e = case
    whole = dropout.mask_ref((N, F), p, seed)
    np.testing.assert_array_equal(dropout.mask_ref((e - s, F), p, seed, offset=s * F),
                                  whole[s:e])
    x = np.random.default_rng(seed).standard_normal((N, F)).astype(np.float32)
    np.testing.assert_array_equal(dropout.forward_ref(x[s:e], p, seed, s * F),
                                  dropout.forward_ref(x, p, seed)[s:e])


@given(shapes, ps, seeds, st.integers(0, 2**32 - 1))
def test_reference_gradient_with_offset(shape, p, seed, offset):
    rng = np.random.default_rng(seed)
    directional_check(lambda x: dropout.forward_ref(x, p, seed, offset),
                      lambda x, dy: (dropout.backward_ref(dy, p, seed, offset),),
                      [rng.standard_normal(shape)], wrt=[0], rng=rng)


def test_offset_wraps_modulo_2_32():
    """Index offset + i is taken modulo 2^32 (as the kernel's 32-bit hash input is)."""
    key = np.uint32(dropout.key_ref(3))
    last = dropout._triple32_ref(np.array([2**32 - 1], np.uint32) ^ key)[0]
    np.testing.assert_array_equal(dropout.hash_ref(3, 2, offset=2**32 - 1),
                                  [last, dropout.hash_ref(3, 1)[0]])


def check_kernels_offset(x, p, seed, offset, **launch):
    y, dx = empty(x.shape), empty(x.shape)
    dropout.forward(dev(x), y, p, seed, offset, **launch)
    np.testing.assert_array_equal(host(y) != 0, dropout.mask_ref(x.shape, p, seed, offset))
    assert_close(y, dropout.forward_ref(x, p, seed, offset), "forward")
    dropout.backward(dev(x), dx, p, seed, offset=offset, **launch)
    assert_close(dx, dropout.backward_ref(x, p, seed, offset), "backward")


@kernel_settings
@given(shapes, ps, seeds, st.integers(0, 2**32 - 1))
def test_kernel_with_offset_matches_reference(shape, p, seed, offset):
    """Rung 2: offsets anywhere in [0, 2^32), those that wrap included."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) + 5  # no 0s
    check_kernels_offset(x, p, seed, offset)


def test_kernel_with_offset_over_blocks_and_passes():
    """100 elements, blocks of 32, capped at 2 blocks: the offset is added to the global
    index of every block and every grid-stride pass, not to threadIdx alone."""
    x = np.random.default_rng(6).standard_normal((4, 25)).astype(np.float32) + 5
    with split_on_every_axis():
        check_kernels_offset(x, 0.5, 77, 3 * 25, threads=32, max_blocks=2)
        check_kernels_offset(x, 0.5, 77, 2**32 - 40, threads=32, max_blocks=2)  # wraps
    whole = dropout.mask_ref((7, 25), 0.5, 77)  # the slice of a batch of 7 it stands for
    y = empty(x.shape)
    dropout.forward(dev(x), y, 0.5, 77, 3 * 25, threads=32, max_blocks=2)
    np.testing.assert_array_equal(host(y) != 0, whole[3:])


def test_launch_arguments_match_the_ptx_signature(monkeypatch):
    """Rung 3 compiles dropout_v1 for PTX_SIGNATURES; the launcher must pass exactly those
    types (offset as uint32 too, or the GPU would run a different specialisation)."""
    from numba import typeof
    seen = []
    monkeypatch.setattr(dropout, "launch", lambda kernel, grid, block, *args: seen.append(args))
    dropout.forward(dev(np.ones(8)), empty((8,)), 0.5, 1, 2**31 + 3)
    (kernel, signature), = dropout.PTX_SIGNATURES
    assert len(seen[0]) == len(signature) == 6
    assert [typeof(a) for a in seen[0][2:]] == list(signature[2:])


def test_launchers_reject_bad_arguments():
    x = dev(np.zeros(4))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout.forward(x, empty((4,)), 1.0, 0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout.backward(x, empty((4,)), -0.1, 0)
    with pytest.raises(ValueError, match="seed"):
        dropout.forward(x, empty((4,)), 0.5, 2**32)
    with pytest.raises(ValueError, match="offset"):
        dropout.forward(x, empty((4,)), 0.5, 0, 2**32)
    with pytest.raises(ValueError, match="offset"):
        dropout.mask_ref((4,), 0.5, 0, -1)
    with pytest.raises(ValueError, match=r"\(5,\)"):
        dropout.forward(x, empty((5,)), 0.5, 0)
    with pytest.raises(ValueError, match="float32"):
        dropout.forward(dev(np.zeros(4), np.float64), empty((4,)), 0.5, 0)


def test_launcher_errors_name_the_backward_arrays():
    with pytest.raises(ValueError, match="dropout dy must be float32"):
        dropout.backward(dev(np.zeros(4), np.float64), empty((4,)), 0.5, 0)
    with pytest.raises(ValueError, match="dropout dx has shape"):
        dropout.backward(dev(np.zeros(4)), empty((5,)), 0.5, 0)


def test_launcher_refuses_arrays_too_large_for_int32_naming_them():
    from test_common import Shape  # a stand-in with only a shape: no 8 GB array needed
    with pytest.raises(ValueError, match=r"dropout dy of shape \(2147483648,\)"):
        dropout.backward(Shape((2**31,)), Shape((2**31,)), 0.5, 0)
