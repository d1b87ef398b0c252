"""Lesson 10: from LeNet-5 to VGG -- the survey's argument, in computed numbers.

The compendium (../shared/papers/alexnet-and-classic-cnns.txt) walks from LeNet-5 (1998)
through AlexNet (2012) and ZFNet (2013) to VGG (2014) and asks why later networks build on
AlexNet, VGG and GoogLeNet. minivgg has all four as configs on the same kernels, so every
number below is computed from the nets themselves: parameters and multiply-adds per layer;
where the parameters live (FC vs conv); what the first layer's size and stride do to the
receptive field, the feature maps and the frequencies a net can see (AlexNet 11x11/4,
ZFNet 7x7/2, VGG 3x3/1); and what AlexNet's grouped convolutions saved.

    python lessons/10_from_lenet_to_vgg.py [--no-pause] [--device cpu|sim|cuda] [--out DIR]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _lesson import Lesson  # noqa: E402

lesson = Lesson(__doc__)

import numpy as np  # noqa: E402

from minivgg import backend, ops  # noqa: E402
from minivgg.model import defaults, plan  # noqa: E402
from minivgg.tape import Tensor, no_grad  # noqa: E402

NETS = {"LeNet-5": "LeNet-5", "AlexNet": "AlexNet", "ZFNet": "ZFNet", "VGG-16": "D"}
KRIZHEVSKY = "Krizhevsky, Sutskever & Hinton, NIPS 2012"
WEIGHTED = ("conv", "subsample", "fc")

# -- 1 ------------------------------------------------------------------------------------------
lesson.step("Four nets, one set of kernels")
lesson.say("""LeNet-5 read 32x32 digits with tanh units and trainable sub-sampling; AlexNet
took the same plan -- convolutions, pooling, non-linearities, then fully connected layers
-- to 224x224 ImageNet photos, with ReLUs, LRN, overlapping max-pooling, dropout, and two
GPUs; ZFNet retuned AlexNet's first two layers; VGG replaced every large filter by stacks
of 3x3 ones and went deep. In minivgg each is a config (minivgg/configs.py) run by the
same conv kernels: LeNet-5's C3 is a conv with a masked weight, its S2 and S4 a kernel of
their own, AlexNet's towers a grouped conv.""")
rows = []
for name, cfg in NETS.items():
    p = plan(cfg)
    _, _, side, channels = defaults(cfg)
    rows.append((name, len([r for r in p if r.kind in ("conv", "fc")]),
                 f"{side}x{side}x{channels}", f"{sum(r.params for r in p):,}",
                 f"{sum(r.madds for r in p):,}"))
lesson.table(("net", "weight layers", "input", "parameters", "multiply-adds / image"), rows)
print()
for name, cfg in NETS.items():
    p = plan(cfg)
    print(f"parameters {name}: {sum(r.params for r in p):,}; "
          f"multiply-adds {name}: {sum(r.madds for r in p):,}")

# -- 2 ------------------------------------------------------------------------------------------
lesson.step("Layer by layer: parameters and multiply-adds")
lesson.say("""A conv of K filters k x k over C maps (C/G of them per filter in G groups)
has K*(C/G)*k*k + K parameters and does that many multiply-adds (less the biases) at each
of its P x Q outputs; an FC layer from I to O has O*I + O. LeNet-5's C3 sees only the S2
maps of its connection table: 60 of the 96 (map, map) pairs.""")
for name, cfg in NETS.items():
    print(f"\n{name}")
    lesson.table(("layer", "output", "params", "multiply-adds"),
                 [(r.name, "x".join(map(str, r.out_shape)), f"{r.params:,}", f"{r.madds:,}")
                  for r in plan(cfg) if r.kind in WEIGHTED])

# -- 3 ------------------------------------------------------------------------------------------
lesson.step("Where the parameters live, and where the work is")
rows, shares = [], {}
for name, cfg in NETS.items():
    p = plan(cfg)
    fc = sum(r.params for r in p if r.kind == "fc")
    conv = sum(r.params for r in p if r.kind in ("conv", "subsample"))
    fc_m = sum(r.madds for r in p if r.kind == "fc")
    conv_m = sum(r.madds for r in p if r.kind in ("conv", "subsample"))
    shares[name] = (conv, fc, conv_m, fc_m)
    rows.append((name, f"{conv:,}", f"{fc:,}", f"{100 * fc / (conv + fc):.1f}%",
                 f"{100 * conv_m / (conv_m + fc_m):.1f}%"))
    print(f"FC share of {name}'s parameters: {100 * fc / (conv + fc):.1f}%")
lesson.table(("net", "conv params", "FC params", "FC share of params",
              "conv share of multiply-adds"), rows)
lesson.say("""From AlexNet on, the fully connected layers hold nearly all the parameters
(96% for AlexNet: fc6 alone, 9216 x 4096, is 62%) while the convolutions do nearly all the
work (92-99% of the multiply-adds). LeNet-5 is the other way round in parameters: its C5
already is a convolution (5x5 over 5x5 maps: an FC layer in all but name) and its F6 is
small. VGG-16 doubles AlexNet's parameters but multiplies its work by 21: depth lives in
the convolutions, where parameters are cheap and compute is not.""")

# -- 4 ------------------------------------------------------------------------------------------
lesson.step("The first layer: size, stride, receptive field, feature maps")
lesson.quote("Rather than using relatively large receptive fields in the first conv. layers "
             "(e.g. 11x11 with stride 4 in (Krizhevsky et al., 2012), or 7x7 with stride 2 in "
             "(Zeiler & Fergus, 2013; Sermanet et al., 2014)), we use very small 3x3 "
             "receptive fields throughout the whole net, which are convolved with the input "
             "at every pixel (with stride 1).", "sect. 2.3")
rows = []
for name, cfg in NETS.items():
    first = plan(cfg)[0]
    C, P, _ = first.out_shape
    print(f"first layer {name}: {first.kernel}x{first.kernel} stride {first.stride} -> "
          f"{P}x{P} maps, receptive field {first.rf}, jump {first.jump}")
    rows.append((name, f"{first.kernel}x{first.kernel}/{first.stride}", f"{C}x{P}x{P}",
                 first.rf, first.jump, f"{first.madds:,}"))
lesson.table(("net", "filter/stride", "output", "receptive field", "jump", "multiply-adds"),
             rows)
lesson.say("""The jump is the distance in input pixels between neighbouring outputs: the
stride. AlexNet's first layer looks at 11x11 patches but only every 4th one, so its 55x55
maps are coarse from the start; ZFNet shrinks both (7x7 at every 2nd pixel: 110x110 maps,
four times the positions, at 1.6 times AlexNet's cost in that layer); VGG's 3x3 sees every
pixel and leaves the growing of receptive fields to depth (two 3x3 layers see 5x5, three
see 7x7, lesson 1).""")
alex, zf = plan("AlexNet")[0], plan("ZFNet")[0]
print(f"ZFNet's first layer: {zf.out_shape[1] ** 2 / alex.out_shape[1] ** 2:.1f}x the positions "
      f"of AlexNet's, {zf.madds / alex.madds:.2f}x its multiply-adds")

# -- 5 ------------------------------------------------------------------------------------------
lesson.step("What a stride does to frequencies: aliasing")
lesson.say("""Zeiler & Fergus looked at AlexNet's first two layers and saw filters with
"a mix of extremely high and low frequency information, with little coverage of the mid
frequencies", and "aliasing artifacts caused by the large stride 4" (their sect. 4.1; the
compendium's ZFNet section). Sampling every s-th position folds every frequency above
1/(2s) cycles per pixel back below it. Below, a grating of f cycles per pixel goes through
each net's first conv (one filter with a single tap: just the sampling) via ops.conv2d on
this device, and we read the frequency of the output map with an FFT, in cycles per
input pixel.""")


def seen_frequency(f, kernel, stride, pad, n=224):
    """The dominant frequency (cycles per input pixel) in the output of a one-tap conv of
    `kernel` x `kernel`, `stride`, over a vertical grating of frequency f."""
    x = np.cos(2 * np.pi * f * np.arange(n))[None, None, None, :].repeat(8, axis=2)
    w = np.zeros((1, 1, kernel, kernel), np.float32)
    w[0, 0, kernel // 2, kernel // 2] = 1.0
    with no_grad():
        y = ops.conv2d(Tensor(backend.to_device(x.astype(np.float32))),
                       Tensor(backend.to_device(w)), Tensor(backend.to_device(np.zeros(1))),
                       stride, pad)
    row = backend.to_host(y.data)[0, 0, 0]
    spectrum = np.abs(np.fft.rfft(row - row.mean()))
    return np.argmax(spectrum) / len(row) / stride


freqs = (0.05, 0.1, 0.2, 0.3)
rows = []
for name, cfg in NETS.items():
    if name == "LeNet-5":
        continue
    first = plan(cfg)[0]
    seen = [seen_frequency(f, first.kernel, first.stride, first.padding) for f in freqs]
    rows.append((name, f"1/(2*{first.stride}) = {0.5 / first.stride:.3f}",
                 *(f"{s:.3f}" for s in seen)))
    for f, s in zip(freqs, seen):
        print(f"aliasing {name}: {f:.2f} cycles/pixel is seen as {s:.3f}")
lesson.table(("net", "highest frequency kept", *(f"f = {f}" for f in freqs)), rows)
lesson.say("""With stride 4, AlexNet's first layer sees a grating of 0.2 cycles/pixel as one
of 0.05: a fine pattern turns into a coarse one that is not in the image, and what the
filters can learn above 0.125 is folded onto the low frequencies. ZFNet's stride 2 keeps
everything up to 0.25; VGG's stride 1, everything. (A learned filter can blur before it
samples, which is anti-aliasing, but then those frequencies are lost instead.)""")

# -- 6 ------------------------------------------------------------------------------------------
lesson.step("AlexNet's two towers: what the grouped convolutions saved")
lesson.quote("The kernels of the second, fourth, and fifth convolutional layers are connected "
             "only to those kernel maps in the previous layer which reside on the same GPU "
             "(see Figure 2). The kernels of the third convolutional layer are connected to "
             "all kernel maps in the second layer.", "sect. 3.5", KRIZHEVSKY)
two, one = plan("AlexNet"), plan("AlexNet-1tower")
rows = []
for a, b in zip(two, one):
    if a.kind == "conv":
        rows.append((a.name, f"{a.spec.groups}", f"{a.params:,}", f"{b.params:,}",
                     f"{a.madds:,}", f"{b.madds:,}"))
lesson.table(("layer", "groups", "params (2 towers)", "params (1 tower)",
              "multiply-adds (2 towers)", "multiply-adds (1 tower)"), rows)
saved_p = sum(r.params for r in one) - sum(r.params for r in two)
saved_m = sum(r.madds for r in one) - sum(r.madds for r in two)
conv_two = sum(r.madds for r in two if r.kind == "conv")
conv_one = sum(r.madds for r in one if r.kind == "conv")
print(f"\ngrouped convolutions save {saved_p:,} parameters and {saved_m:,} multiply-adds "
      f"per image ({100 * (conv_one - conv_two) / conv_one:.0f}% of the conv work)")
lesson.say("""Groups of G halve (G = 2) a layer's weights and its work: each filter sees C/G
maps. AlexNet did it to split the net over two 3 GB GPUs, with the GPUs talking only at
conv3 and the FC layers; the saving, over a third of the conv work, was a side effect.
The towers also specialised: one GPU's conv1 filters came out largely colour-agnostic,
the other's colour-specific (sect. 6.1, Figure 3). In minivgg a grouped conv is the same
kernel, each group's GEMM tiled on its own (kernels/conv/); groups = channels is a
depthwise conv. Later nets made both a design principle: grouped convs in ResNeXt,
depthwise ones in MobileNet.""")
c3 = next(r for r in plan("LeNet-5") if r.name == "C3")
print(f"LeNet-5's C3: {c3.params:,} parameters through its connection table, "
      f"{16 * 6 * 25 + 16:,} fully connected")

# -- 7 ------------------------------------------------------------------------------------------
lesson.step("Figure: parameters and multiply-adds per layer")
plt = lesson.plt()
fig, axes = plt.subplots(2, 4, figsize=(18, 7.5))
for col, (name, cfg) in enumerate(NETS.items()):
    layers = [r for r in plan(cfg) if r.kind in WEIGHTED]
    colours = ["tab:red" if r.kind == "fc" else "tab:blue" for r in layers]
    for row, (what, values) in enumerate((("parameters", [r.params for r in layers]),
                                          ("multiply-adds", [r.madds for r in layers]))):
        ax = axes[row, col]
        ax.bar(range(len(layers)), values, color=colours)
        ax.set_yscale("log")
        ax.set_xticks(range(len(layers)))
        ax.set_xticklabels([r.name for r in layers], rotation=70, fontsize=7)
        ax.set_title(f"{name}: {what} ({sum(values):,.0f})", fontsize=9)
fig.suptitle("Per weight layer, log scale: blue conv (and LeNet's sub-sampling), red FC")
fig.tight_layout()
lesson.save(fig, "10_from_lenet_to_vgg.png")

lesson.done("""Why build on AlexNet, VGG or GoogLeNet (the compendium's last question)? Partly
habit and comparability (a known baseline), partly cost (a new design needs compute and
trials), and partly design: VGG's single rule -- 3x3, stride 1, double the channels after
each 2x2 pool -- scales, transfers (its features, Appendix B) and is easy to cut and
extend. `python -m minivgg.train --config LeNet-5 | AlexNet | ZFNet | D` trains each on
the built-in data; the README's table has what they reached on a CPU.""")
