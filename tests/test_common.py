"""kernels/common.py: the int32 launch-size guard, the size check, and launch recording."""
import numpy as np
import pytest

from helpers import dev, empty, host
from kernels import common, relu
from kernels.common import INT32_LIMIT, blocks_1d


def test_one_thread_per_element_grid_is_rounded_up():
    assert blocks_1d("k", 100, 32) == 4
    assert blocks_1d("k", 128, 32) == 4
    assert blocks_1d("k", 1, 256) == 1


def test_grid_stride_grid_is_capped():
    assert blocks_1d("k", 100, 32, max_blocks=2) == 2
    assert blocks_1d("k", 100, 32, max_blocks=10) == 4  # the cap only lowers it


def test_guard_is_on_the_rounded_up_grid():
    """The highest thread index is blocks*threads - 1: exactly 2^31 - 1 is fine, one more
    wraps an int32 negative and would pass a kernel's `i >= total` check."""
    assert blocks_1d("k", INT32_LIMIT - 1, 256) == INT32_LIMIT // 256  # 256 * blocks = 2^31
    with pytest.raises(ValueError, match="int32"):
        blocks_1d("k", INT32_LIMIT - 100, 1000)  # 2147484 blocks of 1000 = 2^31 + 352
    with pytest.raises(ValueError, match="int32"):
        blocks_1d("k", INT32_LIMIT + 1, 1)


def test_guard_of_grid_stride_loops_counts_the_last_step():
    """In a grid-stride loop the last `i += stride` reaches total - 1 + blocks*threads."""
    assert blocks_1d("k", INT32_LIMIT - 64, 32, max_blocks=2) == 2  # reaches 2^31 - 1
    with pytest.raises(ValueError, match="int32"):
        blocks_1d("k", INT32_LIMIT - 63, 32, max_blocks=2)
    with pytest.raises(ValueError, match="int32"):
        blocks_1d("k", INT32_LIMIT - 1, 256, max_blocks=65536)


@pytest.mark.parametrize("threads", [0, 1025])
def test_threads_must_fit_a_block(threads):
    with pytest.raises(ValueError, match="threads per block"):
        blocks_1d("k", 10, threads)


class Shape:
    """Stands in for a huge array: only what the launchers' checks read."""

    def __init__(self, shape):
        self.shape, self.ndim, self.dtype = shape, len(shape), np.dtype(np.float32)
        self.size = int(np.prod(shape, dtype=np.int64))
        self.flags = type("Flags", (), {"c_contiguous": True})()

    def reshape(self, *shape):
        return Shape(shape[0] if isinstance(shape[0], tuple) else shape)


def test_check_size_allows_just_below_two_to_the_31():
    common.check_size("a", Shape((2**31 - 1,)))
    with pytest.raises(ValueError, match=r"a of shape \(2, 1073741824\)"):
        common.check_size("a", Shape((2, 2**30)))


def test_launchers_refuse_arrays_too_large_for_int32():
    big = Shape((2**31,))
    with pytest.raises(ValueError, match="int32"):
        relu.forward(big, Shape((2**31,)))


def test_recording_notes_launches_and_dry_runs_skip_them():
    x = dev(np.arange(-50, 50, dtype=np.float32))
    y = empty(x.shape)
    with common.recording(execute=False) as launches:
        assert common.is_dry_run()
        relu.forward(x, y, threads=32)
    assert not common.is_dry_run()
    assert launches == [common.Launch("relu_forward_v1", (4, 1, 1), (32, 1, 1), 1)]
    assert launches[0].blocks == 4 and launches[0].threads == 32
    assert np.isnan(host(y)).all()  # nothing ran
    with common.recording() as launches:
        relu.forward(x, y, threads=32)
    assert len(launches) == 1 and not np.isnan(host(y)).any()
