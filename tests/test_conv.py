"""Convolution: the reference against a nested-loop oracle and finite differences; every
kernel version against the reference; the launchers' argument checks; PyTorch if present.
Every shape carries its groups (PyTorch's `groups`: 1, 2, 3, and depthwise, C = K = G)."""
import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from helpers import (ON_GPU, assert_close, dev, directional_check, empty, host,
                     kernel_settings, split_on_every_axis)
from kernels import conv


@st.composite
def conv_shapes(draw, filters=(1, 3, 5, 7), max_extra=6, max_c=3, max_k=3, half_pad=False,
                groups=(1, 2, 3)):
    """(N, C, H, W, K, R, S, stride, pad, G): batch 1..2, square or rectangular filters,
    stride 1/2/4, pad 0..3 (at most half the filter if half_pad), inputs at least as large
    as the filter minus the padding; G groups of 1..max_c channels and 1..max_k filters
    (depthwise when both are 1 and G > 1)."""
    R, S = draw(st.sampled_from(filters)), draw(st.sampled_from(filters))
    stride = draw(st.sampled_from([1, 2, 4]))
    pad = draw(st.integers(0, min(3, max(R, S) // 2) if half_pad else 3))
    H = draw(st.integers(max(1, R - 2 * pad), max(1, R - 2 * pad) + max_extra))
    W = draw(st.integers(max(1, S - 2 * pad), max(1, S - 2 * pad) + max_extra))
    N, G = draw(st.integers(1, 2)), draw(st.sampled_from(groups))
    C, K = G * draw(st.integers(1, max_c)), G * draw(st.integers(1, max_k))
    return N, C, H, W, K, R, S, stride, pad, G


def unpack(shape):
    """(N, C, H, W, K, R, S, stride, pad, G) from a shape tuple (G = 1 if left out)."""
    return tuple(shape) + (1,) * (10 - len(shape))


def arrays(shape, seed, dtype=np.float64):
    """x, w, b, dy for a shape tuple from conv_shapes, standard normal."""
    N, C, H, W, K, R, S, stride, pad, G = unpack(shape)
    P, Q = conv.output_size(H, W, R, S, stride, pad)
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype)
            for s in [(N, C, H, W), (K, C // G, R, S), (K,), (N, K, P, Q)]]


# ----------------------------------------------------------------------------------------
# Rung 1: the reference is right

@pytest.mark.parametrize("C, K, G", [(2, 3, 1), (4, 6, 2), (3, 3, 3)],
                         ids=["full", "two_groups", "depthwise"])
def test_forward_ref_matches_nested_loops(C, K, G):
    """Filter k sees only the C/G channels of its group k // (K/G) (PyTorch's groups)."""
    N, H, W, R, S, stride, pad = 2, 5, 6, 3, 2, 2, 1
    x, w, b, _ = arrays((N, C, H, W, K, R, S, stride, pad, G), seed=0)
    P, Q = conv.output_size(H, W, R, S, stride, pad)
    want = np.zeros((N, K, P, Q))
    for n, k, p, q, c, r, s in np.ndindex(N, K, P, Q, C // G, R, S):
        h, v = p * stride - pad + r, q * stride - pad + s
        if 0 <= h < H and 0 <= v < W:
            want[n, k, p, q] += x[n, k // (K // G) * (C // G) + c, h, v] * w[k, c, r, s]
    want += b[:, None, None]
    np.testing.assert_allclose(conv.forward_ref(x, w, b, stride, pad, G), want, rtol=1e-12)


def test_grouped_reference_is_the_groups_side_by_side():
    """Group g's outputs are an ungrouped conv of group g's channels with its filters, and
    its gradients are that conv's."""
    x, w, b, dy = arrays((2, 6, 5, 5, 4, 3, 3, 1, 1, 2), seed=1)
    y, grads = conv.forward_ref(x, w, b, 1, 1, 2), conv.backward_ref(x, w, dy, 1, 1, groups=2)
    for cs, ks in [(slice(0, 3), slice(0, 2)), (slice(3, 6), slice(2, 4))]:
        np.testing.assert_allclose(y[:, ks], conv.forward_ref(x[:, cs], w[ks], b[ks], 1, 1))
        dx, dw, db = conv.backward_ref(x[:, cs], w[ks], dy[:, ks], 1, 1)
        for got, want in zip((grads[0][:, cs], grads[1][ks], grads[2][ks]), (dx, dw, db)):
            np.testing.assert_allclose(got, want)


def test_reference_keeps_dtype_and_need_dx():
    x, w, b, dy = arrays((1, 2, 5, 5, 3, 3, 3, 1, 1), seed=1, dtype=np.float32)
    assert conv.forward_ref(x, w, b, 1, 1).dtype == np.float32
    dx, dw, db = conv.backward_ref(x, w, dy, 1, 1, need_dx=False)
    assert dx is None and dw.dtype == db.dtype == np.float32
    assert conv.forward_ref(*(a.astype(np.float64) for a in (x, w, b)), 1, 1).dtype == np.float64


@given(conv_shapes(filters=(1, 2, 3, 5, 7)), st.integers(0, 2**32 - 1))
@example((1, 1, 11, 13, 2, 11, 11, 4, 2, 1), 0)  # AlexNet's first layer, scaled down
@example((1, 4, 6, 6, 4, 5, 5, 1, 2, 2), 0)     # AlexNet's conv2: two towers, scaled down
@example((2, 3, 5, 4, 3, 3, 3, 1, 1, 3), 0)     # depthwise
def test_reference_gradient(shape, seed):
    *_, stride, pad, G = unpack(shape)
    directional_check(lambda x, w, b: conv.forward_ref(x, w, b, stride, pad, G),
                      lambda x, w, b, dy: conv.backward_ref(x, w, dy, stride, pad, groups=G),
                      arrays(shape, seed)[:3], wrt=[0, 1, 2], rng=np.random.default_rng(seed))


# ----------------------------------------------------------------------------------------
# Rung 2: every kernel version equals the reference. The simulator runs a Python thread
# per CUDA thread, so shapes stay tiny; random ones still cross a v2 tile edge (TILE = 16)
# now and then, and the explicit example crosses every one (N*P*Q, K, C, C*R*S = 17) and
# v3's reduction step (BK = 8). Every kernel also runs below on shapes chosen to give it
# more than one block along every grid axis it uses (v3's 64 x 64 tiles and 256-thread
# blocks make those few and chosen). On a GPU the drawn shapes are larger and come in 1 to
# 3 groups; under the simulator the groups run on the chosen shapes of test_grouped_*.

sim_shapes = (conv_shapes(filters=(1, 3, 5), max_extra=70, max_c=70, max_k=70) if ON_GPU
              else conv_shapes(filters=(1, 3, 7), max_extra=2, max_c=2, max_k=2, half_pad=True,
                               groups=(1,)))  # groups: the chosen shapes below


def tile_edges(test):  # a fresh example() per test: hypothesis shares one's list of uses
    return example((1, 17, 1, 17, 17, 1, 1, 1, 0, 1), 0)(test)
VERSIONS = pytest.mark.parametrize("version", [1, 2, 3])


def _case(shape, seed):
    *_, stride, pad, G = unpack(shape)
    x, w, b, dy = arrays(shape, seed, np.float32)
    return x, w, b, dy, stride, pad, G


def weight_gradient(x, dy, w_shape, stride, pad, version, chunks=None, threads=conv.THREADS,
                    groups=1):
    """dw through the launcher, with the workspace it asks for (as ops.conv2d does)."""
    dw = empty(w_shape)
    shape = conv.backward_weight_workspace(x.shape, w_shape, stride, pad, version, chunks)
    workspace = None if shape is None else empty(shape)
    conv.backward_weight(dev(x), dev(dy), dw, stride, pad, version=version,
                         split_k_chunks=chunks, workspace=workspace, threads=threads,
                         groups=groups)
    return dw


def bias_gradient(dy, threads=conv.THREADS):
    db = empty(dy.shape[1:2])
    shape = conv.backward_bias_workspace(dy.shape)
    conv.backward_bias(dev(dy), db, None if shape is None else empty(shape), threads=threads)
    return db


@VERSIONS
@kernel_settings
@given(sim_shapes, st.integers(0, 2**32 - 1))
@tile_edges
def test_forward_kernel(version, shape, seed):
    x, w, b, dy, stride, pad, G = _case(shape, seed)
    y = empty(dy.shape)
    conv.forward(dev(x), dev(w), dev(b), y, stride, pad, version=version, groups=G)
    assert_close(y, conv.forward_ref(x, w, b, stride, pad, G), f"forward v{version}")


@VERSIONS
@kernel_settings
@given(sim_shapes, st.integers(0, 2**32 - 1))
@tile_edges
def test_backward_data_kernel(version, shape, seed):
    x, w, b, dy, stride, pad, G = _case(shape, seed)
    dx = empty(x.shape)
    conv.backward_data(dev(dy), dev(w), dx, stride, pad, version=version, groups=G)
    assert_close(dx, conv.backward_ref(x, w, dy, stride, pad, groups=G)[0],
                 f"backward_data v{version}")


@VERSIONS
@kernel_settings
@given(sim_shapes, st.integers(0, 2**32 - 1))
@tile_edges
def test_backward_weight_kernel(version, shape, seed):
    x, w, b, dy, stride, pad, G = _case(shape, seed)
    dw = weight_gradient(x, dy, w.shape, stride, pad, version, groups=G)
    assert_close(dw, conv.backward_ref(x, w, dy, stride, pad, groups=G)[1],
                 f"backward_weight v{version}")


@kernel_settings
@given(sim_shapes, st.integers(0, 2**32 - 1))
@example((2, 1, 12, 12, 1, 1, 1, 1, 0, 1), 0)  # P*Q = 144 > BIAS_THREADS: the strided loop
def test_backward_bias_kernel(shape, seed):
    x, w, b, dy, stride, pad, G = _case(shape, seed)
    assert_close(bias_gradient(dy), conv.backward_ref(x, w, dy, stride, pad, groups=G)[2],
                 "backward_bias")


# Shapes that split every grid axis of a pass: (N, C, H, W, K, R, S, stride, pad).
# Rows are N*P*Q (forward), N*H*W (backward data); columns K, C; dw is K x C*R*S with
# the reduction N*P*Q, in chunks where asked. TILE = 16 (v2), BM = BN = 64 and BK = 8 (v3).
SMALL = (2, 17, 1, 17, 17, 1, 1, 1, 0)      # v1 (blocks of 16) and v2: 2-3 tiles per axis
SPLIT = {                                    # v3, one shape per pass
    "forward": (1, 9, 5, 13, 65, 1, 1, 1, 0),        # 65 rows x 65 filters, 9 taps: 2 steps
    "backward_data": (1, 65, 5, 13, 9, 1, 1, 1, 0),  # 65 pixels x 65 channels, 9 taps
    "backward_weight": (1, 65, 4, 6, 65, 1, 1, 1, 0),  # 65 x 65 dw, 24 pixels in 2 chunks
}


def run_pass(name, version, shape, seed=3, threads=16):
    """One pass of one version on `shape`, checked against the reference."""
    x, w, b, dy, stride, pad, G = _case(shape, seed)
    dx, dw, db = conv.backward_ref(x, w, dy, stride, pad, groups=G)
    if name == "forward":
        got, want = empty(dy.shape), conv.forward_ref(x, w, b, stride, pad, G)
        conv.forward(dev(x), dev(w), dev(b), got, stride, pad, version, threads, G)
    elif name == "backward_data":
        got, want = empty(x.shape), dx
        conv.backward_data(dev(dy), dev(w), got, stride, pad, version, threads, G)
    elif name == "backward_weight":
        got, want = weight_gradient(x, dy, w.shape, stride, pad, version, 2, threads, G), dw
    else:
        got, want = bias_gradient(dy, threads), db
    assert_close(got, want, f"{name} v{version}")


@pytest.mark.parametrize("name", ["forward", "backward_data", "backward_weight"])
@VERSIONS
def test_every_pass_over_several_blocks_on_every_axis(name, version):
    with split_on_every_axis():
        run_pass(name, version, SPLIT[name] if version == 3 else SMALL)


# The same with 2 groups of more than one tile each (v2, v3) along the grid's y axis: the
# second tile of group 0 is not the first of group 1, so a kernel that reads its group or
# its first filter/channel wrongly from blockIdx.y writes the wrong outputs or none.
SMALL_G = {1: (2, 4, 1, 17, 18, 1, 1, 1, 0, 2),   # v1: 1-D grids of several blocks of 16
           2: (2, 34, 1, 17, 34, 1, 1, 1, 0, 2)}  # v2: groups of 17 channels and filters
SPLIT_G = {                                       # v3: groups of 65, one reduction step
    "forward": (1, 2, 5, 13, 130, 1, 1, 1, 0, 2),        # 65 rows; 2 x 2 column tiles
    "backward_data": (1, 130, 5, 13, 2, 1, 1, 1, 0, 2),  # 65 pixels; 2 x 2 column tiles
    "backward_weight": (1, 2, 11, 11, 130, 9, 9, 1, 0, 2),  # 81 taps, 2 x 2 row tiles,
}                                                           # 9 pixels in 2 chunks


@pytest.mark.parametrize("name", ["forward", "backward_data", "backward_weight"])
@VERSIONS
def test_grouped_passes_over_several_tiles_per_group(name, version):
    with split_on_every_axis():
        run_pass(name, version, SPLIT_G[name] if version == 3 else SMALL_G[version])


def test_bias_over_several_blocks_on_every_axis():
    """K = 2 blocks by 2 chunks of images; the chunks added by a second pass of 2 blocks
    of 1 thread."""
    with split_on_every_axis():
        run_pass("backward_bias", None, (2, 1, 1, 3, 2, 1, 1, 1, 0), threads=1)


# v3 on filters, strides and padding: (N, C, H, W, K, R, S, stride, pad).
V3_EDGES = {
    "3x3_two_row_tiles": (2, 2, 7, 7, 3, 3, 3, 1, 1),   # 98 rows: 2 row tiles; C*R*S = 18
    "stride2": (2, 3, 7, 7, 5, 3, 3, 2, 1),             # 4x4 output; dx rows 98, 3/4 zeros
    "1x1_K65": (1, 1, 1, 2, 65, 1, 1, 1, 0),  # y: 2 column tiles; dw: 2 row tiles; dx: K*R*S 65
    "1x1_C65": (1, 65, 1, 2, 1, 1, 1, 1, 0),  # dx: 2 column tiles; dw: 2 column tiles; y: 65
    "dw_wide": (1, 8, 3, 3, 2, 3, 3, 1, 1),             # C*R*S = 72: 2 dw column tiles
}


@pytest.mark.parametrize("shape", V3_EDGES.values(), ids=V3_EDGES.keys())
def test_v3_tile_edges(shape):
    for name in ("forward", "backward_data", "backward_weight"):
        run_pass(name, 3, shape)


# Groups on every version, for every pass, whatever the draws above give: two groups
# ("towers") of a 3x3 conv, and a depthwise 3x3 at stride 2.
GROUPED = {"two_towers": (1, 4, 3, 4, 4, 3, 3, 1, 1, 2),
           "depthwise_stride2": (2, 3, 5, 4, 3, 3, 3, 2, 1, 3)}


@pytest.mark.parametrize("shape", GROUPED.values(), ids=GROUPED.keys())
@VERSIONS
def test_grouped_kernels(version, shape):
    for name in ("forward", "backward_data", "backward_weight"):
        run_pass(name, version, shape)


def test_grouped_workspace_has_the_groups_weight_shape():
    """The split-K partial sums are (chunks, K, C/G, R, S): the groups come from w's shape."""
    assert conv.backward_weight_workspace((1, 8, 4, 6), (4, 4, 1, 1), version=2,
                                          split_k_chunks=2) == (2, 4, 4, 1, 1)
    assert conv.backward_weight_workspace((1, 8, 4, 6), (8, 1, 3, 3), 1, 1, version=3,
                                          split_k_chunks=3) == (3, 8, 1, 3, 3)


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("shape, chunks", [
    ((2, 2, 7, 7, 3, 3, 3, 1, 1), 4),   # N*P*Q = 98 in chunks of 32: 4, the last 2 long
    ((2, 3, 7, 7, 5, 3, 3, 2, 1), 3),   # stride 2, 32 pixels: asks 3, gets 2 chunks of 16
    ((1, 8, 3, 3, 2, 3, 3, 1, 1), 2),   # 72 dw columns x 9 pixels: chunks of 8 (v3) + 1
])
def test_backward_weight_split_k(version, shape, chunks):
    N, C, H, W, K, R, S, stride, pad = shape
    P, Q = conv.output_size(H, W, R, S, stride, pad)
    got_chunks, chunk = conv.split_k(N * P * Q, 1, chunks, version)
    assert chunk % conv.SPLITK_STEP[version] == 0 and 1 <= got_chunks <= chunks
    x, w, b, dy, stride, pad, _ = _case(shape, seed=4)
    dw = weight_gradient(x, dy, w.shape, stride, pad, version, chunks)
    assert_close(dw, conv.backward_ref(x, w, dy, stride, pad)[1], "backward_weight split")


def test_split_gradients_need_their_workspace():
    x, w, b, dy, stride, pad, _ = _case(SMALL, 0)
    with pytest.raises(ValueError, match="needs a workspace"):
        conv.backward_weight(dev(x), dev(dy), empty(w.shape), version=2, split_k_chunks=2)
    with pytest.raises(ValueError, match=r"workspace has shape \(3, 17, 17, 1, 1\)"):
        conv.backward_weight(dev(x), dev(dy), empty(w.shape), version=2, split_k_chunks=2,
                             workspace=empty((3, 17, 17, 1, 1)))
    with pytest.raises(ValueError, match="needs a workspace"):
        conv.backward_bias(dev(dy), empty((17,)))
    assert conv.backward_weight_workspace(x.shape, w.shape, version=1) is None


def test_split_gradients_are_reproducible_bit_for_bit():
    """Chunks are added in a fixed order (no atomics): the same inputs give the same bits."""
    x, w, b, dy, stride, pad, _ = _case((1, 8, 3, 3, 2, 3, 3, 1, 1), 5)
    first, second = (host(weight_gradient(x, dy, w.shape, stride, pad, 3, 2)) for _ in range(2))
    np.testing.assert_array_equal(first, second)


def ceil_to(a, b):
    return -(-a // b) * b


@pytest.mark.parametrize("version", [2, 3])
def test_split_k_policy(version):
    L = 32 * 224 * 224                     # conv1_1 at batch 32: dw 64 x 27 is 1 (v3) or 8 tiles
    tiles = 1 if version == 3 else 8
    target = conv.SPLITK_BLOCKS[version] // tiles
    step = conv.SPLITK_STEP[version]
    chunks, chunk = conv.split_k(L, tiles, version=version)
    assert target - 8 <= chunks <= target  # ~ the blocks aimed at, never more
    assert chunk % step == 0 and (chunks - 1) * chunk < L <= chunks * chunk
    many = conv.SPLITK_BLOCKS[version]     # a dw that fills the GPU by itself
    assert conv.split_k(L, many, version=version) == (1, ceil_to(L, step))
    assert conv.split_k(100, 1, version=version) == (1, ceil_to(100, step))  # not split
    assert conv.split_k(0, 1, version=version) == (1, step)   # an empty batch: one chunk
    assert conv.split_k(10**9, 1, 10**6, version)[0] <= conv.MAX_GRID_YZ
    with pytest.raises(ValueError, match="split_k"):
        conv.split_k(100, 1, 0, version)


def test_bias_chunk_policy():
    assert conv.BIAS_BLOCKS == 2640
    assert conv.bias_chunks(32, 64) == (32, 1)     # conv1 at batch 32: one image per block
    assert conv.bias_chunks(256, 512) == (5, 52)   # conv5: 2640 // 512 = 5 chunks of 52 images
    assert conv.bias_chunks(100, 1000) == (2, 50)  # 2640 // 1000 = 2 chunks
    assert conv.bias_chunks(1, 64) == (1, 1)
    assert conv.bias_chunks(0, 64) == (1, 1)


def test_launchers_reject_bad_arguments():
    x, w, b, y = (dev(np.zeros(s)) for s in [(1, 2, 5, 5), (3, 2, 3, 3), (3,), (1, 3, 3, 3)])
    with pytest.raises(ValueError, match="float32"):
        conv.forward(dev(np.zeros((1, 2, 5, 5)), np.float64), w, b, y)
    with pytest.raises(ValueError, match=r"\(1, 3, 5, 5\)"):
        conv.forward(x, w, b, y, pad=1)  # y should be 5x5 with padding
    with pytest.raises(ValueError, match="input channels"):
        conv.forward(dev(np.zeros((1, 4, 5, 5))), w, b, y)
    with pytest.raises(ValueError, match="does not fit"):
        conv.forward(dev(np.zeros((1, 2, 2, 2))), w, b, y)
    with pytest.raises(ValueError, match="C-contiguous"):
        conv.backward_data(y, w, dev(np.zeros((1, 2, 5, 10)))[..., ::2])
    with pytest.raises(ValueError, match="versions"):
        conv.backward_weight(x, y, empty(w.shape), version=4)


def test_launchers_check_the_groups():
    x, w, b, y = (dev(np.zeros(s)) for s in [(1, 4, 5, 5), (6, 2, 3, 3), (6,), (1, 6, 3, 3)])
    conv.forward(x, w, b, y, groups=2)  # 2 groups of 2 channels and 3 filters: fine
    with pytest.raises(ValueError, match="2 input channels per group x 1 group"):
        conv.forward(x, w, b, y)  # groups=1 would need 4 channels per filter
    with pytest.raises(ValueError, match="divide the 6 filters"):
        conv.backward_data(y, w, dev(np.zeros((1, 8, 5, 5))), groups=4)
    with pytest.raises(ValueError, match="groups must be >= 1"):
        conv.backward_weight(x, y, empty(w.shape), groups=0)
    with pytest.raises(ValueError, match="no input channels"):
        conv.forward(dev(np.zeros((1, 0, 5, 5))), dev(np.zeros((6, 0, 3, 3))), b, y)
    with pytest.raises(ValueError, match="input channels"):
        conv.forward_ref(np.zeros((1, 4, 5, 5)), np.zeros((6, 2, 3, 3)), np.zeros(6), groups=3)


@given(conv_shapes(groups=(1, 2, 3)), st.integers(0, 2**32 - 1))
@example((2, 6, 7, 7, 4, 3, 3, 1, 1, 2), 0)   # "rows" unrolling in each group
@example((1, 32, 3, 3, 4, 3, 3, 1, 1, 2), 0)  # "nhwc" unrolling in each group
def test_grouped_fast_path_equals_the_reference(shape, seed):
    """The cpu device's fast path runs one ungrouped conv per group: same numbers."""
    x, w, b, dy = arrays(shape, seed)
    *_, stride, pad, G = unpack(shape)
    y, unrolled = conv.forward_fast(x, w, b, stride, pad, G)
    np.testing.assert_allclose(y, conv.forward_ref(x, w, b, stride, pad, G), rtol=1e-10,
                               atol=1e-10)
    want = conv.backward_ref(x, w, dy, stride, pad, groups=G)
    for given_unrolled in (unrolled, None):
        got = conv.backward_fast(x, w, dy, stride, pad, unrolled=given_unrolled, groups=G)
        for name, g, r in zip(("dx", "dw", "db"), got, want):
            assert g.shape == r.shape and g.flags.c_contiguous, name
            np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-10, err_msg=name)


# ----------------------------------------------------------------------------------------
# Optional oracle: PyTorch

@given(conv_shapes(), st.integers(0, 2**32 - 1))
@example((1, 4, 6, 6, 6, 5, 5, 1, 2, 2), 0)   # two groups
@example((2, 3, 5, 5, 3, 3, 3, 2, 1, 3), 0)   # depthwise
def test_reference_matches_torch(shape, seed):
    """PyTorch's groups, with the weights laid out alike (K, C/G, R, S)."""
    torch = pytest.importorskip("torch")
    *_, stride, pad, G = unpack(shape)
    x, w, b, dy = arrays(shape, seed)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    y = torch.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=pad, groups=G)
    y.backward(torch.tensor(dy))
    for got, want in zip((conv.forward_ref(x, w, b, stride, pad, G),
                          *conv.backward_ref(x, w, dy, stride, pad, groups=G)),
                         (y, tx.grad, tw.grad, tb.grad)):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-10, atol=1e-12)
