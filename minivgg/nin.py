"""NiN: Network in Network (Lin, Chen & Yan, ICLR 2014), the ImageNet model, as the
compendium describes it (../shared/papers/alexnet-and-classic-cnns.txt, sect. 0.12).

An mlpconv layer replaces a conv's linear filter by a small multilayer perceptron slid over
the image: a spatial conv, then two 1x1 convs (the paper's "cascaded cross channel
parametric pooling", cccp in its Caffe files), a ReLU after each. The last mlpconv layer
gives one map per class, and global average pooling makes each map that class's score:
"no parameter to optimize", in place of the fully connected layers. So the net is fully
convolutional as it stands: at any input size its scores are the spatial mean of its class
maps, which is exactly VGG's dense evaluation (sect. 3.2: the class score map "spatially
averaged"). dense() gives the map itself.

The paper spells out its CIFAR-10/100, SVHN and MNIST nets; its ImageNet model is the one
its authors released with Caffe (the model zoo's NIN-ImageNet), four mlpconv blocks:

    block   spatial conv            1x1     1x1       then
    1       96, 11x11 / 4           96      96        max-pool 3x3 / 2, dropout
    2       256, 5x5 / 1, pad 2     256     256       max-pool 3x3 / 2, dropout
    3       384, 3x3 / 1, pad 1     384     384       max-pool 3x3 / 2, dropout
    4       1024, 3x3 / 1, pad 1    1024    classes   global average pooling, soft-max

224 -> 54 -> 27 -> 27 -> 13 -> 13 -> 6 -> 6 -> 1: the pools round up, as Caffe's do (54
gives 27, not 26). Dropout (p = 0.5) follows the paper's rule, "applied on the outputs of
all but the last mlpconv layers" (sect. 4.1; the Caffe release keeps only the third).
7,595,176 parameters for 1000 classes, 74% of them (5,614,568) in the last block.

Parameter names say where they are: mlpconv1.conv.weight, mlpconv1.cccp1.weight,
mlpconv1.cccp2.weight, ..., mlpconv4.cccp2.weight (the class maps).
"""
import numpy as np

from minivgg import nn, ops
from minivgg.branches import Net, ScoreMap, Trace
from minivgg.model import _channels, _check_args
from minivgg.tape import Tensor, no_grad

# Each block: the spatial conv (maps, kernel, stride, padding), then the maps of its two
# 1x1 convs; None is one map per class.
BLOCKS = (((96, 11, 4, 0), 96, 96),
          ((256, 5, 1, 2), 256, 256),
          ((384, 3, 1, 1), 384, 384),
          ((1024, 3, 1, 1), 1024, None))
POOL = (3, 2)  # after blocks 1-3: 3x3 windows, stride 2, the last window kept (ceil)


def _maps(block, width, classes):
    """The output maps of a block's three convs, scaled by width (the class maps are not)."""
    (K, *_), k1, k2 = block
    return (_channels(K, width), _channels(k1, width),
            classes if k2 is None else _channels(k2, width))


def plan(cfg, num_classes, width, fc_width, input_size, in_channels):
    """model.plan's rows of NiN (nothing allocated): Caffe's layer names (conv1, cccp1,
    cccp2, pool1, ...), index = the module's name."""
    _check_args(width, 1, num_classes, input_size, in_channels)
    t, cccp = Trace(in_channels, input_size, cfg.name), 0
    for b, block in enumerate(BLOCKS, 1):
        (_, k, s, pad), maps = block[0], _maps(block, width, num_classes)
        t.conv(f"conv{b}", f"mlpconv{b}.conv", maps[0], k, s, pad)
        t.relu(f"conv{b}/relu", f"mlpconv{b}.relu0")
        for i in (1, 2):
            cccp += 1
            t.conv(f"cccp{cccp}", f"mlpconv{b}.cccp{i}", maps[i], 1)
            t.relu(f"cccp{cccp}/relu", f"mlpconv{b}.relu{i}")
        if b < len(BLOCKS):
            t.max_pool(f"pool{b}", f"pool{b}", *POOL)
            t.dropout(f"drop{b}", f"drop{b}")
    t.global_avg_pool("pool4", "gap")
    return t.rows


class MLPConv(nn.Module):
    """An mlpconv layer (Lin et al. Fig. 2): conv, ReLU, then two 1x1 convs, each with its
    ReLU: an MLP over every window of the input, its weights shared across windows."""

    def __init__(self, C, maps, kernel, stride, padding, init, rng):
        self.conv = nn.Conv2d(C, maps[0], kernel, stride, padding, init, rng)
        self.relu0 = nn.ReLU()
        self.cccp1 = nn.Conv2d(maps[0], maps[1], 1, init=init, rng=rng)
        self.relu1 = nn.ReLU()
        self.cccp2 = nn.Conv2d(maps[1], maps[2], 1, init=init, rng=rng)
        self.relu2 = nn.ReLU()

    def forward(self, x):
        x = self.relu0(self.conv(x))
        x = self.relu1(self.cccp1(x))
        return self.relu2(self.cccp2(x))


class NiN(Net):
    """NiN for `num_classes` classes; arguments as model.VGG's (fc_width is accepted and
    ignored: there is no FC layer). dropout: p of the three dropout layers (0.5)."""

    def __init__(self, config="NiN", num_classes=None, width=1.0, fc_width=None,
                 input_size=None, dropout=0.5, init="paper", seed=0, in_channels=None):
        cfg = self._settings(config, num_classes, width, fc_width, input_size, dropout, init,
                             seed, in_channels)
        self.fc_width = 0  # no FC layer
        self._rows = plan(cfg, self.num_classes, width, 0, self.input_size, 3)
        rng, C = np.random.default_rng(seed), 3
        for b, block in enumerate(BLOCKS, 1):  # weights drawn in this order
            maps = _maps(block, width, self.num_classes)
            setattr(self, f"mlpconv{b}", MLPConv(C, maps, *block[0][1:], init, rng))
            C = maps[2]
            if b < len(BLOCKS):
                setattr(self, f"pool{b}", nn.MaxPool2d(*POOL, ceil_mode=True))
                setattr(self, f"drop{b}", nn.Dropout(dropout, seed=nn.mix32(seed, b)))
        self.gap = nn.GlobalAvgPool2d()
        # The class maps pass a ReLU before the average: with its bias at 1 it starts open
        # for every class (at Kaiming's init 4 of 10 classes' maps were negative on every
        # image: no gradient ever reached them, and training stalled at ln 10).
        self.start_small(self.mlpconv4.cccp2, rng, bias=1.0)

    def forward(self, x):
        """x (N, 3, H, W), any size the layers fit -> class scores (N, classes): the mean of
        each class's map (Lin et al. Fig. 2: three mlpconv layers, then global average
        pooling; here four, as in the ImageNet model)."""
        x = self.drop1(self.pool1(self.mlpconv1(self.input_channels(x))))
        x = self.drop2(self.pool2(self.mlpconv2(x)))
        x = self.drop3(self.pool3(self.mlpconv3(x)))
        return self.gap(self.mlpconv4(x))

    def hidden_features(self, x):
        """The last hidden layer, for AlexNet's nearest-neighbour comparison (visualise
        neighbours): the last block's first 1x1 conv after its ReLU (cccp7: the layer
        before the class maps), averaged over space. x: device array (N, 3, H, W) ->
        (N, maps) device array; dropout left out, as at test time."""
        with no_grad():
            h = Tensor(x)
            for m in (self.mlpconv1, self.pool1, self.mlpconv2, self.pool2, self.mlpconv3,
                      self.pool3):
                h = m(h)
            b = self.mlpconv4
            return ops.global_avg_pool(b.relu1(b.cccp1(b.relu0(b.conv(h))))).data

    def dense(self):
        """The class maps before the global average pooling: (N, classes, P, Q). The same
        modules without dropout; their spatial mean is forward's output, at any size."""
        return ScoreMap(self, [self.mlpconv1, self.pool1, self.mlpconv2, self.pool2,
                               self.mlpconv3, self.pool3, self.mlpconv4])


Model = NiN  # what model.VGG("NiN") builds
