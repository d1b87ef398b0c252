"""Lesson 11: why 1x1 convolutions -- VGG's config C, NiN's mlpconv, Inception's reductions.

Three nets of 2013-14 put 1x1 convolutions to three uses: VGG's configuration C adds a
non-linearity without widening the receptive field (sect. 2.3); NiN (Lin et al. 2014) slides
a small MLP over the image (a spatial conv, then two 1x1 convs) and ends in global average
pooling instead of fully connected layers; GoogLeNet (Szegedy et al. 2014) puts a 1x1
"reduction" before each 3x3 and 5x5 of its Inception modules. Every number below is
computed from minivgg's own nets (model.plan, the same rows as `--summary`), no training
and no kernel launch: what the 1x1 layers cost, what the reductions save, what global
average pooling saves, and the survey's closing question (why later networks build on
AlexNet, VGG and GoogLeNet) answered in numbers.

    python lessons/11_inception_and_nin.py [--no-pause] [--device cpu|sim|cuda] [--out DIR]
"""
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _lesson import Lesson  # noqa: E402

lesson = Lesson(__doc__)

from minivgg.model import plan  # noqa: E402

SZEGEDY = "Szegedy et al., Going deeper with convolutions, CVPR 2015"
WEIGHTED = ("conv", "fc")  # the layers a paper counts as its depth
NETS = {"LeNet-5": "LeNet-5", "AlexNet": "AlexNet", "ZFNet": "ZFNet", "VGG-16": "D",
        "NiN": "NiN", "GoogLeNet": "GoogLeNet"}
# Published top-5 errors (%), ILSVRC classification without outside training data, from
# VGG's Table 7: (ensemble, one net). VGG-16 alone: D in Table 5 (multi-crop & dense, val).
# LeNet-5 read digits; NiN's paper reports CIFAR, SVHN and MNIST only: no ImageNet figure.
TOP5 = {"LeNet-5": ("-", "-"), "AlexNet": ("16.4 (5 nets)", "18.2"),
        "ZFNet": ("14.8 (6 nets)", "16.1"), "VGG-16": ("6.8 (2 nets, D+E)", "7.2"),
        "NiN": ("-", "-"), "GoogLeNet": ("6.7 (7 nets)", "7.9")}


def rows_of(config):
    """model.plan's rows of the net as it runs at test time: GoogLeNet's auxiliary
    classifiers (rows aux1.*, aux2.*) are discarded at inference (Szegedy et al. sect. 5)."""
    return [r for r in plan(config) if not r.index.startswith("aux")]


def total(rows, what="params"):
    return sum(getattr(r, what) for r in rows)


def under(rows, prefix):
    """The rows of one module (index 'inception3a' -> 'inception3a.branch2.1.conv', ...)."""
    return [r for r in rows if r.index.startswith(prefix + ".")]


def depth(rows):
    """(weight layers on the longest path, weight layers in all). Branches side by side
    add their longest branch only: an Inception module is 2 deep (1x1 reduce, then 3x3)."""
    chain, branches = 0, defaultdict(lambda: defaultdict(int))
    for r in rows:
        if r.kind not in WEIGHTED:
            continue
        module, branch = (r.index.split(".") + ["", ""])[:2]
        if branch.startswith("branch"):
            branches[module][branch] += 1
        else:
            chain += 1
    longest = chain + sum(max(b.values()) for b in branches.values())
    return longest, sum(r.kind in WEIGHTED for r in rows)


goog = rows_of("GoogLeNet")  # the Inception modules of steps 3 to 5
BRANCHES = ("1x1", "1x1 reduce -> 3x3", "1x1 reduce -> 5x5", "3x3 max-pool -> 1x1 proj")


def branch_costs(module, C_in=None):
    """Per branch of inception `module` ('3a'): (name, (multiply-adds, maps, params) with its
    reductions, the plan's rows; the same without them: the branch's last conv over all
    C_in input maps (default: the module's own input), or for the pool branch the pool
    alone, which passes C_in maps on and does no multiply-add)."""
    rows = under(goog, f"inception{module}")
    C, H, W = next(r for r in rows if r.kind == "pool").out_shape  # the pool keeps C, H, W
    C_in = C_in or C
    out = []
    for b, name in enumerate(BRANCHES, 1):
        branch = [r for r in rows if r.index.startswith(f"inception{module}.branch{b}.")]
        convs = [r for r in branch if r.kind == "conv"]
        last, pooled = convs[-1], any(r.kind == "pool" for r in branch)
        K, k = last.out_shape[0], last.kernel
        without = ((0, C_in, 0) if pooled else
                   (K * C_in * k * k * H * W, K, (C_in * k * k + 1) * K))
        out.append((name, (total(convs, "madds"), K, total(convs)), without))
    return (C, H, W), out


def module_costs(module, C_in=None):
    """(input shape, (multiply-adds, maps, params) with the reductions, the same without)."""
    shape, branches = branch_costs(module, C_in)
    return shape, *(tuple(sum(b[i][j] for b in branches) for j in range(3)) for i in (1, 2))


# -- 1 ------------------------------------------------------------------------------------------
lesson.step("VGG's configuration C: 1x1 layers where D has 3x3")
lesson.quote("The incorporation of 1x1 conv. layers (configuration C, Table 1) is a way to "
             "increase the non-linearity of the decision function without affecting the "
             "receptive fields of the conv. layers.", "sect. 2.3")
lesson.say("""C is B plus one conv at the end of blocks 3, 4 and 5; D puts a 3x3 where C
has a 1x1. A 1x1 conv of K filters over C maps has C*K + K parameters and C*K
multiply-adds per output pixel, a 3x3 nine times that: (9C + 1) K. Below, the three
layers from model.plan("C") and plan("D") at the same places.""")
C_rows, D_rows = plan("C"), plan("D")
rows, sums = [], defaultdict(int)
for c, d in zip(C_rows, D_rows):
    if c.kind == "conv" and c.kernel == 1:
        print(f"C {c.name} (1x1): {c.params:,} parameters, {c.madds:,} multiply-adds; "
              f"D {d.name} (3x3): {d.params:,}, {d.madds:,}")
        rows.append((c.name, "x".join(map(str, c.out_shape)), f"{c.params:,}", f"{d.params:,}",
                     f"{c.madds:,}", f"{d.madds:,}", f"{c.rf} / {d.rf}"))
        for key, v in (("cp", c.params), ("dp", d.params), ("cm", c.madds), ("dm", d.madds)):
            sums[key] += v
print()
lesson.table(("layer", "output", "params C (1x1)", "params D (3x3)", "multiply-adds C",
              "multiply-adds D", "receptive field C / D"), rows)
print(f"\nC's three 1x1 layers: {sums['cp']:,} parameters, {sums['cm']:,} multiply-adds; "
      f"D's 3x3 at the same places: {sums['dp']:,}, {sums['dm']:,} "
      f"({sums['dm'] / sums['cm']:.1f}x the work)")
B_rows = plan("B")
print(f"parameters B: {total(B_rows):,}; C: {total(C_rows):,}; D: {total(D_rows):,}")
rf5 = {n: next(r.rf for r in rs if r.name == "pool5")
       for n, rs in (("B", B_rows), ("C", C_rows), ("D", D_rows))}
print(f"pool5 receptive field: B {rf5['B']}, C {rf5['C']}, D {rf5['D']}")
lesson.say(f"""The 1x1s are cheap: C costs B only their {sums['cp']:,} parameters
({100 * sums['cp'] / total(B_rows):.1f}%) and leaves B's receptive field as it is
({rf5['C']} at pool5, D {rf5['D']}: lesson 3). What they buy, Table 3
measures: at S = 256, top-5 error B 9.9%, C 9.4%, D 8.8% -- the extra non-linearity
helps, "it is also important to capture spatial context" (sect. 4.1): D beats C. The rest
of this lesson is about 1x1s whose job is not the non-linearity but the channel count.""")

# -- 2 ------------------------------------------------------------------------------------------
lesson.step("NiN's mlpconv: a spatial conv, then two 1x1 convs")
lesson.say("""Lin et al. replace a conv's linear filter by a small MLP slid over the image
(their Fig. 2; the compendium's sect. 0.12): each window's conv outputs go through two
more fully connected layers, shared across windows -- i.e. two 1x1 convs (cccp in their
Caffe files), a ReLU after each. minivgg's NiN is the ImageNet model (minivgg/nin.py):
four mlpconv blocks; the last one's second 1x1 gives one map per class.""")
nin = rows_of("NiN")
rows = []
for b in range(1, 5):
    block = [r for r in under(nin, f"mlpconv{b}") if r.kind == "conv"]
    spatial, ones = block[0], block[1:]
    p1, m1 = total(ones), total(ones, "madds")
    rows.append((f"mlpconv{b}", f"{spatial.kernel}x{spatial.kernel}/{spatial.stride}",
                 "x".join(map(str, spatial.out_shape)), f"{spatial.params:,}", f"{p1:,}",
                 f"{spatial.madds:,}", f"{m1:,}", " ".join(str(r.rf) for r in block)))
    print(f"NiN mlpconv{b}: spatial conv {spatial.params:,} parameters {spatial.madds:,} "
          f"multiply-adds; two 1x1 convs {p1:,} parameters {m1:,} multiply-adds")
print()
lesson.table(("block", "conv", "output", "params conv", "params 1x1s", "multiply-adds conv",
              "multiply-adds 1x1s", "receptive fields"), rows)
ones = [r for r in nin if r.kind == "conv" and r.kernel == 1]
share_p, share_m = total(ones) / total(nin), total(ones, "madds") / total(nin, "madds")
print(f"\nparameters NiN: {total(nin):,}; multiply-adds NiN: {total(nin, 'madds'):,}")
print(f"NiN's eight 1x1 convs: {100 * share_p:.1f}% of its parameters, "
      f"{100 * share_m:.1f}% of its multiply-adds")
lesson.say(f"""The 1x1s keep each block's receptive field (the last column: the same number
three times) and do {100 * share_m:.0f}% of the work. Here they keep the width (96 -> 96,
like C's); in the last block the second one maps 1024 channels to 1000 class maps, which is where
step 4 picks up. GoogLeNet took the 1x1 from NiN, but for another job.""")

# -- 3 ------------------------------------------------------------------------------------------
lesson.step("Inception: what the 1x1 reductions save")
(C3, H3, W3), b3 = branch_costs("3a")
lesson.say(f"""An Inception module (Szegedy et al. sect. 4, Fig. 2) runs a 1x1, a 3x3, a 5x5
conv and a 3x3 max-pool side by side on the same input and concatenates their maps. In
the "naive" version (Fig. 2a) the 3x3 and 5x5 see all C input maps, and the pool's C maps
go straight into the concatenation; the version GoogLeNet uses (Fig. 2b) puts a 1x1
"reduce" before the 3x3 and the 5x5 and a 1x1 "pool proj" after the pool. A k x k conv of
K filters over C maps of H x W costs

    K * C * k * k * H * W  multiply-adds,

so at each output position 3a's 5x5 branch ({b3[2][1][1]} maps) costs
{b3[2][2][0] // (H3 * W3):,} multiply-adds over all {C3} input maps,
{b3[2][1][0] // (H3 * W3):,} through its 1x1 reduction. The branches below are
model.plan("GoogLeNet")'s rows (Table 1's widths); "without" is the same module with the
reductions and the projection left out.""")
for module in ("3a", "4a"):
    (C, H, W), branches = branch_costs(module)
    print(f"\ninception_{module}: input {C} maps of {H}x{W}")
    lesson.table(("branch", "multiply-adds with", "maps", "multiply-adds without", "maps"),
                 [(n, f"{w[0]:,}", w[1], f"{wo[0]:,}", wo[1]) for n, w, wo in branches])
    _, (mw, cw, pw), (mwo, cwo, pwo) = module_costs(module)
    print(f"inception_{module} multiply-adds: with reductions {mw:,}, without {mwo:,}, "
          f"saved {mwo / mw:.2f}x")
    print(f"inception_{module} output maps: with reductions {cw}, without {cwo}; "
          f"parameters with {pw:,}, without {pwo:,}")
naive_3a = module_costs("3a")[2][1]
lesson.say(f"""\nThe reductions cost a little (a 1x1 conv before the 3x3 and the 5x5) and
save most of the 3x3's and nearly all the 5x5's work. And the naive module has a second
problem: its pool branch passes all C maps on, so its output is wider than its input
({naive_3a} > {C3} for 3a) and the next module is more expensive again -- "an inevitable increase
in the number of outputs from stage to stage" (Szegedy et al. sect. 4).""")
modules = [r.index[len("inception"):] for r in goog if r.kind == "concat"]
rows, chain, C_naive = [], defaultdict(int), None
for m in modules:
    (C, H, W), (mw, cw, _), (mwo, _, _) = module_costs(m)
    # The naive chain: this module's convs see the previous naive module's output maps,
    # and its pool passes them all on (the chain starts from the stem's 192).
    C_naive = C_naive or C
    _, _, (naive, C_next, _) = module_costs(m, C_naive)
    chain["with"] += mw
    chain["without"] += mwo
    chain["chained"] += naive
    rows.append((f"inception_{m}", f"{C}x{H}x{W}", f"{mw:,}", f"{mwo:,}", f"{mwo / mw:.2f}x",
                 f"{C_naive}", f"{naive:,}", C_next))
    C_naive = C_next
lesson.table(("module", "input", "multiply-adds with", "without (same input)", "saved",
              "naive chain: in", "multiply-adds", "out"), rows)
print(f"\nnine modules, multiply-adds: with reductions {chain['with']:,}, without "
      f"{chain['without']:,} ({chain['without'] / chain['with']:.2f}x); naive modules "
      f"stacked {chain['chained']:,} ({chain['chained'] / chain['with']:.1f}x), "
      f"inception_5b giving {C_naive} maps instead of {cw}")
print(f"parameters GoogLeNet: {total(goog):,}; multiply-adds GoogLeNet: "
      f"{total(goog, 'madds'):,}")
lesson.say(f"""The "naive chain" stacks Fig. 2(a) modules as GoogLeNet stacks its own: each
one's convs see the previous naive module's output (every conv's cost grows with its
input maps). GoogLeNet's designers kept a budget of about 1.5 billion multiply-adds per
image at inference (their sect. 1); the whole net, as planned here, does
{total(goog, 'madds') / 1e9:.2f} billion. Without the reductions the nine modules alone
would cost {chain['chained'] / total(goog, 'madds'):.1f} times that.""")

# -- 4 ------------------------------------------------------------------------------------------
lesson.step("Global average pooling vs fully connected layers")
lesson.say("""NiN's last 1x1 conv makes one map per class and a global average pooling
makes each map that class's score: "no parameter to optimize" (Lin et al. sect. 3.2). VGG
flattens 7x7x512 into three FC layers (fc6 alone: 25088 x 4096); GoogLeNet averages its
7x7x1024 maps (a 7x7 average pool) and keeps one linear layer, 1024 x 1000.""")
rows, fc_share = [], {}
for name in ("AlexNet", "VGG-16", "NiN", "GoogLeNet"):
    net = rows_of(NETS[name])
    fc = total([r for r in net if r.kind == "fc"])
    fc_share[name] = fc / total(net)
    print(f"FC parameters {name}: {fc:,} of {total(net):,} ({100 * fc_share[name]:.1f}%)")
    rows.append((name, f"{total(net) - fc:,}", f"{fc:,}", f"{total(net):,}",
                 f"{100 * fc_share[name]:.1f}%"))
print()
lesson.table(("net", "conv params", "FC params", "all params", "FC share"), rows)
vgg = rows_of("D")
last_maps = [r for r in vgg if r.kind == "conv"][-1].out_shape[0]
classes = [r for r in vgg if r.kind == "fc"][-1].out_shape[0]
gap_vgg = total([r for r in vgg if r.kind == "conv"]) + (last_maps + 1) * classes
print(f"\nVGG-16 with global average pooling and one FC {last_maps} -> {classes}: "
      f"{gap_vgg:,} parameters ({total(vgg) / gap_vgg:.1f}x fewer)")
cccp8 = next(r for r in nin if r.name == "cccp8")
print(f"NiN's class maps (cccp8, 1x1 conv {cccp8.out_shape[0]} maps): {cccp8.params:,} "
      f"parameters; its global average pooling: 0")
fc_vgg = [r for r in vgg if r.kind == "fc"]
lesson.say(f"""VGG-16's three FC layers hold {100 * fc_share['VGG-16']:.0f}% of its parameters
and do {100 * total(fc_vgg, 'madds') / total(vgg, 'madds'):.1f}% of its work (lesson 10).
Averaging first and classifying after (GoogLeNet), or classifying each position with a
1x1 and averaging after (NiN; without the ReLU it puts on its class maps the two orders
would give the same scores: an average and a linear map commute) replaces
{total(fc_vgg) / 1e6:.0f} million parameters by {cccp8.params / 1e6:.1f} million. It also
makes the net fully convolutional: VGG gets the same effect at test time by turning its FC
layers into convs and averaging the class score map (sect. 3.2, lesson 4), but still
carries their weights.""")

# -- 5 ------------------------------------------------------------------------------------------
lesson.step("Six nets side by side, and the survey's closing question")
rows, stats = [], {}
for name, cfg in NETS.items():
    net = rows_of(cfg)
    longest, layers = depth(net)
    fc_params = total([r for r in net if r.kind == "fc"])
    stats[name] = (total(net), total(net, "madds"), fc_params)
    fc = fc_params / total(net)
    print(f"closing {name}: {total(net):,} parameters, {total(net, 'madds'):,} "
          f"multiply-adds, depth {longest} ({layers} weight layers), FC share {100 * fc:.1f}%")
    rows.append((name, f"{total(net):,}", f"{total(net, 'madds'):,}", f"{longest}",
                 f"{layers}", f"{100 * fc:.1f}%", *TOP5[name]))
print()
lesson.table(("net", "parameters", "multiply-adds", "depth", "weight layers", "FC share",
              "top-5 % (ensemble)", "top-5 % (1 net)"), rows)
lesson.say("""Depth counts the weight layers on the longest path, as the papers do
(GoogLeNet "22 layers deep when counting only layers with parameters": its modules are 2
deep but hold 6 convs each). Top-5 errors: VGG's Table 7 (ILSVRC test, no outside
training data; "1 net" is validation error for AlexNet, VGG-16 (D alone, Table 5) and
GoogLeNet). With outside data AlexNet reached 15.3% (Krizhevsky et al. sect. 6) and GoogLeNet's own
paper gives 6.67% (the compendium: 6.65%).""")
lesson.quote("Our GoogLeNet submission to ILSVRC 2014 actually uses 12x fewer parameters "
             "than the winning architecture of Krizhevsky et al [9] from two years ago, "
             "while being significantly more accurate.", "sect. 1", SZEGEDY)
(pa, ma, _), (pv, mv, _), (pg, mg, _) = (stats[n] for n in ("AlexNet", "VGG-16", "GoogLeNet"))
print(f"GoogLeNet vs AlexNet: {pa / pg:.1f}x fewer parameters, {mg / ma:.1f}x the "
      "multiply-adds")
print(f"VGG-16 vs AlexNet: {pv / pa:.1f}x the parameters, {mv / ma:.1f}x the multiply-adds")
print(f"VGG-16 vs GoogLeNet: {pv / pg:.1f}x the parameters, {mv / mg:.1f}x the multiply-adds")
# VGG sect. 3.1: 370K iterations of batch 256; a training step costs about three forward
# passes (forward, the gradient with respect to the input, the one to the weights).
train = 370_000 * 256 * 3 * mv
print(f"training VGG-16 once: about {train:.1e} multiply-adds (370K iterations x 256 "
      "images x 3 passes)")
lesson.say(f"""By the parameters here GoogLeNet has {pa / pg:.1f} times fewer than AlexNet, not
12 (its own Table 1 adds up to about 6.8 million; 12x would take {pa / 12 / 1e6:.1f}
million). The compendium answers its closing question (sect. 0.15) with reasons of
practice: a standard baseline makes results comparable, time and compute are limited, a
new base architecture takes many experiments, and few groups can afford them. In numbers:

* Comparable: AlexNet, ZFNet, VGG and GoogLeNet are the rows of VGG's Table 7 (and of most
comparison tables since); from AlexNet (16.4%) to VGG and GoogLeNet (6.8%, 6.7%) the top-5
error fell by more than half in two years: a new idea is measured on them.

* Expensive to replace: one VGG-16 run is about {train:.1e} multiply-adds, 2-3 weeks on four
Titan Black GPUs (VGG sect. 3.3); a search over architectures multiplies it.

* Each gave a reusable rule rather than a one-off design. AlexNet: ReLU, dropout, GPUs.
VGG: only 3x3 convs, stride 1, stacked (two 3x3 = 18 C^2 weights where a 5x5 has 25;
lesson 2); one rule to scale, cut and transfer. GoogLeNet (from NiN): 1x1 reductions (its
modules do 1/{chain['without'] / chain['with']:.1f} of the work of naive ones on the same
inputs, 1/{chain['chained'] / chain['with']:.0f} of a naive stack's) and averaging instead
of FC layers (an FC share of {100 * fc_share['GoogLeNet']:.0f}%, not
{100 * fc_share['VGG-16']:.0f}%): VGG's accuracy for 1/{mv / mg:.0f} of its work and
1/{pv / pg:.0f} of its parameters.""")

# -- 6 ------------------------------------------------------------------------------------------
lesson.step("Figure: what the reductions save, and where the parameters live")
plt = lesson.plt()
fig, axes = plt.subplots(1, 3, figsize=(18, 5))
for ax, module in zip(axes[:2], ("3a", "4a")):
    _, branches = branch_costs(module)
    x = range(len(branches))
    ax.bar([i - 0.2 for i in x], [w[0] / 1e6 for _, w, _ in branches], 0.4,
           label="with 1x1 reductions (Fig. 2b)", color="tab:blue")
    ax.bar([i + 0.2 for i in x], [wo[0] / 1e6 for _, _, wo in branches], 0.4,
           label="without (Fig. 2a)", color="tab:red")
    ax.set_xticks(list(x))
    ax.set_xticklabels([n.replace(" -> ", "\n-> ") for n, _, _ in branches], fontsize=8)
    ax.set_ylabel("million multiply-adds per image")
    ax.set_title(f"inception_{module}: multiply-adds per branch")
    ax.legend(fontsize=8)
ax, names = axes[2], list(NETS)
fc_p = [stats[n][2] / 1e6 for n in names]
conv_p = [stats[n][0] / 1e6 - f for n, f in zip(names, fc_p)]
ax.bar(names, conv_p, color="tab:blue", label="conv (and sub-sampling)")
ax.bar(names, fc_p, bottom=conv_p, color="tab:red", label="fully connected")
ax.set_ylabel("million parameters")
ax.set_title("Parameters: conv vs FC")
ax.legend(fontsize=8)
ax.tick_params(axis="x", labelsize=8)
fig.tight_layout()
lesson.save(fig, "11_inception_and_nin.png")

lesson.done("""A 1x1 conv is a matrix product over channels at every pixel (lesson 3). With
as many outputs as inputs it adds a non-linearity for little (C, NiN); with fewer it is a
reduction that makes the 3x3 and 5x5 after it affordable (Inception); with one map per
class it replaces the FC layers, averaged over the image (NiN). `python -m minivgg.train
--config NiN` or `--config GoogLeNet` trains either on the built-in data.""")
