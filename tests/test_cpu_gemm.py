"""kernels/gemm.py: the compiled a·bᵀ loop against NumPy's product in float64, and the rule
that decides when the cpu device's convs use it instead of BLAS; kernels/gemm_outer.py's
outer products likewise."""
import re

import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from kernels import gemm, gemm_outer


@given(st.integers(0, 13), st.integers(1, 9), st.integers(0, 40), st.integers(0, 2**32 - 1))
@example(17, 6, 144, 0)  # whole 16-wide vectors of t and remainders of 4 rows and columns
@example(4, 4, 1, 0)
@example(0, 3, 5, 0)     # no rows
@example(3, 2, 0, 0)     # nothing to sum: zeros
@example(3, 0, 5, 0)     # no columns
def test_loop_equals_the_float64_product(M, K, T, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((M, T)).astype(np.float32)
    b = rng.standard_normal((K, T)).astype(np.float32)
    got = gemm.matmul_abt_loop(a, b)
    want = a.astype(np.float64) @ b.astype(np.float64).T
    assert got.shape == (M, K) and got.dtype == np.float32
    scale = np.abs(a).astype(np.float64) @ np.abs(b).T.astype(np.float64)  # |terms| summed
    assert np.all(np.abs(got - want) <= 1e-6 * scale + 1e-30)


def test_loop_takes_strided_rows_and_lets_nan_and_inf_through():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((6, 40)).astype(np.float32)[:, ::2]  # rows not contiguous
    b = rng.standard_normal((5, 20)).astype(np.float32)
    np.testing.assert_allclose(gemm.matmul_abt_loop(a, b), a @ b.T, rtol=1e-5, atol=1e-5)
    a = np.ascontiguousarray(a)
    a[1, 3], a[4, 0] = np.nan, np.inf
    got = gemm.matmul_abt_loop(a, np.abs(b) + 1)  # b > 0: row 4 sums to +inf
    assert np.isnan(got[1]).all() and np.isposinf(got[4]).all()
    assert np.isfinite(np.delete(got, [1, 4], axis=0)).all()


def info(api, arch):
    return {"user_api": "blas", "internal_api": api, "architecture": arch}


@pytest.mark.parametrize("avx512, libs, narrower", [
    (True, [info("openblas", "Haswell")], True),     # this machine's OPENBLAS_CORETYPE
    (True, [info("openblas", "Zen")], True),
    (True, [info("openblas", "SkylakeX")], False),   # OpenBLAS's own choice here
    (True, [info("openblas", "Cooperlake")], False),
    (True, [info("mkl", None)], False),
    (True, [], False),
    (False, [info("openblas", "Haswell")], False),   # an AVX2 CPU: the loop is no wider
])
def test_the_machine_says_where_blas_runs_narrower_vectors(avx512, libs, narrower,
                                                           monkeypatch):
    import llvmlite.binding
    import threadpoolctl
    monkeypatch.delenv("MINIVGG_CPU_GEMM", raising=False)
    monkeypatch.setattr(llvmlite.binding, "get_host_cpu_features",
                        lambda: {"avx512f": avx512, "avx2": True})
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: libs)
    gemm.machine.cache_clear()
    gemm.cpu_has_avx512.cache_clear()
    try:
        assert gemm.machine() == (narrower, avx512)
        for forced in ("loop", "blas", "LOOP"):
            monkeypatch.setenv("MINIVGG_CPU_GEMM", forced)
            gemm.machine.cache_clear()
            assert gemm.machine() == (forced.lower() == "loop",) * 2
    finally:
        gemm.machine.cache_clear()
        gemm.cpu_has_avx512.cache_clear()


SHAPES = [(5, 3, 32), (5, 3, 96), (5, 3, 144), (5, 3, 1030),  # (M, K, T): long_dots from 96
          (48, 24, 4096), (48, 48, 4096), (24, 9, 4000)]      # few_long_dots: only 48 x 24
LOOPED = {(True, True): SHAPES[1:], (False, True): [(48, 24, 4096)], (False, False): []}


@pytest.mark.parametrize("machine", list(LOOPED))
def test_matmul_abt_runs_the_loop_only_for_float32_where_it_is_faster(machine, monkeypatch):
    ran, loop = [], gemm.matmul_abt_loop
    monkeypatch.setattr(gemm, "machine", lambda: machine)
    monkeypatch.setattr(gemm, "matmul_abt_loop",
                        lambda a, b: ran.append((*a.shape[:1], *b.shape)) or loop(a, b))
    rng = np.random.default_rng(2)
    for dtype in (np.float32, np.float64):
        for M, K, T in SHAPES:
            a = rng.standard_normal((M, T)).astype(dtype)
            b = rng.standard_normal((K, T)).astype(dtype)
            got = gemm.matmul_abt(a, b)
            assert got.dtype == dtype
            np.testing.assert_allclose(got, a @ b.T, rtol=1e-4, atol=1e-3)
    assert ran == LOOPED[machine]


# kernels/gemm_outer.py: the fully connected forward's outer products, both blocks on any
# CPU (the one this CPU does not use is correct there, only slower).

BLOCKS = sorted(gemm_outer.BLOCKS.values())


@given(st.sampled_from(BLOCKS), st.integers(0, 19), st.integers(1, 70), st.integers(0, 40),
       st.integers(0, 2**32 - 1))
@example((5, 16), 10, 32, 64, 0)   # whole blocks of rows and columns
@example((8, 32), 17, 33, 3, 0)    # one row and one column past whole blocks
@example((5, 16), 4, 16, 0, 0)     # nothing to sum: the bias
@example((8, 32), 0, 5, 3, 0)      # no rows
def test_outer_products_equal_the_float64_product(blocked, M, K, T, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((M, T)).astype(np.float32)
    b = rng.standard_normal((K, T)).astype(np.float32)
    bias = rng.standard_normal(K).astype(np.float32)
    got = gemm_outer.matmul_outer(a, b, bias, blocked)
    want = a.astype(np.float64) @ b.astype(np.float64).T + bias
    assert got.shape == (M, K) and got.dtype == np.float32 and got.flags.c_contiguous
    scale = np.abs(a).astype(np.float64) @ np.abs(b).T.astype(np.float64) + np.abs(bias)
    assert np.all(np.abs(got - want) <= 1e-6 * scale + 1e-30)


@pytest.mark.parametrize("blocked", BLOCKS)
def test_outer_products_take_strided_rows_and_let_nan_and_inf_through(blocked):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((9, 40)).astype(np.float32)[:, ::2]  # rows not contiguous
    b = rng.standard_normal((20, 20)).astype(np.float32)
    bias = np.zeros(20, np.float32)
    np.testing.assert_allclose(gemm_outer.matmul_outer(a, b, bias, blocked), a @ b.T,
                               rtol=1e-5, atol=1e-5)
    a = np.ascontiguousarray(a)
    a[1, 3], a[8, 0] = np.nan, np.inf
    got = gemm_outer.matmul_outer(a, np.abs(b) + 1, bias, blocked)  # b > 0: row 8 is +inf
    assert np.isnan(got[1]).all() and np.isposinf(got[8]).all()
    assert np.isfinite(np.delete(got, [1, 8], axis=0)).all()


def test_the_outer_product_gemm_is_compiled_to_vector_multiply_adds(monkeypatch):
    """As outer3x3's (tests/test_cpu_fast.py): its scalar sums become vector registers only
    through LLVM's SLP vectorizer. Both variants compile under it, and compiled so afresh
    the kernel multiply-adds packed vectors, also when a NUMBA_ environment variable
    changed just before (Numba then re-reads its settings as it compiles: this test failed
    once in a full run, after another test had changed one, until slp_vectorizer re-read
    them first)."""
    monkeypatch.setenv("NUMBA_MINIVGG_TEST_CHANGE", str(np.random.default_rng().random()))
    from llvmlite import binding as llvm

    from kernels import threads
    if not {"avx2", "fma"} <= {k for k, v in llvm.get_host_cpu_features().items() if v}:
        pytest.skip("no AVX2 and FMA on this CPU")
    kernel = gemm_outer.written_kernel(*gemm_outer.block())
    for variant in (kernel.one, kernel.many):
        assert variant.compile.__qualname__.endswith("compile_with_slp"), variant
    fresh = threads.loops(slp=True, fastmath={"contract"})(kernel.one.py_func)
    a, b = np.ones((9, 3), np.float32), np.ones((32, 3), np.float32)
    out = np.empty((9, 32), np.float32)
    fresh.one(a, b, np.zeros(32, np.float32), out)
    np.testing.assert_array_equal(out, 3.0)
    assembly = "".join(fresh.one.inspect_asm().values())
    assert re.search(r"vfmadd\d{3}ps\s+%[yz]mm", assembly)
