"""kernels/threads.py: the cpu device's thread count. That every conv path gives the
reference's numbers on 1, 2 and 3 threads is test_cpu_fast.py's (its `threads`
argument); here, that a loop runs its threads' variant, and what the count leaves set."""
import numpy as np
import pytest
from numba import get_thread_id, prange

from kernels import threads


@pytest.fixture
def restore_threads():
    before = threads.threads()
    yield
    threads.set_threads(before)


@threads.loops(cache=False)
def _who_ran(out):
    """out[i] = the Numba thread that ran iteration i."""
    for i in prange(out.size):
        out[i] = get_thread_id()


def test_a_loop_runs_on_one_thread_until_told_otherwise(restore_threads):
    threads.set_threads(1)
    ids = np.full(64, -1, np.int64)
    _who_ran(ids)
    assert set(ids) == {0}
    if threads.cores() >= 2:  # one a core: 2 threads share the 64 iterations
        assert threads.set_threads(2) == 2
        _who_ran(ids)
        assert set(ids) == {0, 1}


def test_set_threads_counts_cores_for_0_and_refuses_fewer(restore_threads):
    assert threads.set_threads(0) == min(threads.cores(), _numba_threads()) == threads.threads()
    with pytest.raises(ValueError, match="1 or more"):
        threads.set_threads(-1)


def _numba_threads():
    import numba
    return numba.config.NUMBA_NUM_THREADS


def test_numpys_blas_runs_one_thread_a_call_once_the_loops_own_the_threads(restore_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(limits=None):  # the process's limits, back after
        threads.set_threads(2)
        blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
        assert blas and all(i["num_threads"] == 1 for i in blas)
    assert threads.layer() in ("omp", "tbb", "workqueue")


def test_the_two_compiles_of_a_loop_keep_separate_caches():
    """Numba names a function's cache files by its name, not its options: under one name,
    the one-thread and the parallel compile would load each other's cached code."""
    from kernels.conv import direct3x3
    one, many = direct3x3._conv3x3_rows.one, direct3x3._conv3x3_rows.many
    assert one.py_func.__qualname__ != many.py_func.__qualname__
    assert one.py_func.__code__ is many.py_func.__code__  # the same loop, though
    assert many.targetoptions.get("parallel") and not one.targetoptions.get("parallel")
