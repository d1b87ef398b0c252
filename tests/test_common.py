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


def test_check_names_the_array_and_what_is_wrong():
    a = dev(np.zeros((2, 3)))
    common.check("a", a, shape=(2, 3), ndim=2)  # all fine: no error
    with pytest.raises(ValueError, match=r"a must have 3 dimensions, got shape \(2, 3\)"):
        common.check("a", a, ndim=3)


def test_a_block_may_have_1024_threads_not_more():
    assert blocks_1d("k", 2048, 1024) == 2
    with pytest.raises(ValueError, match=r"\[1, 1024\], got 1025"):
        blocks_1d("k", 2048, 1025)


def test_guard_message_gives_the_highest_index():
    with pytest.raises(ValueError, match=r"indices up to 2147483999, past"):
        blocks_1d("k", INT32_LIMIT - 100, 1000)


def test_launch_counts_blocks_and_threads_of_three_dimensional_grids():
    launch = common.Launch("k", (3, 2, 5), (16, 8, 2), 3)
    assert (launch.blocks, launch.threads) == (30, 256)
    assert isinstance(launch.blocks, int) and isinstance(launch.threads, int)


def test_recordings_nest_and_the_outer_one_resumes():
    x = dev(np.zeros(4, dtype=np.float32))
    with common.recording(execute=False) as outer:
        with common.recording(execute=False) as inner:
            relu.forward(x, empty((4,)))
        relu.forward(x, empty((4,)))
        assert common.is_dry_run()
    assert len(inner) == 1 and len(outer) == 1


class FakeKernel:
    """Records the launch configuration kernel[grid, block, stream] and the call."""
    py_func = staticmethod(lambda: None)

    def __getitem__(self, config):
        self.config = config
        return lambda *args: setattr(self, "args", args)


def test_launch_runs_on_the_first_arguments_stream_with_every_argument():
    kernel, x = FakeKernel(), np.zeros(3, dtype=np.float32)
    common.launch(kernel, 2, 32, x, np.int32(7))  # a host array: the default stream, 0
    assert kernel.config == (2, 32, 0) and kernel.args[0] is x and kernel.args[1] == 7


def test_launches_are_named_after_the_kernel_function():
    def my_kernel():
        pass
    assert common._name(type("Dispatcher", (), {"py_func": my_kernel})()) == "my_kernel"
    assert common._name(type("Simulated", (), {"fn": my_kernel})()) == "my_kernel"


def test_ptx_signatures_are_c_contiguous_numba_types():
    """Rung 3 compiles each kernel for these argument types, which must be what the
    launchers pass: C-contiguous arrays (a strided layout compiles too, and silently
    tests other code)."""
    import importlib
    import pkgutil
    from numba.core import types
    import kernels
    seen = 0
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"kernels.{info.name}")
        for _, signature in getattr(module, "PTX_SIGNATURES", []):
            for t in signature:
                assert isinstance(t, types.Type), (info.name, t)
                if isinstance(t, types.Array):
                    assert t.layout == "C", (info.name, t)
                    seen += 1
    assert seen > 50


def test_cupy_arrays_launch_on_cupys_current_stream(monkeypatch):
    """A CuPy array's launch goes on CuPy's current stream, wrapped once per stream (by
    pointer) as a Numba external stream; pointer 0 is the default stream. A fake cupy
    module stands in for the real one (there is no GPU here)."""
    import sys
    import types
    current = types.SimpleNamespace(ptr=1234)
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(get_current_stream=lambda: current)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    made = []
    monkeypatch.setattr(common.cuda, "external_stream", lambda ptr: made.append(ptr) or f"ext{ptr}")
    monkeypatch.setattr(common.cuda, "default_stream", lambda: "default")
    common._streams.clear()
    device_array = object()  # not a NumPy array: what a CuPy array looks like here
    assert common.stream_of(device_array) == "ext1234"
    assert common.stream_of(device_array) == "ext1234" and made == [1234]  # wrapped once
    current.ptr = 0
    assert common.stream_of(device_array) == "default"
    common._streams.clear()  # the fakes must not outlive the test


def test_default_block_sizes_are_whole_warps():
    """Every launcher's default block size is a multiple of the 32-thread warp (a partial
    warp idles lanes on every instruction) and fits a block."""
    import importlib
    import pkgutil
    import kernels
    sizes = {}
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"kernels.{info.name}")
        for name in ("THREADS", "BLOCK", "BIAS_THREADS", "THREADS_V3"):
            if isinstance(getattr(module, name, None), int):
                sizes[f"{info.name}.{name}"] = getattr(module, name)
    assert len(sizes) >= 10, sizes
    assert all(s % 32 == 0 and 32 <= s <= 1024 for s in sizes.values()), sizes
