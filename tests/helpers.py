"""Helpers that make each layer's test a line or two (tinygrad/Chainer style).

    directional_check   rung 1: a reference backward against float64 central differences
                        along a random direction (Chainer's check_backward).
    on_kernel_device    run a launcher on the kernel device (sim or cuda), return NumPy.
"""
import os

import numpy as np

KERNEL_DEVICE = "cuda" if os.environ.get("MINIVGG_DEVICE", "").lower() == "cuda" else "sim"

# float32 kernels against float64-capable references computed in float32.
RTOL, ATOL = 1e-4, 1e-5


def dev(a, dtype=np.float32):
    """A host array on the kernel device (NumPy for sim, CuPy for cuda), C-contiguous."""
    a = np.ascontiguousarray(a, dtype=dtype)
    if KERNEL_DEVICE == "cuda":
        import cupy
        return cupy.asarray(a)
    return a.copy()


def host(a):
    return a.get() if KERNEL_DEVICE == "cuda" else np.asarray(a)


def empty(shape, fill=np.nan):
    """A device array pre-filled with NaN, so an element the kernel forgets shows up."""
    return dev(np.full(shape, fill, dtype=np.float32))


def directional_check(forward, backward, inputs, wrt, rng, eps=1e-6, tol=1e-7):
    """Check backward against central differences of forward, in float64.

    forward(*inputs) -> array y; backward(*inputs, dy) -> tuple of gradients, the i-th for
    inputs[wrt[i]]. With a random weighting dy, L(x) = <dy, forward(x)>, and for a random
    direction v the analytic <dL/dx, v> must equal (L(x + eps v) - L(x - eps v)) / 2 eps.
    Two forward passes per input check the whole gradient at once along v.
    """
    inputs = [np.asarray(a, dtype=np.float64) if isinstance(a, np.ndarray) else a
              for a in inputs]
    y = forward(*inputs)
    dy = rng.standard_normal(np.shape(y))
    grads = backward(*inputs, dy)
    for g, i in zip(grads, wrt):
        x = inputs[i]
        assert g.shape == x.shape, f"gradient {i} has shape {g.shape}, input {x.shape}"
        v = rng.standard_normal(x.shape)

        def L(t):
            moved = list(inputs)
            moved[i] = x + t * v
            return float(np.sum(dy * forward(*moved)))

        numeric = (L(eps) - L(-eps)) / (2 * eps)
        analytic = float(np.sum(g * v))
        scale = max(1.0, abs(numeric), abs(analytic))
        assert abs(numeric - analytic) <= tol * scale, \
            f"input {i}: analytic {analytic!r} vs numeric {numeric!r}"


def assert_close(got, want, name="", rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(host(got) if not isinstance(got, np.ndarray) else got,
                               want, rtol=rtol, atol=atol, err_msg=name)
