"""What the nets that are not chains share (NiN, minivgg/nin.py; GoogLeNet, googlenet.py):
their summary's layer arithmetic, followed through branches and their concatenation, and
the plumbing every minivgg tool expects of a model.

VGG and the other chains are data (configs.py) that model.plan walks. A net with branches
is a Module class whose forward reads like its paper's figure, and its summary is the same
arithmetic written once along its structure with a Trace:

    t = Trace(3, 224, "GoogLeNet")
    t.conv("conv1/7x7_s2", "conv1.conv", 64, 7, 2, 3); t.relu(...); ...
    start, ends = t.state(), []
    for branch in ...:                      # each branch starts where the module starts
        t.restore(start); t.conv(...); ...; ends.append(t.state())
    t.concat("inception_3a/output", "inception3a", ends)

A concatenation's receptive field is the largest of its branches' (the 5x5 branch's, in
an Inception module); the branches keep the map's size, so they share the jump.
"""
import numpy as np

from minivgg import backend, configs, nn
from minivgg.configs import ConfigError
from minivgg.errors import UserError
from minivgg.model import EvalOnly, LayerRow, _channels, _check_args, checked_arguments
from kernels import avgpool as avgpool_k, pool as pool_k


class Trace:
    """A tensor's channels C, side H, receptive field r and jump j (input pixels between
    neighbouring outputs), followed layer by layer into model.LayerRow rows (per image:
    parameters, multiply-adds, output bytes)."""

    def __init__(self, C, H, net):
        self.rows, self.net, self.input_size = [], net, H
        self.C, self.H, self.r, self.j = C, H, 1, 1

    def state(self):
        return self.C, self.H, self.r, self.j

    def restore(self, state):
        self.C, self.H, self.r, self.j = state

    def _add(self, name, index, kind, k=1, s=1, pad=0, params=0, madds=0, spec=None):
        self.r, self.j = self.r + (k - 1) * self.j, self.j * s
        C, H = self.C, self.H
        self.rows.append(LayerRow(name, index, kind, (C, H, H), params, self.r, self.j,
                                  madds, 4 * C * H * H, k, s, pad, spec))

    def _fits(self, name, k, pad=0):
        if self.H + 2 * pad < k:
            raise ConfigError(f"input_size {self.input_size} is too small for {self.net}: "
                              f"{name} gets a {self.H}x{self.H} map, smaller than its "
                              f"{k}x{k} window")

    def conv(self, name, index, K, k, stride=1, pad=0):
        """A k x k conv of K filters (its ReLU is a row of its own)."""
        self._fits(name, k, pad)
        C, self.H = self.C, (self.H + 2 * pad - k) // stride + 1
        self.C = K
        self._add(name, index, "conv", k, stride, pad, C * k * k * K + K,
                  self.H * self.H * C * k * k * K, configs.Conv(K, k, stride, pad))

    def relu(self, name, index):
        self._add(name, index, "relu")

    def lrn(self, name, index, spec):
        self._add(name, index, "lrn", spec=spec)

    def dropout(self, name, index):
        self._add(name, index, "dropout")

    def max_pool(self, name, index, k, stride, pad=0, ceil=True):
        self._fits(name, k, pad)
        self.H = pool_k.side(self.H, k, stride, ceil, pad)
        self._add(name, index, "pool", k, stride, pad, spec=configs.Pool(k, stride, ceil))

    def avg_pool(self, name, index, k, stride, ceil=True):
        self._fits(name, k)
        self.H = avgpool_k.window_output_size(self.H, self.H, k, stride, ceil)[0]
        self._add(name, index, "avgpool", k, stride, spec=configs.Pool(k, stride, ceil))

    def global_avg_pool(self, name, index):
        """The mean of each map: a window as large as the map, the last map's jump kept (it
        is the step of the score map in the dense view)."""
        H, self.H = self.H, 1
        self._add(name, index, "gap", H, 1)

    def fc(self, name, index, K):
        """An FC layer over the C x H x H map (seen as an H x H conv, as fc6 in plan)."""
        n_in, H = self.C * self.H * self.H, self.H
        self.C, self.H = K, 1
        self._add(name, index, "fc", H, 1, 0, n_in * K + K, n_in * K)

    def concat(self, name, index, ends):
        """Join branches that ended in states `ends`: channels add up, sides must agree."""
        sides, jumps = {e[1] for e in ends}, {e[3] for e in ends}
        assert len(sides) == 1 and len(jumps) == 1, f"{name}: branches of sides {sides}"
        self.restore((sum(e[0] for e in ends), ends[0][1], max(e[2] for e in ends),
                      ends[0][3]))
        self._add(name, index, "concat")


class Net(nn.Module):
    """The attributes and methods every tool reads from a model, as VGG has them: config,
    num_classes, width, fc_width, input_size, dropout, init, seed, in_channels;
    definition(), summary(), input_channels(x), dense(), preinitialise_from()."""

    def _settings(self, config, num_classes, width, fc_width, input_size, dropout, init, seed,
                  in_channels):
        """Check and keep the constructor's arguments (None: the config's default)."""
        cfg, num_classes, fc_width, input_size, in_channels = checked_arguments(
            config, num_classes, fc_width, input_size, dropout, init, in_channels)
        _check_args(width, max(fc_width, 1), num_classes, input_size, in_channels)
        if in_channels != 3:
            raise ConfigError(f"{cfg.name} takes RGB input: in_channels must be 3, got "
                              f"{in_channels}")
        self.config, self.num_classes, self.width = cfg.name, int(num_classes), width
        self.fc_width, self.input_size, self.dropout = int(fc_width), int(input_size), dropout
        self.init, self.seed, self.in_channels = init, seed, int(in_channels)
        return cfg

    def start_small(self, layer, rng, bias=0.0):
        """Redraw the weight of a layer that gives class scores from N(0, 0.01^2) (VGG's
        sect. 3.1 init) and set its bias. Its inputs are ReLU outputs, all positive, so
        a weight of Kaiming's or Glorot's size adds a large offset to each class that does
        not depend on the image (GoogLeNet at the cpu-googlenet preset: logits of std 10,
        a first loss of 12.8 instead of ln 10 = 2.3, and an epoch spent unlearning it).
        Nothing changes for init 'paper' (already that) or 'zeros'."""
        if self.init in ("zeros", "paper"):
            w = backend.to_host(layer.weight.data)
        else:
            w = nn.init_weight(tuple(layer.weight.shape), "paper", rng)
        if self.init != "zeros":
            backend.copy_into(layer.weight.data, w)
            backend.copy_into(layer.bias.data, np.full(layer.bias.shape, bias, np.float32))

    def ch(self, c):
        """c channels scaled by width (rounded, at least 1), as in every net of model.py."""
        return _channels(c, self.width)

    def definition(self):
        """What rebuilds this model (stored in checkpoints; VGG(**definition) takes it)."""
        return dict(config=self.config, num_classes=self.num_classes, width=self.width,
                    fc_width=self.fc_width, input_size=self.input_size,
                    dropout=self.dropout, init=self.init, seed=self.seed,
                    in_channels=self.in_channels)

    def summary(self):
        """Per-layer rows (model.LayerRow), branch by branch: shapes, parameters,
        receptive field, cost. `index` is the module's name (its parameters' prefix)."""
        return list(self._rows)

    def input_channels(self, x):
        if x.shape[1] != 3:
            raise UserError(f"config {self.config} takes 3-channel input, got {x.shape[1]} "
                            "channels")
        return x

    def preinitialise_from(self, source):
        raise UserError(f"sect. 3.1's pre-initialisation copies net A's layers into a "
                        f"deeper VGG; {self.config} has no such layers (use --init-from with "
                        f"a {self.config} checkpoint to fine-tune it)")

    def __repr__(self):
        return (f"{type(self).__name__}({self.config!r}, num_classes={self.num_classes}, "
                f"width={self.width}, input_size={self.input_size})")


def conv_view(linear):
    """A 1x1 Conv2d over `linear`'s weight (out, C) read as (out, C, 1, 1): no copy."""
    w = linear.weight.data
    return nn.Conv2d.wrap(nn.Parameter(w.reshape(w.shape[0], w.shape[1], 1, 1)), linear.bias)



class ScoreMap(EvalOnly):
    """A net's dense view (sect. 3.2) from its own modules, in order: `layers` with the
    dropout left out (evaluation only) and its last FC layer as a 1x1 conv over the same
    weight; x (N, 3, H, W) -> class scores (N, classes, P, Q) for any H, W the layers fit.
    The caller averages the map (minivgg.evaluate: then soft-max)."""

    def __init__(self, net, layers):
        self._input = net.input_channels
        self.layers = nn.Sequential(*layers)
        self.train(False)

    def forward(self, x):
        return self.layers(self._input(x))
