"""Helpers that make each layer's test a line or two (tinygrad/Chainer style).

    directional_check   rung 1: a reference backward against float64 central differences
                        along a random direction (Chainer's check_backward).
    dev / host / empty  arrays on the kernel device (sim or cuda) and back.
    kernel_settings     the hypothesis settings of a test that launches kernels.
    split_on_every_axis records launches and checks each used more than one block per axis.
    on_threads          the cpu device's loops on n threads inside a with block.
"""
import contextlib
import os

import numpy as np
from hypothesis import settings

from kernels.common import recording

KERNEL_DEVICE = "cuda" if os.environ.get("MINIVGG_DEVICE", "").lower() == "cuda" else "sim"
ON_GPU = KERNEL_DEVICE == "cuda"

# Examples per test that launches kernels (conftest.py explains the profiles): few under
# the simulator, the profile's own number on a GPU.
_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
KERNEL_EXAMPLES = settings().max_examples if ON_GPU else {"thorough": 40}.get(_PROFILE, 8)
kernel_settings = settings(max_examples=KERNEL_EXAMPLES)

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


@contextlib.contextmanager
def split_on_every_axis(single_block=()):
    """Run kernels inside the block and check afterwards that every launch had more than
    one block along every grid axis it used: a kernel that ignores a block index (uses
    threadIdx for cuda.grid, drops blockIdx.y, ...) then leaves outputs unwritten.
    single_block: names of kernels that are one block by design."""
    with recording() as launches:
        yield launches
    assert launches, "no kernel was launched"
    for launch in launches:
        if launch.kernel in single_block:
            continue
        used = launch.grid[:launch.axes]
        assert all(g > 1 for g in used), f"{launch.kernel}: grid {used} has an axis of 1 block"


def assert_close(got, want, name="", rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(host(got) if not isinstance(got, np.ndarray) else got,
                               want, rtol=rtol, atol=atol, err_msg=name)


# ----------------------------------------------------------------------------------------
# Shared by test_evaluate.py and test_predict.py: a tiny trained-looking checkpoint, its
# images, the FC network's posteriors written out independently, and the CLI runner.

CLASSES = ["circle", "square", "star"]
MEAN = [120.0, 110.0, 100.0]
# Divides the pixels so the untrained net's posteriors are not saturated at 0 and 1,
# where a missing flip or a wrong crop would not show.
STD = [128.0, 128.0, 128.0]
META = dict(mean_rgb=MEAN, std_rgb=STD)
SETTINGS = dict(crop=32, scale=40, scale_jitter=None)


def tiny_model(seed=0):
    from minivgg.model import VGG
    # kaiming: posteriors far enough from uniform that a missing flip or crop shows.
    return VGG("A", num_classes=3, width=1 / 16, fc_width=16, input_size=32, init="kaiming",
               seed=seed).eval()


def image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def fc_posteriors(model, img_hwc_uint8, meta):
    """The FC network's soft-max on one crop-size image, written out independently."""
    from minivgg import backend
    from minivgg.tape import Tensor, no_grad
    x = (np.asarray(img_hwc_uint8, np.float64) - meta["mean_rgb"]) / meta["std_rgb"]
    x = x.astype(np.float32).transpose(2, 0, 1)[None].copy()
    with no_grad():
        z = backend.to_host(model(Tensor(backend.to_device(x))).data)[0].astype(np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def save_tiny(path, classes=CLASSES, settings=SETTINGS, seed=0):
    from minivgg import checkpoint
    checkpoint.save(path, tiny_model(seed), meta=dict(META, classes=classes, settings=settings))
    return str(path)


def run_cli(module, *args, cwd=None):
    """`python -m module args --device cpu` in a subprocess (MINIVGG_DEVICE unset)."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in ("MINIVGG_DEVICE",)}
    return subprocess.run([sys.executable, "-m", module, *map(str, args), "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=120, cwd=cwd)


def assert_one_line_error(proc, *words):
    """Exit status 2 and one 'error: ...' line holding every word, no traceback."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


@contextlib.contextmanager
def on_threads(n):
    """The cpu device's loops on n threads (kernels/threads.py), then as before."""
    from kernels import threads
    before = threads.threads()
    threads.set_threads(n)
    try:
        yield
    finally:
        threads.set_threads(before)
