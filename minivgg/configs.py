"""Table 1 of the paper as data: the feature stacks of configurations A to E, and two extras.

Notation (torchvision's lists, extended):

    64            a 3x3 conv, stride 1, padding 1, with 64 output channels, then ReLU
    Conv(256, 1)  a conv with another kernel (here 1x1, config C); padding defaults to
                  kernel // 2, which keeps the spatial size at stride 1 (sect. 2.1)
    'M'           max-pooling, 2x2 window, stride 2 (sect. 2.1)
    Pool(3, 2)    max-pooling with another window / stride (AlexNet's overlapping 3x3/2)
    'LRN'         local response normalisation with AlexNet's constants (size 5, k 2,
                  alpha 1e-4, beta 0.75; sect. 2.1 "the parameters ... are those of
                  Krizhevsky et al."), placed after the ReLU as in AlexNet sect. 3.3

Every conv is followed by a ReLU (Table 1 leaves it out "for brevity"). The classifier,
FC-4096, FC-4096, FC-1000 and soft-max, is the same for every configuration (sect. 2.1) and
is built by model.py, not listed here.

Configurations:
    A, A-LRN, B, C, D, E   Table 1 (A-LRN: LRN after the first conv; C: a 1x1 conv closes
                           blocks 3, 4 and 5)
    B-5x5                  sect. 4.1: B with each pair of 3x3 convs replaced by one 5x5
                           conv (padding 2), the same receptive field with fewer
                           non-linearities; five 5x5 conv layers
    AlexNet                Krizhevsky et al. 2012 sect. 3.5 as ONE tower: the two GPUs'
                           halves merged, so 96, 256, 384, 384, 256 channels with every
                           kernel seeing all of the previous layer's maps (the paper's
                           grouped conv2/4/5 become full convs). conv1 is 11x11 stride 4;
                           we pad it by 2, which makes 224 inputs give 55x55 maps as the
                           paper's figure does (Caffe's 227 with no padding gives the
                           same). LRN after conv1 and conv2 (after their ReLUs), 3x3
                           stride-2 overlapping max-pooling after both LRNs and conv5
                           (sect. 3.4). At 224 the last feature map is 6x6, so FC1 takes
                           256*6*6 inputs; model.py computes that side, it does not assume
                           input_size / 32.
"""
from dataclasses import dataclass

from minivgg.errors import UserError


class ConfigError(UserError, ValueError):
    """A bad model definition (unknown config, a width or input size that cannot work).

    A UserError (one line, for the command lines) that is also a ValueError, so library
    callers can catch it as the bad argument it is.
    """


@dataclass(frozen=True)
class Conv:
    """A conv layer (always followed by a ReLU): out channels, kernel, stride, padding."""
    channels: int
    kernel: int = 3
    stride: int = 1
    padding: int = None  # None: kernel // 2 ("same" size at stride 1, sect. 2.1)

    @property
    def pad(self):
        return self.kernel // 2 if self.padding is None else self.padding


@dataclass(frozen=True)
class Pool:
    """Max-pooling: window x window, `stride` apart (sect. 2.1: 2x2, stride 2)."""
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
    """A named feature stack. `blocks`: name convs conv<block>_<i> (VGG) or conv<i> (AlexNet)."""
    name: str
    layers: tuple
    description: str
    blocks: bool = True


M = "M"
LRN = "LRN"

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
                 Conv(256, 5), LRN, Pool(3, 2),
                 Conv(384, 3), Conv(384, 3), Conv(256, 3), Pool(3, 2)],
                "Krizhevsky et al. 2012, single tower (96-256-384-384-256), LRN, 3x3/2 pools"),
}


def _expand(item):
    """One list item in the shorthand -> Conv, Pool or Norm."""
    if isinstance(item, (Conv, Pool, Norm)):
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
                  blocks=(name != "AlexNet"))


def help_text():
    """One line per configuration, for a command line's --help."""
    return "; ".join(f"{n}: {_TABLE[n][1]}" for n in names())
