"""Table 1 of the paper as data: the feature stacks of configurations A to E, and the classic
nets VGG grew out of (the compendium ../shared/papers/alexnet-and-classic-cnns.txt).

Notation (torchvision's lists, extended):

    64            a 3x3 conv, stride 1, padding 1, with 64 output channels, then ReLU
    Conv(256, 1)  a conv with another kernel (here 1x1, config C); padding defaults to
                  kernel // 2, which keeps the spatial size at stride 1 (sect. 2.1);
                  groups=2 for AlexNet's two towers; table= for LeNet-5's C3
    'M'           max-pooling, 2x2 window, stride 2 (sect. 2.1)
    Pool(3, 2)    max-pooling with another window / stride (AlexNet's overlapping 3x3/2);
                  ceil=True rounds the output size up, as Caffe does (ZFNet's sizes)
    Subsample(2)  LeNet-5's trainable sub-sampling (2x2 average x coefficient + bias)
    'LRN'         local response normalisation with AlexNet's constants (size 5, k 2,
                  alpha 1e-4, beta 0.75; sect. 2.1 "the parameters ... are those of
                  Krizhevsky et al."), placed after the ReLU as in AlexNet sect. 3.3

Every conv is followed by a ReLU (Table 1 leaves it out "for brevity"), or by the config's
`activation` (LeNet-5: tanh, after its sub-samplings too). The classifier, FC-4096, FC-4096,
FC-1000 and soft-max, is the same for every VGG configuration (sect. 2.1) and AlexNet's and
ZFNet's; LeNet-5's is F6-84, output-10. model.py builds it from `fc_names` (one hidden FC
layer fewer than names) and `fc_width`, with dropout after the hidden ones if `dropout`.

Configurations:
    A, A-LRN, B, C, D, E   Table 1 (A-LRN: LRN after the first conv; C: a 1x1 conv closes
                           blocks 3, 4 and 5)
    B-5x5                  sect. 4.1: B with each pair of 3x3 convs replaced by one 5x5
                           conv (padding 2), the same receptive field with fewer
                           non-linearities; five 5x5 conv layers
    AlexNet                Krizhevsky et al. 2012 sect. 3.5 and Figure 2, as published:
                           96, 256, 384, 384, 256 channels in two towers, one per GPU:
                           conv2, conv4 and conv5 see only the maps of their own GPU
                           (groups=2, sect. 3.2), conv3 and the FC layers all of them.
                           60,965,224 parameters. conv1 is 11x11 stride 4; we pad it by 2,
                           which makes 224 inputs give 55x55 maps as the paper's figure
                           does (Caffe's 227 with no padding gives the same). LRN after
                           conv1 and conv2 (after their ReLUs), 3x3 stride-2 overlapping
                           max-pooling after both LRNs and conv5 (sect. 3.4). At 224 the
                           last feature map is 6x6, so FC1 takes 256*6*6 inputs; model.py
                           computes that side, it does not assume input_size / 32.
    AlexNet-1tower         the same with the towers merged: every kernel sees all of the
                           previous layer's maps (62,378,344 parameters); what minivgg
                           called AlexNet before it had grouped convolutions.
    ZFNet                  Zeiler & Fergus 2013 as the compendium describes it: AlexNet (one
                           GPU, so no groups) with a 7x7 stride-2 first layer (pad 1: 224
                           -> 110) and a stride-2 second layer (55 -> 26); the max-pools
                           round up as in its Caffe-style implementation (110 -> 55, 26 ->
                           13) and, as in its Fig. 3, the maps are normalised after the
                           pooling. 62,357,608 parameters.
    LeNet-5                LeCun et al. 1998 as the compendium's table has it: 32x32x1
                           input, C1 5x5x6, S2, C3 5x5x16 through the connection table
                           C3_TABLE, S4, C5 5x5x120, F6 84, output 10; tanh after every
                           conv and sub-sampling layer and F6. 60,850 parameters.

Nets that are not chains are Module classes, not layer lists; their entries here name the
file (`module`) and hold the defaults:
    NiN                    Lin et al. 2014, the ImageNet model: four mlpconv blocks (a
                           spatial conv and two 1x1 convs, ReLU after each), max-pooling
                           and dropout between them, global average pooling over one map
                           per class; no FC layer (minivgg/nin.py). 7,595,176 parameters.
    GoogLeNet              Szegedy et al. 2014, Table 1: the stem, nine Inception modules,
                           7x7 average pooling, dropout 0.4, one FC layer; two auxiliary
                           classifiers on 4a and 4d for training (minivgg/googlenet.py).
                           6,998,552 parameters without them, 13,378,280 with.
"""
from dataclasses import dataclass

import numpy as np

from minivgg.errors import UserError


class ConfigError(UserError, ValueError):
    """A bad model definition (unknown config, a width or input size that cannot work).

    A UserError (one line, for the command lines) that is also a ValueError, so library
    callers can catch it as the bad argument it is.
    """


@dataclass(frozen=True)
class Conv:
    """A conv layer (followed by the config's activation): out channels, kernel, stride,
    padding; `groups` as PyTorch's; `table`, a connection table (rows: input maps,
    columns: output maps, "X" where one sees the other), for a masked conv."""
    channels: int
    kernel: int = 3
    stride: int = 1
    padding: int = None  # None: kernel // 2 ("same" size at stride 1, sect. 2.1)
    groups: int = 1
    table: tuple = None

    @property
    def pad(self):
        return self.kernel // 2 if self.padding is None else self.padding

    def connections(self):
        """The table as a (channels, inputs) 0/1 array (output map k sees input c), or None."""
        if self.table is None:
            return None
        return np.array([[ch == "X" for ch in row] for row in self.table], np.float32).T


@dataclass(frozen=True)
class Pool:
    """Max-pooling: window x window, `stride` apart (sect. 2.1: 2x2, stride 2); `ceil`
    rounds the output size up (a last, clipped window)."""
    window: int = 2
    stride: int = 2
    ceil: bool = False


@dataclass(frozen=True)
class Subsample:
    """LeNet-5's trainable sub-sampling: window average x coefficient + bias, per map."""
    window: int = 2
    stride: int = 2


@dataclass(frozen=True)
class Norm:
    """Local response normalisation across channels, AlexNet's constants (its sect. 3.3)."""
    size: int = 5
    k: float = 2.0
    alpha: float = 1e-4
    beta: float = 0.75


@dataclass(frozen=True)
class Config:
    """A named net. `naming`: "blocks" names convs conv<block>_<i> (VGG), "numbered"
    conv<i> (AlexNet, ZFNet), "lenet" C<l>, S<l> by layer (LeNet-5). The defaults of a
    model built from it: input channels and side, FC width, classes."""
    name: str
    layers: tuple
    description: str
    naming: str = "blocks"
    activation: str = "relu"
    fc_names: tuple = ("fc6", "fc7", "fc8")
    dropout: bool = True
    in_channels: int = 3
    input_size: int = 224
    fc_width: int = 4096
    num_classes: int = 1000
    module: str = None  # a net that is not a chain: its file in minivgg/ (nin, googlenet)

    @property
    def blocks(self):
        return self.naming == "blocks"


M = "M"
LRN = "LRN"

# LeNet-5's S2 -> C3 connections (LeCun et al. 1998, Table I; the compendium's table): a
# row per S2 map, a column per C3 map. Maps 0-5 see 3 contiguous maps, 6-11 4 contiguous,
# 12-14 4 not contiguous, 15 all 6: 6*3 + 6*4 + 3*4 + 6 = 60 connections.
C3_TABLE = ("X   XXX  XXXX XX",
            "XX   XXX  XXXX X",
            "XXX   XXX  X XXX",
            " XXX  XXXX  X XX",
            "  XXX  XXXX XX X",
            "   XXX  XXXX XXX")

_A = [64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M]
_B = [64, 64, M, 128, 128, M, 256, 256, M, 512, 512, M, 512, 512, M]

# torchvision's cfgs "A", "B", "D", "E" are exactly these lists, so the layer indices (and
# with them the parameter names features.N.weight) match vgg11, vgg13, vgg16 and vgg19.
_TABLE = {
    "A": (_A, "Table 1 A: 8 conv + 3 FC = 11 weight layers (torchvision vgg11)"),
    "A-LRN": ([64, LRN] + _A[1:], "Table 1 A-LRN: A with LRN after the first conv"),
    "B": (_B, "Table 1 B: 13 weight layers (torchvision vgg13)"),
    "C": ([64, 64, M, 128, 128, M, 256, 256, Conv(256, 1), M,
           512, 512, Conv(512, 1), M, 512, 512, Conv(512, 1), M],
          "Table 1 C: B plus a 1x1 conv closing blocks 3-5, 16 weight layers"),
    "D": ([64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M],
          "Table 1 D: 16 weight layers (torchvision vgg16)"),
    "E": ([64, 64, M, 128, 128, M, 256, 256, 256, 256, M,
           512, 512, 512, 512, M, 512, 512, 512, 512, M],
          "Table 1 E: 19 weight layers (torchvision vgg19)"),
    "B-5x5": ([Conv(64, 5), M, Conv(128, 5), M, Conv(256, 5), M, Conv(512, 5), M,
               Conv(512, 5), M],
              "sect. 4.1: B with each pair of 3x3 convs replaced by one 5x5 conv"),
    "AlexNet": ([Conv(96, 11, stride=4, padding=2), LRN, Pool(3, 2),
                 Conv(256, 5, groups=2), LRN, Pool(3, 2),
                 Conv(384, 3), Conv(384, 3, groups=2), Conv(256, 3, groups=2), Pool(3, 2)],
                "Krizhevsky et al. 2012 as published: two towers (groups 2 in conv2, 4, 5), "
                "96-256-384-384-256, LRN, 3x3/2 pools"),
    "AlexNet-1tower": ([Conv(96, 11, stride=4, padding=2), LRN, Pool(3, 2),
                        Conv(256, 5), LRN, Pool(3, 2),
                        Conv(384, 3), Conv(384, 3), Conv(256, 3), Pool(3, 2)],
                       "AlexNet with its two towers merged into one (no groups)"),
    "ZFNet": ([Conv(96, 7, stride=2, padding=1), Pool(3, 2, ceil=True), LRN,
               Conv(256, 5, stride=2, padding=0), Pool(3, 2, ceil=True), LRN,
               Conv(384, 3), Conv(384, 3), Conv(256, 3), Pool(3, 2, ceil=True)],
              "Zeiler & Fergus 2013: AlexNet with a 7x7/2 first and a stride-2 second layer"),
    "LeNet-5": ([Conv(6, 5, padding=0), Subsample(2, 2),
                 Conv(16, 5, padding=0, table=C3_TABLE), Subsample(2, 2),
                 Conv(120, 5, padding=0)],
                "LeCun et al. 1998: 32x32x1, C1-S2-C3 (connection table)-S4-C5-F6-output, tanh"),
    "NiN": ((), "Lin et al. 2014 (ImageNet model): four mlpconv blocks, global average "
                "pooling, no FC layer"),
    "GoogLeNet": ((), "Szegedy et al. 2014: nine Inception modules, two auxiliary "
                      "classifiers in training"),
}

# What is not VGG's in each classic net (Config fields; VGG's are the defaults).
_CLASSIC = {
    "AlexNet": dict(naming="numbered"),
    "AlexNet-1tower": dict(naming="numbered"),
    "ZFNet": dict(naming="numbered"),
    "LeNet-5": dict(naming="lenet", activation="tanh", fc_names=("F6", "output"),
                    dropout=False, in_channels=1, input_size=32, fc_width=84, num_classes=10),
    # fc_width: NiN has no FC layer (0); GoogLeNet's is its auxiliary classifiers' FC.
    "NiN": dict(module="nin", fc_names=(), fc_width=0),
    "GoogLeNet": dict(module="googlenet", fc_names=("fc",), fc_width=1024),
}


def _expand(item):
    """One list item in the shorthand -> Conv, Pool, Subsample or Norm."""
    if isinstance(item, (Conv, Pool, Subsample, Norm)):
        return item
    if item == M:
        return Pool(2, 2)
    if item == LRN:
        return Norm()
    if isinstance(item, int) and item > 0:
        return Conv(item)
    raise ValueError(f"not a layer in the config notation: {item!r}")


def names():
    """The configuration names, Table 1 order first (for --help and error messages)."""
    return list(_TABLE)


def get(name):
    """The Config called `name`; ConfigError (one line, listing the valid names) if unknown."""
    if isinstance(name, Config):
        return name
    if name not in _TABLE:
        raise ConfigError(f"unknown config {name!r}: choose one of {', '.join(names())}")
    items, description = _TABLE[name]
    return Config(name, tuple(_expand(i) for i in items), description,
                  **_CLASSIC.get(name, {}))


def help_text():
    """One line per configuration, for a command line's --help."""
    return "; ".join(f"{n}: {_TABLE[n][1]}" for n in names())
