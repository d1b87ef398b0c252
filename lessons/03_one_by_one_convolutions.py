"""Lesson 3: 1x1 convolutions -- a matrix product per pixel (configuration C, sect. 2.3).

A 1x1 conv multiplies the channel vector of every pixel by the same K x C matrix: shown
equal to an einsum, numerically. With its ReLU it adds a non-linearity; it does not widen
the receptive field (configuration C's summary, before and after).

    python lessons/03_one_by_one_convolutions.py [--no-pause] [--device cpu|sim|cuda] [--out DIR]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _lesson import Lesson  # noqa: E402

lesson = Lesson(__doc__)

import numpy as np  # noqa: E402

from minivgg import backend, ops  # noqa: E402
from minivgg.model import plan  # noqa: E402
from minivgg.tape import Tensor  # noqa: E402

TINY = lesson.device.name == "sim"

# -- 1 ------------------------------------------------------------------------------------------
lesson.step("The claim")
lesson.quote("The incorporation of 1x1 conv. layers (configuration C, Table 1) is a way to "
             "increase the non-linearity of the decision function without affecting the "
             "receptive fields of the conv. layers. Even though in our case the 1x1 "
             "convolution is essentially a linear projection onto the space of the same "
             "dimensionality (the number of input and output channels is the same), an "
             "additional non-linearity is introduced by the rectification function.",
             "sect. 2.3")

# -- 2 ------------------------------------------------------------------------------------------
lesson.step("A 1x1 conv is a matrix product over channels, at each pixel")
lesson.say("""With R = S = 1 the conv formula y[n,k,p,q] = b[k] + sum_{c,r,s} w[k,c,r,s]
x[n,c,p+r,q+s] loses its sums over r and s:

    y[n,k,p,q] = b[k] + sum_c w[k,c] x[n,c,p,q]      i.e.   y[:, :, p, q] = W x[:, :, p, q] + b

the same K x C matrix W at every pixel. We run minivgg's conv (ops.conv2d on this device)
and compare it with numpy.einsum over the channel axis.""")
rng = np.random.default_rng(0)
N, C, K, H = (1, 4, 4, 3) if TINY else (2, 16, 16, 8)
x = rng.standard_normal((N, C, H, H)).astype(np.float32)
w = rng.standard_normal((K, C, 1, 1)).astype(np.float32)
b = rng.standard_normal(K).astype(np.float32)
y = backend.to_host(ops.conv2d(Tensor(backend.to_device(x)), Tensor(backend.to_device(w)),
                               Tensor(backend.to_device(b)), stride=1, pad=0).data)
y_einsum = np.einsum("kc,nchw->nkhw", w[:, :, 0, 0], x) + b[None, :, None, None]
# the same as one big matrix product: pixels as rows
y_matmul = (x.transpose(0, 2, 3, 1).reshape(-1, C) @ w[:, :, 0, 0].T + b) \
    .reshape(N, H, H, K).transpose(0, 3, 1, 2)
print(f"\nx {x.shape}, w {w.shape}: conv2d output {y.shape}")
print(f"1x1 conv vs einsum: max abs difference {np.abs(y - y_einsum).max():.2e}")
print(f"1x1 conv vs (N*H*W x C) @ (C x K) matmul: max abs difference "
      f"{np.abs(y - y_matmul).max():.2e}")
print(f"pixel (0, 1, 2): W @ x[0, :, 1, 2] + b = {np.round(w[:, :, 0, 0] @ x[0, :, 1, 2] + b, 4)[:4]}"
      f"...  conv: {np.round(y[0, :4, 1, 2], 4)}")
lesson.say("""Equal to float32 rounding. In minivgg's implicit-GEMM view (kernels/conv/)
this is the whole story: for 1x1 the unrolled matrix A IS the input, one row per pixel.""")

# -- 3 ------------------------------------------------------------------------------------------
lesson.step("Linear alone, non-linear with its ReLU")
lesson.say("""A 1x1 conv with no bias is linear: f(a + b) = f(a) + f(b). Two linear 1x1
layers in a row would collapse into one matrix. With the ReLU after it -- every conv in
VGG has one -- the layer is no longer linear, which is the point of configuration C.""")
a = rng.standard_normal((1, C, H, H)).astype(np.float32)
c2 = rng.standard_normal((1, C, H, H)).astype(np.float32)
zero = Tensor(backend.to_device(np.zeros(K, np.float32)))
W = Tensor(backend.to_device(w))


def f(v, relu):
    out = ops.conv2d(Tensor(backend.to_device(v)), W, zero)
    return backend.to_host((ops.relu(out) if relu else out).data)


lin = np.abs(f(a + c2, False) - f(a, False) - f(c2, False)).max()
nonlin = np.abs(f(a + c2, True) - f(a, True) - f(c2, True)).max()
print(f"\n1x1 conv:        max |f(a+b) - f(a) - f(b)| = {lin:.2e}   (linear)")
print(f"1x1 conv + ReLU: max |f(a+b) - f(a) - f(b)| = {nonlin:.2e}   (not linear)")

# -- 4 ------------------------------------------------------------------------------------------
lesson.step("The receptive field does not grow")
lesson.say("""From configuration C's summary (model.plan): the 1x1 layers conv3_3, conv4_3,
conv5_3 keep the receptive field of the layer before them (r <- r + (1 - 1) j = r). D has
3x3 layers in the same places, and they widen it.""")
c_rows = {r.name: r for r in plan("C")}
d_rows = {r.name: r for r in plan("D")}
rows = []
for name in ["conv3_1", "conv3_2", "conv3_3", "pool3", "conv4_2", "conv4_3", "conv5_2",
             "conv5_3", "pool5"]:
    rc, rd = c_rows[name], d_rows[name]
    rows.append((name, f"{rc.kernel}x{rc.kernel}", rc.rf, f"{rd.kernel}x{rd.kernel}", rd.rf,
                 f"{rc.params:,}", f"{rd.params:,}"))
lesson.table(("layer", "C kernel", "C rf", "D kernel", "D rf", "C params", "D params"), rows)
print()
for name in ["conv3_3", "conv4_3", "conv5_3"]:
    before = c_rows[name.replace("_3", "_2")].rf
    print(f"C {name} (1x1) receptive field: before {before}, after {c_rows[name].rf}")
print(f"C pool5 receptive field: {c_rows['pool5'].rf}  (D: {d_rows['pool5'].rf})")
lesson.say("""C's pool5 sees 156 pixels, D's 212. The paper found D better than C (sect.
4.1: "while the additional non-linearity does help (C is better than B), it is also
important to capture spatial context by using conv. filters with non-trivial receptive
fields (D is better than C)"). A 1x1 layer also costs a ninth of a 3x3 one.""")

# -- 5 ------------------------------------------------------------------------------------------
lesson.step("Figure: receptive field through C and D")
plt = lesson.plt()
fig, ax = plt.subplots(figsize=(11, 4.5))
for cfg, rowsd, colour in (("C", plan("C"), "tab:orange"), ("D", plan("D"), "tab:blue")):
    convs = [r for r in rowsd if r.kind in ("conv", "pool")]
    ax.plot(range(len(convs)), [r.rf for r in convs], "o-", color=colour, label=cfg)
    for i, r in enumerate(convs):
        if r.kind == "conv" and r.kernel == 1:
            ax.annotate("1x1", (i, r.rf), textcoords="offset points", xytext=(0, -14),
                        ha="center", fontsize=8, color=colour)
ax.set_xticks(range(len(convs)))
ax.set_xticklabels([r.name for r in convs], rotation=60, ha="right", fontsize=8)
ax.set_ylabel("receptive field (pixels)")
ax.set_title("1x1 layers (C) leave the receptive field where it was; 3x3 layers (D) widen it")
ax.legend()
ax.grid(alpha=0.3)
lesson.save(fig, "03_one_by_one_convolutions.png")

lesson.done("""What it means: a 1x1 conv is a per-pixel fully-connected layer over the
channels -- cheap, and with its ReLU a way to add depth without adding reach.""")
