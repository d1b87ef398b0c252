"""kernels/split.py: the cpu device's batch split over threads. That the split convs give
the reference's numbers is test_cpu_fast.py's (its `threads` argument); here, that the
parts cover the batch, run on threads of their own, and leave the caller as it was."""
import os
import threading

import pytest
from hypothesis import given, strategies as st

from kernels import split

# the cores this process may use, as pytest started it (before any split could pin it)
STARTING_CORES = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None


@pytest.fixture
def two_threads():
    before = split.threads()
    split.set_threads(2)
    yield
    split.set_threads(before)


@given(st.integers(0, 200), st.integers(1, 9))
def test_image_parts_cover_the_batch_in_order_as_evenly_as_they_can(N, n):
    parts = split.image_parts(N, n)
    assert parts[0].start == 0 and parts[-1].stop == N
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))  # in order, no gap
    sizes = [p.stop - p.start for p in parts]
    assert len(parts) == max(1, min(n, N)) and max(sizes) - min(sizes) <= 1
    assert all(sizes) or N == 0  # no empty part but the one of an empty batch


def test_the_parts_run_at_once_on_their_own_threads(two_threads):
    """Each part waits until the other has started: run one after the other, they would
    never both start (the wait times out and says so)."""
    started = threading.Barrier(2, timeout=10)
    ran = {}

    def part(images):
        started.wait()
        ran[images.start] = threading.current_thread().name
        return images.stop - images.start
    assert split.over_images(part, 5, split.MIN_MACS) == [2, 3]  # in the parts' order
    assert ran[0] == threading.current_thread().name  # the first part: the caller's
    assert ran[2].startswith("minivgg-cpu")


def test_a_small_op_runs_whole_on_the_caller(two_threads):
    seen = []
    split.over_images(lambda images: seen.append((images, threading.current_thread())),
                      64, split.MIN_MACS - 1)
    assert seen == [(slice(0, 64), threading.current_thread())]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux's affinity calls")
def test_the_caller_may_run_anywhere_again_after_a_split(two_threads):
    os.sched_setaffinity(0, STARTING_CORES)
    during = []
    split.over_images(lambda images: during.append(os.sched_getaffinity(0)), 4, split.MIN_MACS)
    assert os.sched_getaffinity(0) == STARTING_CORES
    assert len(during[0]) == 1  # held on one core while its part ran


def test_an_error_in_a_workers_part_reaches_the_caller(two_threads):
    def part(images):
        if images.start:
            raise ValueError("part 2 failed")
    with pytest.raises(ValueError, match="part 2 failed"):
        split.over_images(part, 4, split.MIN_MACS)
    assert split.over_images(lambda images: images.stop, 4, split.MIN_MACS) == [2, 4]


def test_set_threads_counts_cores_for_0_and_refuses_fewer():
    before = split.threads()
    try:
        assert split.set_threads(0) == len(split.cores()) == split.threads()
        with pytest.raises(ValueError, match="1 or more"):
            split.set_threads(-1)
    finally:
        split.set_threads(before)


def test_numpys_blas_runs_one_thread_a_call_once_the_split_owns_the_threads(two_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    assert blas and all(i["num_threads"] == 1 for i in blas)
