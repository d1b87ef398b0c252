"""Lesson 6: gradient checking -- is the backward pass right?

Centred differences against minivgg's backward (ops through the tape, in float64 on the
cpu device, whose NumPy paths keep the dtype) for conv, max-pool and LRN; what goes
wrong at a max-pool tie; why float64; and the directional check the test suite uses
(tests/helpers.directional_check), which needs two forward passes instead of two per
element.

    python lessons/06_gradient_checking.py [--no-pause] [--device cpu|sim|cuda] [--out DIR]
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _lesson import Lesson  # noqa: E402

lesson = Lesson(__doc__)
KERNEL_DEVICE = lesson.device.name  # float64 work runs on cpu; kernels are float32-only

import numpy as np  # noqa: E402

from minivgg import backend, ops  # noqa: E402
from minivgg.tape import Tensor  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tests"))
from helpers import directional_check  # noqa: E402  (the test suite's own check)

backend.set_device("cpu")  # float64 through the references; see step 6 for the kernels
rng = np.random.default_rng(0)


def analytic(op, inputs, dy):
    """Gradients of L = <dy, op(*inputs)> by minivgg's backward: leaves are Tensors."""
    leaves = [Tensor(a.copy(), requires_grad=True) for a in inputs]
    out = op(*leaves)
    out.backward(dy)
    return [t.grad for t in leaves]


def numeric(op, inputs, dy, i, eps):
    """dL/d inputs[i] by centred differences, one element at a time: 2 forwards each."""
    x = inputs[i]
    g = np.zeros(x.shape, dtype=np.float64)

    def L(moved):
        args = [Tensor(a) for a in inputs]
        args[i] = Tensor(moved)
        return float(np.sum(dy * op(*args).data.astype(np.float64)))

    for j in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[j] += eps
        down[j] -= eps
        g[j] = (L(up) - L(down)) / (2 * eps)
    return g


def rel_error(a, n):
    return float(np.abs(a - n).max() / max(np.abs(a).max(), np.abs(n).max(), 1e-30))


# -- 1 ------------------------------------------------------------------------------------------
lesson.step("The claim, and why check it")
lesson.quote("the training is carried out by optimising the multinomial logistic regression "
             "objective using mini-batch gradient descent (based on back-propagation (LeCun "
             "et al., 1989)) with momentum.", "sect. 3.1")
lesson.say("""Every backward in minivgg is written by hand. A wrong one does not crash: the
net just learns worse. The check: for L(x) = <dy, f(x)> with a random dy,

    dL/dx_i  ~=  (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)      (centred: error O(eps^2))

and compare with what backward() gives, as a relative error max|a - n| / max(|a|, |n|).""")

# -- 2 ------------------------------------------------------------------------------------------
lesson.step("Centred differences vs backward: conv, max-pool, LRN (float64)")
EPS = 1e-6
cases = {
    "conv2d (pad 1)": (lambda x, w, b: ops.conv2d(x, w, b, 1, 1),
                       [rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 3, 3, 3)),
                        rng.standard_normal(4)], ["x", "w", "b"]),
    "max_pool2d 2x2/2": (lambda x: ops.max_pool2d(x, 2, 2),
                         [rng.permutation(32).reshape(1, 2, 4, 4) + rng.uniform(0, .5, 32)
                          .reshape(1, 2, 4, 4)], ["x"]),  # distinct values: no ties
    "lrn (AlexNet's)": (lambda x: ops.lrn(x, 5, 2.0, 1e-4, 0.75),
                        [30 * rng.standard_normal((1, 7, 3, 3))], ["x"]),
}
rows = []
for name, (op, inputs, names) in cases.items():
    y = op(*[Tensor(a) for a in inputs]).data
    dy = rng.standard_normal(y.shape)
    grads = analytic(op, inputs, dy)
    for i, (g, which) in enumerate(zip(grads, names)):
        n = numeric(op, inputs, dy, i, EPS)
        err = rel_error(g, n)
        rows.append((name, which, inputs[i].size, 2 * inputs[i].size, f"{err:.1e}"))
        print(f"gradient check {name} d{which}: relative error {err:.1e}")
print()
lesson.table(("op", "wrt", "elements", "forward passes", "relative error"), rows)
lesson.say("""All around 1e-9 or better: the backward passes agree with the definition of
the derivative (eps = 1e-6, float64).""")

# -- 3 ------------------------------------------------------------------------------------------
lesson.step("Where it goes wrong: a tie in a max-pool window")
x_tie = np.array([[[[1.0, 1.0], [0.0, 0.0]]]])
op = lambda x: ops.max_pool2d(x, 2, 2)  # noqa: E731
g = analytic(op, [x_tie], np.ones((1, 1, 1, 1)))[0]
n = numeric(op, [x_tie], np.ones((1, 1, 1, 1)), 0, EPS)
print(f"window [[1, 1], [0, 0]], dy = 1")
print(f"analytic (backward): {g.ravel()}")
print(f"numeric (centred):   {np.round(n.ravel(), 6)}")
print(f"max-pool tie: numeric {n.ravel()[0]:.1f}/{n.ravel()[1]:.1f}, "
      f"analytic {g.ravel()[0]:.0f}/{g.ravel()[1]:.0f}")
lesson.say("""Raising either 1 by eps raises the max by eps; lowering it changes nothing
(the other 1 is still there): the one-sided derivatives are 1 and 0, and the centred
difference averages them to 0.5. The max is not differentiable at a tie. Backward gives the
whole gradient to the first maximum (as PyTorch and Caffe do) -- one valid subgradient; so
does 0.5/0.5. Both sum to 1. Not a bug, but a check must stay away from ties (and from ReLU
at exactly 0): the test suite draws distinct values, as step 2 did.""")

# -- 4 ------------------------------------------------------------------------------------------
lesson.step("Why float64: the error against eps, float32 and float64")
lesson.say("""Two errors pull against each other: truncation, ~eps^2 (the centred formula
is exact only for quadratics), and rounding, ~(machine epsilon) * |L| / eps. float32's
machine epsilon is 1.2e-7, float64's 2.2e-16. The references compute in the dtype they
are given, so the same op runs in both. We take a strongly curved one: LRN with k = 1,
alpha = 1 (not AlexNet's 2 and 1e-4, which make it nearly linear) on inputs of size ~1.""")
op = lambda x: ops.lrn(x, 5, 1.0, 1.0, 0.75)  # noqa: E731
x64 = rng.standard_normal((1, 7, 3, 3))
dy = rng.standard_normal(x64.shape)
g64 = analytic(op, [x64], dy)[0]
epss = [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8]
errs = {"float32": [], "float64": []}
rows = []
for eps in epss:
    e32 = rel_error(g64, numeric(op, [x64.astype(np.float32)], dy.astype(np.float32), 0, eps))
    e64 = rel_error(g64, numeric(op, [x64], dy, 0, eps))
    errs["float32"].append(e32)
    errs["float64"].append(e64)
    rows.append((f"{eps:.0e}", f"{e32:.1e}", f"{e64:.1e}"))
lesson.table(("eps", "float32 rel. error", "float64 rel. error"), rows)
best32 = int(np.argmin(errs["float32"]))
best64 = int(np.argmin(errs["float64"]))
print(f"\nbest float32: {errs['float32'][best32]:.1e} at eps {epss[best32]:.0e}; "
      f"best float64: {errs['float64'][best64]:.1e} at eps {epss[best64]:.0e}")
lesson.say(f"""In float32 only a narrow window of eps works, and even the best,
{errs['float32'][best32]:.0e}, is coarse: a gradient 1e-4 off would barely stand out, and
the usual eps = 1e-6 gives {errs['float32'][5]:.0e}. float64 reaches
{errs['float64'][best64]:.0e} and a wide range of eps works. So the oracle is checked in float64, and the float32 kernels are then
compared with the oracle (rung 2 of DESIGN.md's ladder), not with finite differences.""")

# -- 5 ------------------------------------------------------------------------------------------
lesson.step("The directional check: two forward passes per input")
lesson.say("""Step 2 needed 2 forward passes per element: 2 x 138M for VGG-D's weights. The
test suite (tests/helpers.directional_check, after Chainer's check_backward) checks the
whole gradient at once along one random direction v:

    <dL/dx, v>  ~=  (L(x + eps v) - L(x - eps v)) / (2 eps)

If backward is wrong in ANY component, the error e = g - g_true gives <e, v> != 0 for a
random v, except on a set of probability zero. Two forward passes, whatever the size.""")
x, w, b = cases["conv2d (pad 1)"][1]
dy = rng.standard_normal((2, 4, 5, 5))
v = rng.standard_normal(x.shape)
gx = analytic(lambda x, w, b: ops.conv2d(x, w, b, 1, 1), [x, w, b], dy)[0]


def L(t):
    return float(np.sum(dy * ops.conv2d(Tensor(x + t * v), Tensor(w), Tensor(b), 1, 1).data))


num = (L(1e-6) - L(-1e-6)) / 2e-6
print(f"\nconv2d, along a random v: analytic <g, v> = {np.sum(gx * v):.10f}, numeric = "
      f"{num:.10f}  (2 forward passes, not {2 * x.size})")


def conv_fwd(x, w, b):
    return ops.conv2d(Tensor(x), Tensor(w), Tensor(b), 1, 1).data


def conv_bwd(x, w, b, dy):
    return analytic(lambda x, w, b: ops.conv2d(x, w, b, 1, 1), [x, w, b], dy)


def conv_bwd_broken(x, w, b, dy):  # a classic slip: the filter not flipped in dx
    dx, dw, db = conv_bwd(x, w, b, dy)
    return conv_bwd(x, w[:, :, ::-1, ::-1].copy(), b, dy)[0], dw, db


checks = [("conv2d", conv_fwd, conv_bwd, [x, w, b], (0, 1, 2)),
          ("lrn", lambda x: ops.lrn(Tensor(x)).data,
           lambda x, dy: analytic(lambda t: ops.lrn(t), [x], dy), [x64], (0,)),
          ("conv2d with a broken dx", conv_fwd, conv_bwd_broken, [x, w, b], (0, 1, 2))]
for name, fwd, bwd, inputs, wrt in checks:
    try:
        directional_check(fwd, bwd, inputs, wrt, np.random.default_rng(1))
        print(f"directional check {name}: passed")
    except AssertionError as e:
        print(f"directional check {name}: FAILED -- {str(e).splitlines()[0]}")
lesson.say("""The broken backward (dx computed with a flipped filter) is caught with two
forward passes.""")

# -- 6 ------------------------------------------------------------------------------------------
lesson.step("The float32 path against the float64 oracle")
xs = rng.standard_normal((1, 2, 4, 4))
ws = rng.standard_normal((2, 2, 3, 3))
bs = rng.standard_normal(2)
dys = rng.standard_normal((1, 2, 4, 4))
g_ref = analytic(lambda x, w, b: ops.conv2d(x, w, b, 1, 1), [xs, ws, bs], dys)
dev = "cpu" if KERNEL_DEVICE == "cpu" else KERNEL_DEVICE
backend.set_device(dev)
leaves = [Tensor(backend.to_device(a), requires_grad=True) for a in (xs, ws, bs)]
ops.conv2d(*leaves, 1, 1).backward(backend.to_device(dys))
what = "float32 cpu device" if dev == "cpu" else f"float32 CUDA kernels on {dev}"
for name, t, r in zip(("dx", "dw", "db"), leaves, g_ref):
    print(f"conv2d {name}: {what} vs float64 oracle: relative error "
          f"{rel_error(backend.to_host(t.grad).astype(np.float64), r):.1e}")
lesson.say("""About 1e-7: float32 rounding, nothing more. (With --device sim or cuda this
step runs the CUDA kernels themselves; the test suite does it for every kernel and
version, over hypothesis-drawn shapes.)""")

# -- 7 ------------------------------------------------------------------------------------------
lesson.step("Figure: relative error against eps")
plt = lesson.plt()
fig, ax = plt.subplots(figsize=(7, 4.5))
for k, style in (("float32", "o-"), ("float64", "s-")):
    ax.loglog(epss, errs[k], style, label=k)
ax.set_xlabel("eps")
ax.set_ylabel("relative error of the centred difference")
ax.set_title("LRN gradient: truncation (left, large eps) vs rounding (right)")
ax.invert_xaxis()
ax.grid(alpha=0.3, which="both")
ax.legend()
lesson.save(fig, "06_gradient_checking.png")

lesson.done("""What it means: check references in float64 by finite differences (away
from kinks), then kernels against references. The directional check makes the first cheap
enough to run on every shape hypothesis draws.""")
