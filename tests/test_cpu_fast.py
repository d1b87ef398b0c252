"""The cpu device's fast paths (conv, max-pool, ReLU) against the references they sit
beside: the same numbers, on shapes that take every branch of the fast code (the direct
3x3 loops and both conv unrollings, stride 1 and not, padding up to and past R-1, ties in
max-pooling)."""
import math
import os
import re
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import assume, example, given, strategies as st
from numba import njit

from kernels import (conv, gemm, gemm_outer, linear, pool, relu, softmax_xent,
                     threads as cpu_threads)
from kernels.conv import fast as conv_fast, outer3x3 as conv_outer
from minivgg import backend, ops
from minivgg.tape import Tensor

from helpers import on_threads


@st.composite
def conv_cases(draw):
    """(N, C, H, W, K, R, S, stride, pad): channels from 1 to 12 against inputs from 1 to
    9 pixels wide, so both unrollings ("rows" when C <= Q, "nhwc" otherwise) come up, and
    direct3x3.py's loops (every 3x3 stride-1 conv: its "rows" loops and its NHWC ones)."""
    R, S = draw(st.sampled_from([1, 2, 3, 5])), draw(st.sampled_from([1, 3, 5]))
    stride, pad = draw(st.sampled_from([1, 1, 2, 4])), draw(st.integers(0, 3))
    H = draw(st.integers(max(1, R - 2 * pad), max(1, R - 2 * pad) + 6))
    W = draw(st.integers(max(1, S - 2 * pad), max(1, S - 2 * pad) + 6))
    return (draw(st.integers(1, 3)), draw(st.integers(1, 12)), H, W, draw(st.integers(1, 5)),
            R, S, stride, pad)


def conv_arrays(case, seed, dtype=np.float64):
    N, C, H, W, K, R, S, stride, pad = case
    P, Q = conv.output_size(H, W, R, S, stride, pad)
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype)
            for s in [(N, C, H, W), (K, C, R, S), (K,), (N, K, P, Q)]]


@given(conv_cases(), st.integers(0, 2**32 - 1), st.sampled_from([None, 1, 2000]),
       st.sampled_from([1, 2, 3]))
@example((2, 3, 8, 8, 4, 3, 3, 1, 1), 0, None, 1)    # VGG's 3x3 pad 1, few channels: direct
@example((2, 5, 4, 7, 5, 3, 3, 1, 2), 0, None, 1)    # direct: K and C not whole blocks, pad 2
@example((2, 3, 8, 8, 4, 5, 5, 1, 2), 0, None, 1)    # few channels, 5x5: "rows"
@example((3, 6, 3, 5, 4, 1, 1, 1, 0), 0, None, 1)    # 1x1: a GEMM an image, nothing unrolled
@example((2, 16, 4, 4, 5, 3, 3, 1, 1), 0, None, 1)   # more channels than columns: direct NHWC
@example((3, 16, 6, 6, 5, 5, 5, 1, 2), 0, None, 1)   # the same, 5x5: "nhwc"
@example((1, 3, 13, 13, 2, 11, 11, 4, 2), 0, None, 1)  # AlexNet's first layer, scaled down
@example((1, 2, 3, 3, 2, 3, 3, 1, 3), 0, None, 1)    # pad > R-1: dx by the reference's col2im
@example((3, 3, 8, 8, 4, 3, 3, 1, 1), 0, 1, 1)       # one image per chunk
@example((3, 16, 4, 4, 5, 3, 3, 1, 1), 0, 15000, 1)  # "nhwc" dw: chunks of one image and two
@example((3, 5, 4, 7, 5, 3, 3, 1, 2), 0, None, 2)    # direct "rows": images 1 + 2, dw 2 blocks
@example((3, 16, 4, 4, 5, 3, 3, 1, 1), 0, 15000, 2)  # direct NHWC: pixel blocks shared;
# dw on column copies (4 columns, 2 threads), as below at 6 columns (pad 2, 3 threads) and 5
@example((3, 12, 4, 4, 9, 3, 3, 1, 2), 0, None, 3)
@example((2, 12, 6, 7, 5, 3, 3, 1, 0), 0, None, 2)
@example((3, 3, 8, 8, 4, 5, 5, 1, 2), 0, None, 3)    # "rows" 5x5 (dw: the loop if BLAS narrower)
@example((3, 16, 6, 6, 9, 5, 5, 1, 2), 0, None, 3)   # "nhwc" 5x5 (the loop if BLAS narrower)
def test_conv_fast_equals_the_reference(case, seed, chunk_bytes, threads):
    """chunk_bytes: image_chunks' budget (None: the real one, a whole small batch; 1: an
    image at a time; 2000: one image or a few, as the shapes fall). threads: the compiled
    loops' outer loops shared among that many (kernels/threads.py; at most one a core)."""
    with chunk_budget(chunk_bytes), on_threads(threads):
        check_conv_fast(case, seed)


@contextmanager
def chunk_budget(nbytes):
    real = conv_fast.CHUNK_BYTES
    conv_fast.CHUNK_BYTES = real if nbytes is None else nbytes
    try:
        yield
    finally:
        conv_fast.CHUNK_BYTES = real


def test_chunks_cover_the_batch_in_order_as_evenly_as_they_can():
    assert conv_fast.image_chunks(3, 16, 4, 4, 3, 3) == [slice(0, 3)]
    with chunk_budget(60000):  # 4 * 16 * 9 * 7 * 7 = 28224 bytes an image: 2 at most
        assert conv_fast.image_chunks(3, 16, 4, 4, 3, 3) == [slice(0, 1), slice(1, 3)]
        assert conv_fast.image_chunks(3, 16, 4, 4, 3, 3, rows=False) == [slice(0, 3)]
    with chunk_budget(15000):  # "nhwc" gets 4x the budget
        assert conv_fast.image_chunks(3, 16, 4, 4, 3, 3, rows=False) == [slice(0, 1),
                                                                         slice(1, 3)]
    with chunk_budget(1):
        assert conv_fast.image_chunks(2, 1, 1, 1, 1, 1) == [slice(0, 1), slice(1, 2)]
    with chunk_budget(48):  # 16 bytes an image, 3 at most: 5 as 2 + 3, 7 as 2 + 2 + 3
        assert conv_fast.image_chunks(5, 1, 1, 1, 1, 1) == [slice(0, 2), slice(2, 5)]
        assert conv_fast.image_chunks(7, 1, 1, 1, 1, 1) == [slice(0, 2), slice(2, 4),
                                                             slice(4, 7)]
    assert conv_fast.image_chunks(0, 1, 1, 1, 1, 1) == [slice(0, 0)]  # an empty batch


def test_conv_fast_takes_an_empty_batch():
    x, w, b, dy = conv_arrays((1, 3, 5, 5, 4, 3, 3, 1, 1), seed=0)
    x, dy = x[:0], dy[:0]
    y, _ = conv.forward_fast(x, w, b, 1, 1)
    dx, dw, db = conv.backward_fast(x, w, dy, 1, 1)
    assert y.shape == (0, 4, 5, 5) and dx.shape == x.shape
    assert not dw.any() and not db.any() and dw.shape == w.shape


def test_forward_keeps_the_unrolling_only_of_a_batch_in_one_chunk():
    x, w, b, _ = conv_arrays((3, 16, 4, 4, 5, 5, 5, 1, 2), seed=0)  # 5x5: "nhwc"
    cols, Wp = conv_fast.unroll_fast(x, 5, 5, 1, 2)
    _, (kept, kept_wp) = conv.forward_fast(x, w, b, 1, 2)
    assert kept_wp == Wp and np.array_equal(kept, cols)
    with chunk_budget(70000):  # "nhwc" gets 4x: 2 of 129,600 bytes an image, two chunks
        assert conv.forward_fast(x, w, b, 1, 2)[1] is None  # backward unrolls each again


def check_conv_fast(case, seed):
    x, w, b, dy = conv_arrays(case, seed)
    stride, pad = case[-2:]
    y, unrolled = conv.forward_fast(x, w, b, stride, pad)
    np.testing.assert_allclose(y, conv.forward_ref(x, w, b, stride, pad), rtol=1e-10,
                               atol=1e-10)
    want = conv.backward_ref(x, w, dy, stride, pad)
    for given_unrolled in (unrolled, None):
        got = conv.backward_fast(x, w, dy, stride, pad, unrolled=given_unrolled)
        for name, g, r in zip(("dx", "dw", "db"), got, want):
            assert g.shape == r.shape and g.flags.c_contiguous, name
            np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-10, err_msg=name)


@given(conv_cases(), st.integers(0, 2**32 - 1), st.booleans())
@example((3, 16, 4, 4, 5, 3, 3, 1, 1), 0, True)   # direct NHWC: 48 pixels, K = 5 (a remainder)
@example((3, 16, 6, 6, 5, 5, 5, 1, 2), 0, True)   # "nhwc" 5x5: 108 rows, the loop (T = 400)
@example((2, 3, 30, 30, 4, 5, 5, 1, 2), 0, True)  # "rows": dw by the loop (T = 2044 >= 1024)
@example((2, 8, 30, 30, 9, 3, 3, 1, 1), 0, True)  # direct: 3 blocks of K, dw sums 2,048 long
@example((2, 16, 4, 4, 5, 1, 1, 1, 0), 0, True)    # a 1x1 conv: a GEMM an image
def test_conv_fast_in_float32_through_either_gemm(case, seed, loop):
    """kernels/gemm.py's loop or NumPy's BLAS (gemm.machine() decides on a machine; both
    are forced here), as the cpu device runs them: float32 against a float64 reference."""
    x, w, b, dy = conv_arrays(case, seed, np.float32)
    stride, pad = case[-2:]
    with gemm_forced(loop):
        y, unrolled = conv.forward_fast(x, w, b, stride, pad)
        got = conv.backward_fast(x, w, dy, stride, pad, unrolled=unrolled)
    wide = [a.astype(np.float64) for a in (x, w, b, dy)]
    np.testing.assert_allclose(y, conv.forward_ref(*wide[:3], stride, pad), rtol=1e-4,
                               atol=1e-4)
    for name, g, r in zip(("dx", "dw", "db"), got, conv.backward_ref(*wide[:2], wide[3],
                                                                      stride, pad)):
        assert g.dtype == np.float32, name
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4, err_msg=name)


@st.composite
def deep_conv_cases(draw):
    """((pixels, lanes), (N, C, H, W, K, 3, 3, 1, pad)): one of outer3x3.py's blocks,
    whichever this CPU's, and a conv that it takes: more channels than output columns, K
    at least the block's lanes. Always more than one block on both of its axes: K past one
    block of lanes (the last block partial, or whole at twice the lanes), and more than 8
    output pixels (flat over images), mostly not a multiple of the block's pixels. C up to
    40, so that dx (a conv to C channels) comes here too."""
    blocked = draw(st.sampled_from(sorted(conv_outer.BLOCKS.values())))
    lanes = blocked[1]
    pad = draw(st.integers(0, 2))
    H, W = draw(st.integers(max(1, 3 - 2 * pad), 5)), draw(st.integers(max(1, 3 - 2 * pad), 4))
    Q = W + 2 * pad - 2
    C = draw(st.one_of(st.integers(Q + 1, Q + 4), st.integers(lanes, 40)))
    N = draw(st.integers(1, 3))
    K = draw(st.sampled_from([lanes + 1, lanes + 15, 2 * lanes, 2 * lanes + 6]))
    assume(N * (H + 2 * pad - 2) * Q > 8)
    return blocked, (N, C, H, W, K, 3, 3, 1, pad)


@contextmanager
def outer_block(blocked):
    """outer3x3.py's kernel in blocks of `blocked` (pixels, lanes), whatever this CPU's,
    then as before."""
    real = conv_outer.block
    conv_outer.block = conv_fast.block = lambda: blocked
    try:
        yield
    finally:
        conv_outer.block = conv_fast.block = real


@given(deep_conv_cases(), st.integers(0, 2**32 - 1), st.sampled_from([1, 2, 3]),
       st.sampled_from([np.float32, np.float64]))
@example(((8, 32), (3, 5, 4, 4, 33, 3, 3, 1, 1)), 0, 1, np.float32)  # 48 pixels: 6 blocks
@example(((8, 32), (1, 32, 3, 4, 64, 3, 3, 1, 1)), 0, 2, np.float64)  # dx to 32 channels too
@example(((8, 32), (2, 7, 5, 3, 70, 3, 3, 1, 2)), 0, 3, np.float32)  # 42 pixels, 3 blocks of K
@example(((5, 16), (3, 5, 4, 4, 17, 3, 3, 1, 1)), 0, 1, np.float32)  # 48 pixels: 9 blocks + 3
@example(((5, 16), (1, 16, 3, 4, 38, 3, 3, 1, 1)), 0, 2, np.float64)  # dx to 16 channels too
def test_outer_products_equal_the_reference(case, seed, threads, dtype):
    """outer3x3.py's kernels (forward, and dx where C fills the block's lanes), reached
    through fast.py, in both blocks, on 1 to 3 threads, in float32 and float64; the block
    this CPU does not run in float32 on one thread only: each kernel compiles once per
    dtype and thread variant (a compile of the 8 x 32 one takes about 12 s of the suite on
    an AVX2 CPU), and the variants differ only in the prange over pixel blocks, which both
    blocks' kernels share (kernel_source)."""
    blocked, case = case
    if blocked != conv_outer.block():
        dtype, threads = np.float32, 1
    x, w, b, dy = conv_arrays(case, seed, dtype)
    pad = case[-1]
    tol = 1e-4 if dtype == np.float32 else 1e-10
    wide = [a.astype(np.float64) for a in (x, w, b, dy)]
    with on_threads(threads), outer_block(blocked):
        y, _ = conv.forward_fast(x, w, b, 1, pad)
        dx = conv.backward_fast(x, w, dy, 1, pad)[0]
    assert y.dtype == dx.dtype == dtype and y.flags.c_contiguous
    np.testing.assert_allclose(y, conv.forward_ref(*wide[:3], 1, pad), rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, conv.backward_ref(*wide[:2], wide[3], 1, pad)[0], rtol=tol,
                               atol=tol)


@pytest.mark.parametrize("avx512, blocked, at_16", [
    (True, (8, 32), "conv3x3_direct_nhwc"),  # 16 output channels: half of 32 lanes idle
    (False, (5, 16), "conv3x3_outer"),
])
def test_the_outer_products_block_fits_the_cpus_vector_registers(monkeypatch, avx512,
                                                                  blocked, at_16):
    """AVX-512's 32 registers of 16 floats hold 8 x 32 sums; AVX2's 16 of 8, 5 x 16. And
    fast.py sends a deep conv to the outer products once K fills the block's lanes."""
    monkeypatch.setattr(conv_outer, "cpu_has_avx512", lambda: avx512)
    assert conv_outer.block() == blocked
    assert conv_fast.direct_forward(False, 16).__name__ == at_16
    assert conv_fast.direct_forward(False, 32) is conv_outer.conv3x3_outer
    assert conv_fast.direct_forward(False, 15).__name__ == "conv3x3_direct_nhwc"


@pytest.mark.parametrize("writer, blocked", [(writer, blocked)
                                             for writer in (conv_outer, gemm_outer)
                                             for blocked in sorted(conv_outer.BLOCKS.values())])
def test_the_outer_product_kernels_are_the_ones_their_writers_write(writer, blocked):
    """kernels/conv/outer3x3_{pixels}x{lanes}.py and kernels/gemm_outer_{rows}x{lanes}.py
    are written by tools/write_kernels.py from outer3x3's and gemm_outer's
    kernel_source(); an edit to a file or its writer alone fails here."""
    path = os.path.join(os.path.dirname(writer.__file__), writer.written_file(*blocked) + ".py")
    with open(path) as f:
        assert f.read() == writer.kernel_source(*blocked), (
            f"{path} is not what kernel_source() writes: run python tools/write_kernels.py")


def cpu_flags():
    """The features LLVM compiles for on this CPU (Numba's target), those it has."""
    from llvmlite import binding as llvm
    return {name for name, has in llvm.get_host_cpu_features().items() if has}


@pytest.mark.skipif(not {"avx2", "fma"} <= cpu_flags(), reason="no AVX2 and FMA on this CPU")
def test_the_outer_product_kernel_is_compiled_to_vector_multiply_adds():
    """Its scalar sums become vector registers only through LLVM's SLP vectorizer
    (threads.slp_vectorizer): without it the kernel runs scalar multiply-adds (vfmadd231ss),
    5-10x slower. Both variants of the kernel this CPU runs compile under it; and compiled
    so afresh (a compile loaded from Numba's cache keeps no assembly to read), the kernel
    multiply-adds packed vectors."""
    blocked = conv_outer.block()
    kernel = conv_outer.written_kernel(*blocked)
    for variant in (kernel.one, kernel.many):
        assert variant.compile.__qualname__.endswith("compile_with_slp"), variant
    fresh = cpu_threads.loops(slp=True, fastmath={"contract"})(kernel.one.py_func)
    real = conv_outer.written_kernel
    conv_outer.written_kernel = lambda pixels, lanes: fresh
    try:
        x, w, b, _ = conv_arrays((2, 16, 4, 4, 32, 3, 3, 1, 1), seed=0, dtype=np.float32)
        np.testing.assert_allclose(conv_outer.conv3x3_outer(x, w, b, 1, blocked),
                                   conv.forward_ref(x, w, b, 1, 1), rtol=1e-4, atol=1e-4)
    finally:
        conv_outer.written_kernel = real
    assembly = "".join(fresh.one.inspect_asm().values())
    assert re.search(r"vfmadd\d{3}ps\s+%[yz]mm", assembly)


@contextmanager
def gemm_forced(loop):
    real = gemm.machine
    gemm.machine = lambda: (loop, loop)
    try:
        yield
    finally:
        gemm.machine = real


@pytest.mark.parametrize("threads, narrower", [(1, False), (2, False), (1, True)])
def test_conv_fast_takes_each_path_and_keeps_float32(monkeypatch, threads, narrower):
    """8 output columns: a 3x3 conv goes to direct3x3.py, by its "rows" loops with 3
    channels, by its NHWC dot products with 16 (to outer3x3.py's outer products with 32
    output channels; dw then through the "nhwc" unrolling on
    one thread where BLAS is not narrower than the loops, else by direct3x3.py's dw on the
    padded grid: direct_dw; at 4 columns, on more threads, by its dw on column copies); a
    5x5 conv to the "rows" unrolling (Wp = 12) or the "nhwc" one (Wp = 0); a 1x1 conv to
    one GEMM an image. Only the unrolling paths hand backward an unrolled x."""
    monkeypatch.setattr(conv_fast, "machine", lambda: (narrower, True))
    monkeypatch.setattr(conv_fast, "block", lambda: (8, 32))  # AVX-512's, on any CPU
    called = []
    for name in ("conv3x3_direct", "conv3x3_direct_nhwc", "conv3x3_outer",
                 "weight_gradient3x3_direct", "weight_gradient3x3_columns"):
        real = getattr(conv_fast, name)
        monkeypatch.setattr(conv_fast, name,
                            lambda *a, real=real, name=name: called.append(name) or real(*a))
    rows_loops = ["conv3x3_direct", "weight_gradient3x3_direct"]
    nhwc_loops = (["conv3x3_direct_nhwc"]
                  + ["weight_gradient3x3_direct"] * (threads > 1 or narrower))
    at_4 = ["conv3x3_direct_nhwc"] + ["weight_gradient3x3_columns"] * (threads > 1)
    outer = ["conv3x3_outer"] + nhwc_loops[1:]  # 32 output channels
    for C, side, R, Wp, loops, K in ((3, 8, 3, None, rows_loops, 4), (3, 8, 5, 12, [], 4),
                                     (16, 8, 3, None, nhwc_loops, 4), (16, 8, 3, None, outer, 32),
                                     (16, 4, 3, None, at_4, 4), (16, 8, 5, 0, [], 4),
                                     (16, 8, 1, None, [], 4)):
        x, w, b, dy = conv_arrays((2, C, side, side, K, R, R, 1, R // 2), seed=C,
                                  dtype=np.float32)
        monkeypatch.setattr(cpu_threads, "_threads", threads)  # as set_threads leaves it
        y, unrolled = conv.forward_fast(x, w, b, 1, R // 2)
        assert y.dtype == np.float32 and y.base is None  # owns its memory, as the tape's
        # byte count expects (lessons/07: views are not counted)
        assert (unrolled is None) if Wp is None else (unrolled[1] == Wp and
                                                      unrolled[0].dtype == np.float32)
        dx, dw, db = conv.backward_fast(x, w, dy, 1, R // 2, need_dx=False)
        assert dx is None and dw.dtype == db.dtype == np.float32
        np.testing.assert_allclose(dw, conv.backward_ref(x, w, dy, 1, R // 2)[1], rtol=1e-4,
                                   atol=1e-4)
        assert called == loops, (C, R)
        called.clear()


@st.composite
def pool_cases(draw):
    """(shape, window, stride, ceil_mode, pad): windows side by side (VGG's), overlapping
    (AlexNet's), padded (GoogLeNet's) or clipped by ceil mode, so both compiled loops run;
    sides that leave a remainder or not."""
    window = draw(st.sampled_from([2, 2, 3]))
    stride = draw(st.sampled_from([window, window, window - 1]))
    pad = draw(st.sampled_from([0, 0, window - 1]))
    H, W = draw(st.integers(window, 4 * window + 1)), draw(st.integers(window, 4 * window + 1))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), H, W)
    return shape, window, stride, draw(st.booleans()), pad


@given(pool_cases(), st.integers(0, 2**32 - 1), st.booleans())
@example(((1, 1, 2, 2), 2, 2, False, 0), 0, True)
@example(((2, 3, 7, 7), 3, 2, False, 0), 1, True)  # overlapping windows share maxima
@example(((2, 2, 7, 7), 3, 1, True, 1), 2, True)   # GoogLeNet's padded 3x3/1
@example(((2, 2, 8, 8), 3, 2, True, 0), 3, False)  # a last window clipped (ceil mode)
def test_pool_fast_equals_the_reference_ties_included(case, seed, relu_first):
    shape, window, stride, ceil_mode, pad = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    if relu_first:  # ReLU's zeros make ties, whose gradient goes to the first maximum only
        x = np.maximum(x, 0)
    x[..., :2, :2] = 0.5  # at least one window tied throughout
    y, arg = pool.forward_fast(x, window, stride, ceil_mode, pad)
    np.testing.assert_array_equal(y, pool.forward_ref(x, window, stride, ceil_mode, pad))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_allclose(pool.backward_fast(arg, dy, x.shape),  # overlapping windows
                               pool.backward_ref(x, dy, window, stride, ceil_mode, pad=pad),
                               rtol=1e-6, atol=1e-6)  # add in another order


def test_pool_fast_takes_float64_and_strided_inputs():
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8))[:, ::2]  # not contiguous
    for window, stride, pad in [(2, 2, 0), (3, 1, 1)]:  # both loops
        y, arg = pool.forward_fast(x, window, stride, pad=pad)
        assert y.dtype == np.float64
        np.testing.assert_array_equal(y, pool.forward_ref(x, window, stride, pad=pad))
        dy = np.ones_like(y)
        np.testing.assert_allclose(pool.backward_fast(arg, dy, x.shape),
                                   pool.backward_ref(x, dy, window, stride, pad=pad))


def test_the_unrolled_pool_loop_is_taken_only_where_every_window_lies_inside_x():
    x = np.zeros((1, 1, 7, 7), np.float32)
    assert pool.windows_inside(x, 3, 2)                      # AlexNet's overlapping 3x3/2
    assert not pool.windows_inside(x, 2, 2, ceil_mode=True)  # a clipped last window
    assert not pool.windows_inside(x, 3, 1, pad=1)           # GoogLeNet's padded 3x3/1
    assert not pool.windows_inside(np.zeros((1, 1, 8, 8)), 2, 6, pad=1)  # padded, though
    # its last window ends inside x: the first one starts in the padding
    assert pool.windows_inside(x, 2, 2)                      # floor mode drops the last row


@pytest.mark.parametrize("window, stride, ceil_mode, pad", [
    (2, 2, False, 0), (3, 2, False, 0),  # every window inside x: the unrolled loop
    (3, 2, True, 0), (3, 1, False, 1)])  # a clipped, a padded window: the clipping loop
def test_cpu_max_pool_op_equals_the_reference_on_both_loops(window, stride, ceil_mode, pad):
    backend.set_device("cpu")
    x = np.random.default_rng(0).standard_normal((2, 2, 8, 8)).astype(np.float32)
    x[:, :, 2:5, 2:5] = 1.0  # ties, in overlapping windows too
    t = Tensor(x, requires_grad=True)
    out = ops.max_pool2d(t, window, stride, ceil_mode, pad)
    np.testing.assert_array_equal(out.data, pool.forward_ref(x, window, stride, ceil_mode, pad))
    dy = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
    out.backward(dy)
    np.testing.assert_allclose(t.grad, pool.backward_ref(x, dy, window, stride, ceil_mode,
                                                         pad=pad), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_linear_fast_equals_the_reference_by_the_measured_route(threads, monkeypatch):
    """gemm_outer's outer products from 8 rows, up to 2,048 inputs and from one strip of
    outputs (the block's lanes: 16 or 32) up, on any number of threads and with the same y
    on each; elsewhere gemm's dot-product blocks on more threads and BLAS on one (from 8
    rows), BLAS (under 8, and in float64)."""
    calls = []
    monkeypatch.setattr(linear, "matmul_outer", lambda a, b, bias: calls.append(
        ("outer", a.shape)) or gemm_outer.matmul_outer(a, b, bias))
    monkeypatch.setattr(linear, "matmul_abt_loop", lambda a, b: calls.append(
        ("dots", a.shape)) or gemm.matmul_abt_loop(a, b))
    rng = np.random.default_rng(threads)
    for N, I, O, dtype in [(7, 5, 40, np.float32), (8, 64, 128, np.float32),
                           (13, 130, 10, np.float32), (64, 17, 35, np.float32),
                           (9, 2048, 32, np.float32), (9, 2049, 32, np.float32),
                           (9, 6, 40, np.float64)]:
        x, w, b = (rng.standard_normal(s).astype(dtype) for s in [(N, I), (O, I), (O,)])
        with on_threads(threads):
            got = linear.forward_fast(x, w, b)
            shared = cpu_threads.threads() > 1  # (at most one a core)
        assert got.dtype == dtype and got.shape == (N, O)
        want = linear.forward_ref(*(a.astype(np.float64) for a in (x, w, b)))
        scale = np.abs(x).astype(np.float64) @ np.abs(w).T + np.abs(b)  # |terms| summed
        assert np.all(np.abs(got - want) <= 1e-5 * scale)
        if calls and calls[-1] == ("outer", (N, I)):
            with on_threads(1):
                np.testing.assert_array_equal(linear.forward_fast(x, w, b), got)
            calls.pop()
    outer = [("outer", s) for s in [(8, 64), (64, 17), (9, 2048)]]
    dots = [("dots", s) for s in [(13, 130), (9, 2049)]]
    assert calls == (outer[:1] + dots[:1] + outer[1:] + dots[1:] if shared else outer)


@pytest.mark.parametrize("threads", [1, 2])
def test_relu_fast_equals_the_reference(threads):
    """(2, 20000): above relu.GRAIN, shared among the threads when there are two."""
    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, -1e-45])
    for shape, dtype in [((3, 4, 5), np.float32), ((7,), np.float64), ((2, 50), np.float32),
                         ((0, 3), np.float32), ((2, 20000), np.float32)]:
        x = rng.standard_normal(shape).astype(dtype)
        x.reshape(-1)[:len(special)] = special[:x.size]  # NaN stays NaN; 0 passes nothing
        for x in (x, x.T):  # contiguous and not
            with on_threads(threads):
                y = relu.forward_fast(x)
            assert y.dtype == dtype and y.shape == x.shape
            np.testing.assert_array_equal(y, relu.forward_ref(x))
            dy = rng.standard_normal(x.shape).astype(dtype)
            if dy.size:  # where y <= 0 no NaN passes either
                dy.reshape(-1)[-3:] = [np.nan, np.inf, 2.0]
            with on_threads(threads):
                got = relu.backward_fast(y, dy)
            assert got.dtype == dtype and got.shape == x.shape
            np.testing.assert_array_equal(got, relu.backward_ref(y, dy))


@given(st.integers(1, 9), st.integers(1, 12), st.sampled_from([1.0, 30.0, 1e4]),
       st.sampled_from([np.float32, np.float64]), st.integers(0, 2**32 - 1))
def test_softmax_xent_fast_equals_the_reference(N, M, spread, dtype, seed):
    """spread 1e4: every class but the top one underflows to probability 0."""
    rng = np.random.default_rng(seed)
    logits = (spread * rng.standard_normal((N, M))).astype(dtype)
    labels = rng.integers(0, M, N).astype(np.int32)
    loss, probs = softmax_xent.forward_fast(logits, labels)
    want_loss, want_probs = softmax_xent.forward_ref(logits, labels)
    assert loss.shape == (1,) and loss.dtype == probs.dtype == dtype
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(probs, want_probs, rtol=1e-5, atol=1e-7)


@njit
def _exp_each(v):
    out = np.empty_like(v)
    for i in range(v.size):
        out[i] = softmax_xent.exp_nonpositive(v[i])
    return out


def test_the_loss_exp_is_float32s_exp_to_within_an_ulp():
    """The cpu loss's vectorised exp against float64's, on every 1399th float32 in
    [EXP_LOWEST, 0] (800,000 of them, from the subnormals up through every binade)."""
    top = (-softmax_xent.EXP_LOWEST).view(np.uint32)
    v = -np.arange(0, top + 1, 1399, dtype=np.uint32).view(np.float32)
    got, want = _exp_each(v), np.exp(v.astype(np.float64))
    assert got.dtype == np.float32 and got[0] == 1.0  # exp(-0)
    ulp = np.spacing(want.astype(np.float32)).astype(np.float64)
    assert (np.abs(got - want) / ulp).max() <= 1.0
    below = np.nextafter(softmax_xent.EXP_LOWEST, np.float32(-100))
    edges = np.array([below, -100, -np.inf, np.nan], np.float32)
    np.testing.assert_array_equal(_exp_each(edges), [0, 0, 0, np.nan])
    wide = -np.linspace(0, 700, 1001)  # float64: the C library's exp, unchanged
    np.testing.assert_array_equal(_exp_each(wide), [math.exp(v) for v in wide])


def test_softmax_xent_fast_with_no_rows_nan_and_labels_out_of_range():
    loss, probs = softmax_xent.forward_fast(np.zeros((0, 4), np.float32), np.zeros(0, np.int32))
    assert probs.shape == (0, 4) and np.isnan(loss[0])  # the mean of nothing
    logits = np.array([[0.0, np.nan, 1.0], [1.0, 2.0, 3.0]], np.float32)
    loss, probs = softmax_xent.forward_fast(logits, np.array([0, 2], np.int32))
    assert np.isnan(loss[0]) and np.isnan(probs[0]).all() and np.isfinite(probs[1]).all()
    logits = np.zeros((2, 3), np.float32)
    for bad in (3, -1, 1000):  # the op refuses these first; here they give NaN, no stray read
        assert np.isnan(softmax_xent.forward_fast(logits, np.array([0, bad], np.int32))[0][0])


@pytest.mark.parametrize("requires_grad", [True, False])
def test_cpu_conv_op_runs_the_fast_path_with_and_without_the_input_gradient(requires_grad,
                                                                           monkeypatch):
    """...and skips dx when nothing needs it (the first layer: half its backward)."""
    backend.set_device("cpu")
    asked, backward_fast = [], conv.backward_fast
    monkeypatch.setattr(conv, "backward_fast",
                        lambda *a, **k: asked.append(k["need_dx"]) or backward_fast(*a, **k))
    x, w, b, dy = conv_arrays((2, 3, 6, 6, 4, 3, 3, 1, 1), seed=5, dtype=np.float32)
    tx = Tensor(x, requires_grad=requires_grad)
    tw, tb = Tensor(w, requires_grad=True), Tensor(b, requires_grad=True)
    out = ops.conv2d(tx, tw, tb, 1, 1)
    out.backward(dy)
    dx, dw, db = conv.backward_ref(x, w, dy, 1, 1)
    np.testing.assert_allclose(tw.grad, dw, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tb.grad, db, rtol=1e-4, atol=1e-4)
    if requires_grad:
        np.testing.assert_allclose(tx.grad, dx, rtol=1e-4, atol=1e-4)
    else:
        assert tx.grad is None
    assert asked == [requires_grad]
