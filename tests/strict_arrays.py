"""Device arrays without a GPU: NumPy arrays that behave like CuPy's where it matters.

The `cuda` device hands out CuPy arrays, and code written against NumPy breaks on them in
ways the `cpu` and `sim` devices never show: CuPy refuses to turn a device array into a
NumPy array implicitly (np.asarray, np.array: "Implicit conversion to a NumPy array is
not allowed") and refuses to mix device and host arrays in one operation. The
`strict_device` fixture runs a test "as if on cuda": the `sim` device (the same kernels,
in Numba's simulator), but every array the backend allocates is a DeviceArray, which

    - refuses np.asarray / np.array / np.asanyarray / np.ascontiguousarray (while the
      fixture is active; those four are C functions that never ask an ndarray subclass,
      so the fixture wraps them) and __array__;
    - refuses ufuncs and NumPy functions that mix it with a plain NumPy array;
    - gives results as DeviceArrays, reductions and single elements as 0-d DeviceArrays
      (as CuPy does);
    - has .get(), a host copy, as CuPy's arrays do; reshape of a C-contiguous array is a
      view, as in CuPy.

and a kernel launched with a host NumPy array raises (numba-cuda would copy it to the
GPU and back at every launch, a host sync the simulator does not show).

Still a NumPy subclass, so the simulator launches kernels on it, and so
`isinstance(a, np.ndarray)` is True here although it is False for a CuPy array: code
must ask backend.is_device_array, and the tests check that it does. Not modelled: host
arrays written into from a device array (`host[...] = dev` copies here, CuPy refuses);
NumPy functions CuPy lacks (here every NumPy function works on DeviceArrays); xp's
submodules (xp.random, xp.lib) are NumPy's own and give host arrays.

Under MINIVGG_DEVICE=cuda the fixture uses the real GPU instead, so the same tests run
against CuPy itself in the GPU check.
"""
import contextlib

import numpy as np
import pytest

from minivgg import backend

REFUSED = "Implicit conversion to a NumPy array is not allowed"


class DeviceArray(np.ndarray):
    """A NumPy array standing in for a CuPy array (see the module docstring)."""

    def get(self):
        """A host (plain NumPy) copy, like cupy.ndarray.get()."""
        return np.array(self.view(np.ndarray), copy=True)

    def __repr__(self):  # NumPy's printing would mix this array with host ones
        return f"DeviceArray({self.get()!r})"

    __str__ = __repr__

    def __getitem__(self, key):
        """An element comes back as a 0-d DeviceArray, as CuPy's indexing gives (not a
        host NumPy scalar): reading it on the host is a sync the code must ask for.
        Inside a simulated kernel an element is a number, as on the GPU."""
        item = super().__getitem__(key)
        return item if _in_kernel() else _wrap(item)

    def __array__(self, dtype=None, copy=None):
        raise TypeError(f"{REFUSED}: use .get() (a DeviceArray of shape {self.shape})")

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        _refuse_host_arrays(f"{ufunc.__name__}.{method}", inputs + (out or ()))
        if out is not None:
            kwargs["out"] = tuple(_plain(o) for o in out)
        result = getattr(ufunc, method)(*(_plain(a) for a in inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func, types, args, kwargs):
        if any(t is np.ndarray for t in types):
            raise TypeError(f"{func.__name__}: a DeviceArray mixed with a host NumPy array "
                            "(CuPy: Unsupported type numpy.ndarray)")
        return _wrap(func(*_plain_tree(args), **_plain_tree(kwargs)))


def _in_kernel():
    from numba.cuda.simulator import kernel as simulated
    return simulated._get_kernel_context() is not None


def _refuse_host_arrays(what, arrays):
    for a in arrays:
        if isinstance(a, np.ndarray) and not isinstance(a, DeviceArray):
            raise TypeError(f"{what}: a DeviceArray mixed with a host NumPy array of shape "
                            f"{a.shape} (CuPy: Unsupported type numpy.ndarray)")


def _plain(a):
    return a.view(np.ndarray) if isinstance(a, DeviceArray) else a


def _plain_tree(x):
    """DeviceArrays anywhere in nested tuples/lists/dicts as plain views."""
    if isinstance(x, (list, tuple)):
        return type(x)(_plain_tree(v) for v in x)
    if isinstance(x, dict):
        return {k: _plain_tree(v) for k, v in x.items()}
    return _plain(x)


def _wrap(x):
    """Array results as DeviceArrays (0-d for NumPy scalars, as CuPy reductions give)."""
    if isinstance(x, np.ndarray):
        return x.view(DeviceArray)
    if isinstance(x, np.generic):
        return _ORIGINAL["asarray"](x).view(DeviceArray)
    if isinstance(x, (tuple, list)):
        return type(x)(_wrap(v) for v in x)
    return x


def _holds_device_array(obj):
    if isinstance(obj, DeviceArray):
        return True
    return isinstance(obj, (list, tuple)) and any(map(_holds_device_array, obj))


def _refusing(convert):
    """np.asarray & co. that refuse DeviceArrays, as they refuse CuPy arrays.

    np.array(a, subok=True) is let through: it keeps a device array a device array (the
    simulator uses it to copy kernel arguments)."""
    def strict(obj, *args, **kwargs):
        if _holds_device_array(obj) and not kwargs.get("subok"):
            raise TypeError(f"{REFUSED} (np.{convert.__name__} of a DeviceArray)")
        return convert(obj, *args, **kwargs)
    strict.__name__ = convert.__name__
    return strict


CONVERSIONS = ("asarray", "array", "asanyarray", "ascontiguousarray")
_ORIGINAL = {name: getattr(np, name) for name in CONVERSIONS}  # NumPy's own, unwrapped


class DeviceModule:
    """The array module of the strict device: NumPy's functions, with CuPy's manners.

    Arrays it makes are DeviceArrays; array()/asarray() copy host data over (as
    cupy.array does); other functions refuse host arrays, as CuPy's do. Types (dtypes,
    ndarray) and constants are NumPy's."""

    ndarray = DeviceArray

    def __getattr__(self, name):
        attr = getattr(np, name)
        if isinstance(attr, type) or not callable(attr):
            return attr
        converts = name in CONVERSIONS
        raw = _ORIGINAL[name] if converts else attr

        def call(*args, **kwargs):
            if not converts:
                _refuse_host_arrays(f"xp.{name}", _leaves((args, kwargs)))
            return _wrap(raw(*_plain_tree(args), **_plain_tree(kwargs)))
        call.__name__ = name
        return call


def _leaves(x):
    if isinstance(x, (list, tuple)):
        return [leaf for v in x for leaf in _leaves(v)]
    if isinstance(x, dict):
        return _leaves(list(x.values()))
    return [x]


xp = DeviceModule()


@contextlib.contextmanager
def refusing_conversions():
    """np.asarray, np.array, np.asanyarray, np.ascontiguousarray refuse DeviceArrays."""
    saved = {name: getattr(np, name) for name in CONVERSIONS}
    try:
        for name in CONVERSIONS:
            setattr(np, name, _refusing(_ORIGINAL[name]))
        yield
    finally:
        for name, f in saved.items():
            setattr(np, name, f)


@contextlib.contextmanager
def kernels_take_device_arrays_only():
    """A kernel launched with a host NumPy array raises, as it should on the GPU.

    Numba-cuda accepts one there, but copies it to the device and back around every
    launch, synchronising with the host: the simulator takes it silently."""
    from numba.cuda.simulator import kernel as simulated
    call = simulated.FakeCUDAKernel.__call__

    def launch(self, *args):
        if not self._device and simulated._get_kernel_context() is None:
            for i, a in enumerate(args):
                if isinstance(a, np.ndarray) and not isinstance(a, DeviceArray):
                    raise TypeError(f"{self.__name__}: argument {i} is a host NumPy array "
                                    f"of shape {a.shape}; numba-cuda would copy it to the "
                                    "GPU and back at every launch")
        return call(self, *args)
    simulated.FakeCUDAKernel.__call__ = launch
    try:
        yield
    finally:
        simulated.FakeCUDAKernel.__call__ = call


def on_device(a, dtype=np.float32):
    """A host array as a DeviceArray copy (what backend.to_device gives on this device)."""
    return xp.array(a, dtype=dtype, copy=True, order="C")


@contextlib.contextmanager
def cpu_device():
    """Inside a strict_device test: run the block on the cpu device (the oracle)."""
    before = backend.device()
    backend.set_device("cpu")
    try:
        yield
    finally:
        backend._current = before


@pytest.fixture
def strict_device():
    """Run the test as if on cuda: sim kernels, DeviceArrays, no implicit conversions.

    Yields the Device. With MINIVGG_DEVICE=cuda (the GPU check) it is the real cuda
    device instead, so the same test runs against CuPy itself.
    """
    from helpers import KERNEL_DEVICE
    before = backend._current
    if KERNEL_DEVICE == "cuda":
        yield backend.set_device("cuda")
    else:
        backend.set_device("sim")  # switches the simulator on (or says it is too late)
        backend._current = backend.Device("sim", xp, "sim with strict device arrays (tests)")
        with refusing_conversions(), kernels_take_device_arrays_only():
            yield backend._current
    backend._current = before
