"""GoogLeNet (Szegedy et al., "Going deeper with convolutions", 2014): the ILSVRC-2014
classification winner that VGG's Table 7 compares itself with (6.7% top-5 error with 7
nets, 7.9% with one); the compendium's sect. 0.14.

Fig. 3, bottom to top (sizes at 224 x 224):

    stem         conv 7x7/2 (64) 112, max-pool 3x3/2 56, LRN, conv 1x1 (64), conv 3x3 (192),
                 LRN, max-pool 3x3/2 28
    stage 3      Inception 3a, 3b (28x28), max-pool 3x3/2 14
    stage 4      Inception 4a, 4b, 4c, 4d, 4e (14x14), max-pool 3x3/2 7
    stage 5      Inception 5a, 5b (7x7)
    classifier   average pool 7x7/1, dropout 40%, linear, soft-max

An Inception module (Fig. 2b) runs four branches on the same input and concatenates their
maps (kernels/concat.py): a 1x1 conv; a 1x1 "reduce" then a 3x3; a 1x1 reduce then a 5x5;
a 3x3/1 max-pool (padding 1) then a 1x1 "pool proj". The 1x1 reductions are what make the
3x3 and 5x5 affordable (lesson 11 counts it). Their widths, Table 1, are INCEPTION below.
Every conv has a ReLU. The pools round up (Caffe's rule: 112 -> 56 needs it).

Auxiliary classifiers (sect. 5), on 4a and 4d: average pool 5x5/3 (14 -> 4), a 1x1 conv of
128 and ReLU, FC 1024 and ReLU, dropout 70%, linear and soft-max. "During training, their
loss gets added to the total loss of the network with a discount weight (the losses of the
auxiliary classifiers were weighted by 0.3). At inference time, these auxiliary networks
are discarded." Here: forward in training mode attaches their logits to its output as
`logits.aux` [(0.3, aux1), (0.3, aux2)], and tasks.Classification.loss adds their
losses; in eval mode they are not run. 6,998,552 parameters for 1000 classes, 13,378,280
with the two heads (tests/test_nin_googlenet.py writes the sums out).

Parameter names are torchvision's GoogLeNet's: conv1.conv.weight, inception3a.branch2.1
.conv.weight, inception4a.branch4.1.conv.weight (branch4.0 is the pool), aux1.conv.conv
.weight, aux1.fc1.weight, aux1.fc2.weight, fc.weight. Its weights do not fit, though:
torchvision's convs have batch norm instead of a bias (bn.* there, conv.bias here; batch
norm came in 2015), its 5x5 branch is a 3x3 conv (a slip it keeps for its weights' sake),
and it has no LRN (norm1, norm2 here, without parameters). The summary's layer names are
those of the Caffe replica (BVLC GoogLeNet): inception_4a/3x3_reduce, loss1/fc, ...
LRN as there: 5 maps, alpha 1e-4 over their mean (2e-5 on the sum, minivgg's LRN), beta
0.75, k 1.
"""
import numpy as np

from minivgg import configs, nn, ops
from minivgg.branches import Net, ScoreMap, Trace, conv_view
from minivgg.errors import UserError
from minivgg.model import _channels, _check_args
from minivgg.tape import Tensor, no_grad

INCEPTION = {  # Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
STAGES = (("3a", "3b"), ("4a", "4b", "4c", "4d", "4e"), ("5a", "5b"))  # max-pools between
AUX = {"4a": "aux1", "4d": "aux2"}  # where the auxiliary classifiers branch off (sect. 5)
AUX_WEIGHT, AUX_DROPOUT, AUX_MAPS = 0.3, 0.7, 128
LRN = configs.Norm(size=5, k=1.0, alpha=2e-5, beta=0.75)


# -- the plan: every layer's row, nothing allocated ---------------------------------------
def _conv(t, name, index, K, k, stride=1, pad=0):
    """A BasicConv2d's two rows, conv and ReLU (Caffe names: a/b and a/relu_b)."""
    t.conv(name, f"{index}.conv", K, k, stride, pad)
    head, _, tail = name.rpartition("/")
    t.relu(f"{head}/relu_{tail}", f"{index}.relu")


def _inception(t, m, widths):
    """Inception `m`'s rows, branch after branch, then the concatenation."""
    n1, r3, n3, r5, n5, pp = widths
    name, index, start, ends = f"inception_{m}", f"inception{m}", t.state(), []
    _conv(t, f"{name}/1x1", f"{index}.branch1", n1, 1)
    ends.append(t.state())
    t.restore(start)
    _conv(t, f"{name}/3x3_reduce", f"{index}.branch2.0", r3, 1)
    _conv(t, f"{name}/3x3", f"{index}.branch2.1", n3, 3, 1, 1)
    ends.append(t.state())
    t.restore(start)
    _conv(t, f"{name}/5x5_reduce", f"{index}.branch3.0", r5, 1)
    _conv(t, f"{name}/5x5", f"{index}.branch3.1", n5, 5, 1, 2)
    ends.append(t.state())
    t.restore(start)
    t.max_pool(f"{name}/pool", f"{index}.branch4.0", 3, 1, 1)
    _conv(t, f"{name}/pool_proj", f"{index}.branch4.1", pp, 1)
    ends.append(t.state())
    t.concat(f"{name}/output", index, ends)


def _aux(t, aux, maps, fc_width, num_classes):
    """An auxiliary classifier's rows (Caffe's loss1/..., loss2/...); the trace goes on from
    where the head branched off."""
    start, loss = t.state(), {"aux1": "loss1", "aux2": "loss2"}[aux]
    t.avg_pool(f"{loss}/ave_pool", f"{aux}.avgpool", 5, 3)
    _conv(t, f"{loss}/conv", f"{aux}.conv", maps, 1)
    t.fc(f"{loss}/fc", f"{aux}.fc1", fc_width)
    t.relu(f"{loss}/relu_fc", f"{aux}.relu")
    t.dropout(f"{loss}/drop_fc", f"{aux}.dropout")
    t.fc(f"{loss}/classifier", f"{aux}.fc2", num_classes)
    t.restore(start)


def plan(cfg, num_classes, width, fc_width, input_size, in_channels, aux=True):
    """model.plan's rows of GoogLeNet: the stem, each Inception module's four branches and
    its concatenation, the auxiliary heads after 4a and 4d (aux=True), the classifier."""
    _check_args(width, fc_width, num_classes, input_size, in_channels)
    ch, t = (lambda c: _channels(c, width)), Trace(in_channels, input_size, cfg.name)
    _conv(t, "conv1/7x7_s2", "conv1", ch(64), 7, 2, 3)
    t.max_pool("pool1/3x3_s2", "maxpool1", 3, 2)
    t.lrn("pool1/norm1", "norm1", LRN)
    _conv(t, "conv2/3x3_reduce", "conv2", ch(64), 1)
    _conv(t, "conv2/3x3", "conv3", ch(192), 3, 1, 1)
    t.lrn("conv2/norm2", "norm2", LRN)
    t.max_pool("pool2/3x3_s2", "maxpool2", 3, 2)
    for stage, modules in enumerate(STAGES, 3):
        if stage > 3:
            t.max_pool(f"pool{stage - 1}/3x3_s2", f"maxpool{stage - 1}", 3, 2)
        for m in modules:
            _inception(t, m, [ch(c) for c in INCEPTION[m]])
            if aux and m in AUX:
                _aux(t, AUX[m], ch(AUX_MAPS), fc_width, num_classes)
    s = t.H  # 7 at 224: the average pool covers the whole last map
    t.avg_pool(f"pool5/{s}x{s}_s1", "avgpool", s, 1)
    t.dropout("pool5/drop", "drop")
    t.fc("loss3/classifier", "fc", num_classes)
    return t.rows


# -- the modules ----------------------------------------------------------------------------
class BasicConv2d(nn.Module):
    """A conv and its ReLU (torchvision's BasicConv2d, with a bias where it has batch norm)."""

    def __init__(self, C, K, kernel, stride=1, padding=0, init="paper", rng=None):
        self.conv = nn.Conv2d(C, K, kernel, stride, padding, init, rng)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv(x))


class Inception(nn.Module):
    """Fig. 2(b), "Inception module with dimension reductions": four branches side by side,
    each keeping the map's size, their maps concatenated. widths: Table 1's six numbers."""

    def __init__(self, C, widths, init="paper", rng=None):
        n1, r3, n3, r5, n5, pp = widths
        self.branch1 = BasicConv2d(C, n1, 1, init=init, rng=rng)
        self.branch2 = nn.Sequential(BasicConv2d(C, r3, 1, init=init, rng=rng),
                                     BasicConv2d(r3, n3, 3, padding=1, init=init, rng=rng))
        self.branch3 = nn.Sequential(BasicConv2d(C, r5, 1, init=init, rng=rng),
                                     BasicConv2d(r5, n5, 5, padding=2, init=init, rng=rng))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, ceil_mode=True, padding=1),
                                     BasicConv2d(C, pp, 1, init=init, rng=rng))
        self.out_channels = n1 + n3 + n5 + pp

    def forward(self, x):
        return ops.concat([self.branch1(x), self.branch2(x), self.branch3(x),
                           self.branch4(x)])


class InceptionAux(nn.Module):
    """An auxiliary classifier (sect. 5): average pool 5x5/3, 1x1 conv and ReLU, FC and ReLU,
    dropout 70%, linear. side: the pooled map's side (4 at 224)."""

    def __init__(self, C, maps, side, fc_width, num_classes, seed, init="paper", rng=None):
        self.avgpool = nn.AvgPool2d(5, 3, ceil_mode=True)
        self.conv = BasicConv2d(C, maps, 1, init=init, rng=rng)
        self.fc1 = nn.Linear(maps * side * side, fc_width, init, rng)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(AUX_DROPOUT, seed)
        self.fc2 = nn.Linear(fc_width, num_classes, init, rng)

    def forward(self, x):
        x = ops.flatten(self.conv(self.avgpool(x)))
        return self.fc2(self.dropout(self.relu(self.fc1(x))))


class GoogLeNet(Net):
    """GoogLeNet for `num_classes` classes; arguments as model.VGG's. fc_width: the
    auxiliary classifiers' FC layer (1024); dropout: before the last layer (0.4; the heads'
    is 0.7); aux_classifiers: build the two heads (training uses them)."""

    def __init__(self, config="GoogLeNet", num_classes=None, width=1.0, fc_width=None,
                 input_size=None, dropout=0.4, init="paper", seed=0, in_channels=None,
                 aux_classifiers=True):
        cfg = self._settings(config, num_classes, width, fc_width, input_size, dropout, init,
                             seed, in_channels)
        self.aux_classifiers = bool(aux_classifiers)
        self._rows = plan(cfg, self.num_classes, width, self.fc_width, self.input_size, 3,
                          self.aux_classifiers)
        rng, ch, pool = np.random.default_rng(seed), self.ch, (3, 2)  # weights in this order
        self.conv1 = BasicConv2d(3, ch(64), 7, 2, 3, init, rng)
        self.maxpool1 = nn.MaxPool2d(*pool, ceil_mode=True)
        self.norm1 = nn.LRN(LRN.size, LRN.k, LRN.alpha, LRN.beta)
        self.conv2 = BasicConv2d(ch(64), ch(64), 1, init=init, rng=rng)
        self.conv3 = BasicConv2d(ch(64), ch(192), 3, padding=1, init=init, rng=rng)
        self.norm2 = nn.LRN(LRN.size, LRN.k, LRN.alpha, LRN.beta)
        self.maxpool2 = nn.MaxPool2d(*pool, ceil_mode=True)
        C, taps = ch(192), {}
        for stage, modules in enumerate(STAGES, 3):
            if stage > 3:
                setattr(self, f"maxpool{stage - 1}", nn.MaxPool2d(*pool, ceil_mode=True))
            for m in modules:
                block = Inception(C, [ch(c) for c in INCEPTION[m]], init, rng)
                setattr(self, f"inception{m}", block)
                C = taps[m] = block.out_channels
        rows = {r.index: r for r in self._rows}
        for i, (m, aux) in enumerate(AUX.items() if self.aux_classifiers else (), 1):
            side = rows[f"{aux}.avgpool"].out_shape[1]
            setattr(self, aux, InceptionAux(taps[m], ch(AUX_MAPS), side, self.fc_width,
                                            self.num_classes, nn.mix32(seed, i), init, rng))
        self.side = rows["avgpool"].kernel  # 7 at 224
        self.avgpool = nn.AvgPool2d(self.side, 1, ceil_mode=True)
        self.drop = nn.Dropout(dropout, seed=nn.mix32(seed, 0))  # self.dropout: its p
        self.fc = nn.Linear(C, self.num_classes, init, rng)
        for layer in [self.fc] + [getattr(self, a).fc2 for a in AUX.values()
                                  if self.aux_classifiers]:
            self.start_small(layer, rng)  # class scores start near 0 (Net.start_small)

    def definition(self):
        return dict(super().definition(), aux_classifiers=self.aux_classifiers)

    def stem(self, x):
        x = self.norm1(self.maxpool1(self.conv1(self.input_channels(x))))
        return self.maxpool2(self.norm2(self.conv3(self.conv2(x))))

    def forward(self, x):
        """Fig. 3, bottom to top: x (N, 3, H, W) whose last map is side x side (7x7 at 224)
        -> logits (N, classes); in training, logits.aux = [(0.3, 4a's head's logits),
        (0.3, 4d's)] when the net has its auxiliary classifiers."""
        H, W = x.shape[2:]
        x = self.maxpool3(self.inception3b(self.inception3a(self.stem(x))))
        x4a = self.inception4a(x)
        x4d = self.inception4d(self.inception4c(self.inception4b(x4a)))
        x = self.maxpool4(self.inception4e(x4d))
        x = self.inception5b(self.inception5a(x))
        if x.shape[2:] != (self.side, self.side):
            raise UserError(f"an input of {H}x{W} gives a {x.shape[2]}x{x.shape[3]} last "
                            f"map but the classifier expects "
                            f"{self.side}x{self.side} (input_size {self.input_size}); use "
                            "dense() for other sizes")
        logits = self.fc(self.drop(ops.flatten(self.avgpool(x))))
        if self.training and self.aux_classifiers:
            logits.aux = [(AUX_WEIGHT, self.aux1(x4a)), (AUX_WEIGHT, self.aux2(x4d))]
        return logits

    def hidden_features(self, x):
        """The last hidden layer, for AlexNet's nearest-neighbour comparison (visualise
        neighbours): inception 5b's maps averaged over space, the vector the classifier
        reads (1024-D at full width; at input_size exactly the 7x7 average pool's output).
        x: device array (N, 3, H, W) -> (N, maps) device array. Eval mode: no heads."""
        with no_grad():
            h = Tensor(x)
            for layer in list(self.dense().layers)[:-2]:  # without the pool and the FC
                h = layer(h)
            return ops.global_avg_pool(h).data

    def dense(self):
        """Sect. 3.2's fully-convolutional view: the same modules, the average pool sliding
        with stride 1 over a larger last map, dropout left out, the linear layer as a 1x1
        conv over its weight: (N, classes, P, Q), P = Q = 1 at input_size. The auxiliary
        heads are left out, as at any test."""
        trunk = [self.conv1, self.maxpool1, self.norm1, self.conv2, self.conv3, self.norm2,
                 self.maxpool2, self.inception3a, self.inception3b, self.maxpool3]
        trunk += [getattr(self, f"inception4{m}") for m in "abcde"]
        trunk += [self.maxpool4, self.inception5a, self.inception5b]
        return ScoreMap(self, trunk + [self.avgpool, conv_view(self.fc)])


Model = GoogLeNet  # what model.VGG("GoogLeNet") builds
