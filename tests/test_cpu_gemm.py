"""kernels/gemm.py: the compiled a·bᵀ loop against NumPy's product in float64, and the rule
that decides when the cpu device's convs use it instead of BLAS."""
import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from kernels import gemm


@given(st.integers(0, 13), st.integers(1, 9), st.integers(0, 40), st.integers(0, 2**32 - 1))
@example(17, 6, 144, 0)  # whole 16-wide vectors of t and remainders of 4 rows and columns
@example(4, 4, 1, 0)
@example(0, 3, 5, 0)     # no rows
@example(3, 2, 0, 0)     # nothing to sum: zeros
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
def test_the_loop_is_chosen_only_where_blas_runs_narrower_vectors(avx512, libs, narrower,
                                                                  monkeypatch):
    import llvmlite.binding
    import threadpoolctl
    monkeypatch.delenv("MINIVGG_CPU_GEMM", raising=False)
    monkeypatch.setattr(llvmlite.binding, "get_host_cpu_features",
                        lambda: {"avx512f": avx512, "avx2": True})
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: libs)
    gemm.blas_is_narrower.cache_clear()
    try:
        assert gemm.blas_is_narrower() is narrower
        for forced in ("loop", "blas", "LOOP"):
            monkeypatch.setenv("MINIVGG_CPU_GEMM", forced)
            gemm.blas_is_narrower.cache_clear()
            assert gemm.blas_is_narrower() is (forced.lower() == "loop")
    finally:
        gemm.blas_is_narrower.cache_clear()


@pytest.mark.parametrize("narrower", [True, False])
def test_matmul_abt_runs_the_loop_only_for_float32_where_blas_is_narrower(narrower,
                                                                          monkeypatch):
    ran = []
    loop = gemm.matmul_abt_loop
    monkeypatch.setattr(gemm, "blas_is_narrower", lambda: narrower)
    monkeypatch.setattr(gemm, "matmul_abt_loop", lambda a, b: ran.append((a.dtype, a.shape[1])) or loop(a, b))
    rng = np.random.default_rng(2)
    for dtype in (np.float32, np.float64):
        for T in (32, 72, 96, 144, 1030):  # only 96, 144 and 1030 are long_dots
            a = rng.standard_normal((5, T)).astype(dtype)
            b = rng.standard_normal((3, T)).astype(dtype)
            got = gemm.matmul_abt(a, b)
            assert got.dtype == dtype
            np.testing.assert_allclose(got, a @ b.T, rtol=1e-4, atol=1e-4)
    assert ran == ([(np.float32, 96), (np.float32, 144), (np.float32, 1030)] if narrower
                   else [])
