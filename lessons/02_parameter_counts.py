"""Lesson 2: parameter counts -- deep but not big (paper sects. 2.2-2.3, Table 2).

Table 2 from the configurations alone, the 27 C^2 versus 49 C^2 argument for stacks of 3x3
filters, where the parameters live (the FC layers), and two nets to compare: AlexNet and
B-5x5 (B with each pair of 3x3 convs replaced by one 5x5, sect. 4.1).

    python lessons/02_parameter_counts.py [--no-pause] [--device cpu|sim|cuda] [--out DIR]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _lesson import Lesson  # noqa: E402

lesson = Lesson(__doc__)

import numpy as np  # noqa: E402

from minivgg.model import VGG, count_parameters, plan  # noqa: E402

# -- 1 ------------------------------------------------------------------------------------------
lesson.step("The claim")
lesson.quote("In spite of a large depth, the number of weights in our nets is not greater "
             "than the number of weights in a more shallow net with larger conv. layer "
             "widths and receptive fields (144M weights in (Sermanet et al., 2014)).",
             "sect. 2.2")
lesson.say("""Table 2 of the paper: A, A-LRN 133M; B 133M; C 134M; D 138M; E 144M.
Going from 11 to 19 weight layers adds only 8% to the parameters.""")

# -- 2 ------------------------------------------------------------------------------------------
lesson.step("Table 2, reproduced from the configurations")
lesson.say("""minivgg.model.count_parameters walks the layers of a configuration (Table 1
as data, minivgg/configs.py) and adds up weights and biases: a conv k x k from C to K
channels has K*C*k*k + K, an FC layer from I to O has O*I + O. Nothing is allocated.""")
print()
paper = {"A": 133, "A-LRN": 133, "B": 133, "C": 134, "D": 138, "E": 144}
rows = []
for c, m in paper.items():
    n = count_parameters(c)
    rows.append((c, f"{n:,}", f"{n / 1e6:.1f}", round(n / 1e6), m,
                 "yes" if round(n / 1e6) == m else "NO"))
lesson.table(("config", "parameters", "millions", "rounded", "Table 2", "match"), rows)
print()
for c in paper:
    print(f"parameters {c}: {count_parameters(c):,}")
lesson.say("""Check one by allocating it: a real VGG("A") at width 1/16 (channels 4..32)
has exactly as many parameters as the count says.""")
small = VGG("A", width=1 / 16, fc_width=64, num_classes=10, input_size=32)
print(f"allocated A at width 1/16: {small.num_parameters():,}; counted: "
      f"{count_parameters('A', width=1 / 16, fc_width=64, num_classes=10, input_size=32):,}")

# -- 3 ------------------------------------------------------------------------------------------
lesson.step("Three 3x3 layers versus one 7x7: 27 C^2 versus 49 C^2")
lesson.quote("assuming that both the input and the output of a three-layer 3x3 convolution "
             "stack has C channels, the stack is parametrised by 3(3^2 C^2) = 27C^2 weights; "
             "at the same time, a single 7x7 conv. layer would require 7^2 C^2 = 49C^2 "
             "parameters, i.e. 81% more.", "sect. 2.3")
three, one = 3 * 3 * 3, 7 * 7
print(f"\nthree 3x3 layers: 3 * 3^2 = {three} C^2 weights; one 7x7 layer: 7^2 = {one} C^2")
print(f"one 7x7 has {100 * (one - three) / three:.0f}% more ({one}/{three} = {one / three:.3f})")
rows = []
for C in (64, 256, 512):
    a, b = three * C * C, one * C * C
    rows.append((C, f"{a:,}", f"{b:,}", f"{100 * (b - a) / a:.1f}%"))
lesson.table(("C", "3 x conv3 (27 C^2)", "conv7 (49 C^2)", "more"), rows)
lesson.say("""Both see 7x7 pixels (lesson 1). The stack has three ReLUs instead of one, and
45% fewer weights: "a regularisation on the 7x7 conv. filters, forcing them to have a
decomposition through the 3x3 filters" (sect. 2.3).""")

# -- 4 ------------------------------------------------------------------------------------------
lesson.step("Where the parameters live")
rows, shares = [], {}
for c in ["A", "B", "C", "D", "E", "B-5x5", "AlexNet-1tower"]:
    p = plan(c)
    conv = sum(r.params for r in p if r.kind == "conv")
    fc = sum(r.params for r in p if r.kind == "fc")
    fc6 = next(r.params for r in p if r.name == "fc6")
    shares[c] = (conv, fc)
    rows.append((c, f"{conv + fc:,}", f"{conv:,}", f"{fc:,}", f"{100 * fc / (conv + fc):.0f}%",
                 f"{100 * fc6 / (conv + fc):.0f}%"))
lesson.table(("config", "total", "conv", "FC", "FC share", "fc6 share"), rows)
d = plan("D")
fc6 = next(r for r in d if r.name == "fc6")
print(f"\nD fc6 alone: {fc6.params:,} parameters (512*7*7 inputs x 4096 outputs)")
print(f"D FC share: {100 * shares['D'][1] / sum(shares['D']):.1f}%")
lesson.say("""Depth costs little because the conv layers are cheap in parameters: all 13
conv layers of D hold 14.7M, the three FC layers 123.6M -- 89%, fc6 alone 74%. The
extra conv layers of E over A add 10.8M. AlexNet (single tower) has 62M parameters, 94% of
them in its FC layers too (its conv1 is 11x11 stride 4; its fc6 sees 256*6*6). B-5x5, the
paper's shallow check (sect. 4.1), has MORE parameters than B (each 5x5 is 25 C^2 against
18 C^2 for two 3x3) and did worse: top-1 error 7% higher than B's in the paper.""")
print(f"\nparameters AlexNet-1tower: {count_parameters('AlexNet-1tower'):,} (as published, "
      f"in two towers: {count_parameters('AlexNet'):,}; lesson 10)")
print(f"parameters B-5x5: {count_parameters('B-5x5'):,} (B: {count_parameters('B'):,})")

# -- 5 ------------------------------------------------------------------------------------------
lesson.step("Figure: parameters per layer")
plt = lesson.plt()
fig, axes = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [2.2, 1]})
ax = axes[0]
weighted = [r for r in d if r.params]
colours = ["tab:blue" if r.kind == "conv" else "tab:red" for r in weighted]
ax.bar(range(len(weighted)), [r.params / 1e6 for r in weighted], color=colours)
ax.set_xticks(range(len(weighted)))
ax.set_xticklabels([r.name for r in weighted], rotation=60, ha="right", fontsize=8)
ax.set_yscale("log")
ax.set_ylabel("parameters (millions, log scale)")
ax.set_title("Configuration D, per layer (blue conv, red FC)")
for i, r in enumerate(weighted):
    ax.text(i, r.params / 1e6 * 1.1, f"{r.params / 1e6:.2g}", ha="center", fontsize=7)
ax = axes[1]
names = list(shares)
conv = np.array([shares[c][0] for c in names]) / 1e6
fc = np.array([shares[c][1] for c in names]) / 1e6
ax.bar(names, conv, color="tab:blue", label="conv")
ax.bar(names, fc, bottom=conv, color="tab:red", label="FC")
for i, c in enumerate(names):
    ax.text(i, conv[i] + fc[i] + 2, f"{conv[i] + fc[i]:.0f}M", ha="center", fontsize=8)
ax.set_ylabel("parameters (millions)")
ax.set_title("Per configuration: conv vs FC")
ax.tick_params(axis="x", rotation=45)
ax.legend()
lesson.save(fig, "02_parameter_counts.png")

lesson.done("""What it means: going deeper with 3x3 filters is nearly free in parameters --
the classifier dominates the count. Where the memory and the compute go is another story
(lesson 7).""")
