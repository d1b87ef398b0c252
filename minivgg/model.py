"""VGG from a configuration of Table 1 (and the classic nets of configs.py: AlexNet, ZFNet,
LeNet-5): the network, its summary, its dense view, its initialisation and the paper's
pre-initialisation from net A. The nets that are not chains (NiN, GoogLeNet) are Module
classes of their own (minivgg/nin.py, googlenet.py); plan() and VGG() hand them over, so
every tool builds any config the same way.

    model = VGG("D")                     # 138,357,544 parameters (Table 2: 138M)
    logits = model(x)                    # x: Tensor (N, 3, 224, 224) -> (N, 1000)
    scores = model.dense()(x_big)        # sect. 3.2: (N, 1000, P, Q) class score map
    print(format_summary(model.summary()))

Layout (sect. 2.1): `features` is the conv stack of the config (conv, ReLU, [LRN], pool,
...), `classifier` is FC-4096, ReLU, dropout, FC-4096, ReLU, dropout, FC-classes, with
torchvision's indices, so for A, B, D, E every parameter name and shape is that of
torchvision's vgg11/13/16/19 (without batch norm) and weights move between the two.
FC1's input is C x s x s where s, the side of the last feature map, is computed by
running the layer arithmetic on `input_size` (7 for VGG at 224, 6 for AlexNet).
"""
import importlib
from dataclasses import dataclass

import numpy as np

from kernels import pool as pool_k
from minivgg import backend, configs, nn, ops
from minivgg.configs import ConfigError, Conv, Norm, Pool, Subsample
from minivgg.errors import UserError


# -- the plan: every layer's name, index and shapes, without allocating anything ------------
@dataclass
class LayerRow:
    """One row of the summary: a layer, its output and what it costs (per image).

    name        paper/Caffe style: conv1_1, relu1_1, pool1, ..., fc6, relu6, drop6, fc8
                (AlexNet, ZFNet: conv1 ... conv5; LeNet-5: C1, tanh1, S2, ..., F6, output)
    index       torchvision's: features.0, classifier.6 (the parameter-name prefix)
    kind        conv, relu | tanh | sigmoid, lrn, pool, subsample, fc, dropout
    out_shape   (C, H, W) of the output; FC layers as (channels, 1, 1)
    params      weights + biases (a grouped conv has 1/G of the full one's weights; a
                conv through a connection table only the weights the table keeps)
    rf, jump    receptive field side in input pixels, and the input-pixel distance between
                neighbouring outputs: r <- r + (k-1) j, j <- j s (fc6 seen as an s x s conv)
    madds       multiply-adds (of the connections: C/G inputs per output of a grouped
                conv, the table's inputs for a masked one)
    act_bytes   the output's size in bytes, float32
    """
    name: str
    index: str
    kind: str
    out_shape: tuple
    params: int
    rf: int
    jump: int
    madds: int
    act_bytes: int
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    spec: object = None  # the configs.Conv / Pool / Norm the row was made from


def _channels(c, width):
    """Conv channels scaled by `width`, rounded, at least 1."""
    return max(1, int(round(c * width)))


def _out_side(H, k, stride, pad, what, cfg_name, input_size, ceil=False):
    side = (H + 2 * pad - k) // stride + 1
    if side < 1:
        raise ConfigError(f"input_size {input_size} is too small for config {cfg_name}: "
                          f"{what} gets a {H}x{H} map, smaller than its {k}x{k} window")
    return pool_k.output_size(H, H, k, stride, True)[0] if ceil else side


def row_side(H, row):
    """The output side of a feature row for an input side H (0 if its window does not fit)."""
    if row.kind not in ("conv", "pool", "subsample"):
        return H
    if H + 2 * row.padding < row.kernel:
        return 0
    if row.kind == "pool" and row.spec.ceil:
        return pool_k.output_size(H, H, row.kernel, row.stride, True)[0]
    return (H + 2 * row.padding - row.kernel) // row.stride + 1


class _Names:
    """Layer names: VGG's conv<block>_<i>, relu<block>_<i>, pool<block>; AlexNet's and
    ZFNet's conv<i>, relu<i>, norm<i>, pool<i> by conv; LeNet-5's C<l>, S<l>, tanh<l> by
    layer (LeCun's: C1, S2, C3, S4, C5)."""

    def __init__(self, cfg):
        self.cfg, self.block, self.in_block, self.convs, self.layers = cfg, 1, 0, 0, 0

    def _tag(self):
        if self.cfg.naming == "blocks":
            return f"{self.block}_{self.in_block}"
        return f"{self.layers if self.cfg.naming == 'lenet' else self.convs}"

    def conv(self):
        self.convs, self.in_block, self.layers = self.convs + 1, self.in_block + 1, \
            self.layers + 1
        return ("C" if self.cfg.naming == "lenet" else "conv") + self._tag()

    def subsample(self):
        self.layers += 1
        return f"S{self.layers}"

    def activation(self):
        return f"{self.cfg.activation}{self._tag()}"

    def norm(self):
        return f"norm{self.block if self.cfg.blocks else self.convs}"

    def pool(self):
        name = f"pool{self.block if self.cfg.blocks else self.convs}"
        self.block, self.in_block = self.block + 1, 0
        return name


def _conv_counts(layer, C, K, width):
    """(groups, connections): the conv's groups and how many (input, output) map pairs it
    connects: C/G * K for a grouped conv, the table's ones for a masked one."""
    G = layer.groups
    if C % G or K % G:
        raise ConfigError(f"{G} groups do not divide the {C} -> {K} channels of a conv "
                          f"(width {width}); pick a width that keeps them even")
    table = layer.connections()
    if table is None:
        return G, C // G * K
    if table.shape != (K, C):
        raise ConfigError(f"the connection table is for {table.shape[1]} -> "
                          f"{table.shape[0]} maps, not {C} -> {K}: width must be 1")
    return G, int(table.sum())


def defaults(config, num_classes=None, fc_width=None, input_size=None, in_channels=None):
    """(num_classes, fc_width, input_size, in_channels): those given, the config's for None."""
    cfg = configs.get(config)
    pick = (lambda v, d: d if v is None else v)
    return (pick(num_classes, cfg.num_classes), pick(fc_width, cfg.fc_width),
            pick(input_size, cfg.input_size), pick(in_channels, cfg.in_channels))


def checked_arguments(config, num_classes, fc_width, input_size, dropout, init, in_channels):
    """A net constructor's common checks (init, dropout, the config) and defaults (None:
    the config's): (cfg, num_classes, fc_width, input_size, in_channels)."""
    if init not in nn.INITS:
        raise ConfigError(f"unknown init {init!r}: choose one of {', '.join(nn.INITS)}")
    if not 0 <= dropout < 1:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    cfg = configs.get(config)
    return (cfg,) + defaults(cfg, num_classes, fc_width, input_size, in_channels)


def module_of(config):
    """The file (minivgg.nin, minivgg.googlenet) of a net that is not a chain, or None."""
    cfg = configs.get(config)
    return importlib.import_module(f"minivgg.{cfg.module}") if cfg.module else None


def plan(config, num_classes=None, width=1.0, fc_width=None, input_size=None,
         in_channels=None):
    """The rows of every layer, features then classifier (no arrays are allocated).
    None: the config's default (1000 classes, FC 4096, 224 x 224 x 3 for VGG). A net with
    branches: its own module's rows (branch by branch, each Inception's concatenation
    after its branches)."""
    cfg = configs.get(config)
    num_classes, fc_width, input_size, C = defaults(cfg, num_classes, fc_width, input_size,
                                                    in_channels)
    if cfg.module:
        return module_of(cfg).plan(cfg, num_classes, width, fc_width, input_size, C)
    _check_args(width, fc_width, num_classes, input_size, C)
    rows, H, r, j, names = [], input_size, 1, 1, _Names(cfg)

    def add(name, kind, k=1, s=1, pad=0, params=0, madds=0, spec=None):
        nonlocal r, j
        r, j = r + (k - 1) * j, j * s
        rows.append(LayerRow(name, f"features.{len(rows)}", kind, (C, H, H), params, r, j,
                             madds, 4 * C * H * H, k, s, pad, spec))

    for layer in cfg.layers:
        if isinstance(layer, Conv):
            K, k, name = _channels(layer.channels, width), layer.kernel, names.conv()
            G, pairs = _conv_counts(layer, C, K, width)
            H = _out_side(H, k, layer.stride, layer.pad, name, cfg.name, input_size)
            C = K
            add(name, "conv", k, layer.stride, layer.pad, pairs * k * k + K,
                H * H * pairs * k * k, layer)
            add(names.activation(), cfg.activation)
        elif isinstance(layer, Subsample):
            name = names.subsample()
            H = _out_side(H, layer.window, layer.stride, 0, name, cfg.name, input_size)
            add(name, "subsample", layer.window, layer.stride, 0, 2 * C,
                C * H * H * layer.window ** 2, layer)
            add(names.activation(), cfg.activation)
        elif isinstance(layer, Norm):
            add(names.norm(), "lrn", spec=layer)
        elif isinstance(layer, Pool):
            name = names.pool()
            H = _out_side(H, layer.window, layer.stride, 0, name, cfg.name, input_size,
                          layer.ceil)
            add(name, "pool", layer.window, layer.stride, spec=layer)
    return rows + _classifier_rows(cfg, C, H, r, j, fc_width, num_classes)


def _classifier_rows(cfg, C, s, r, j, fc_width, num_classes):
    """fc6 (an s x s conv over the last map, sect. 3.2), relu6, drop6, fc7, ..., fc8; or
    the config's FC layers (LeNet-5: F6, tanh6, output), numbered by torchvision's rule:
    classifier.<position>."""
    rows, r6 = [], r + (s - 1) * j
    widths = [C * s * s] + [fc_width] * (len(cfg.fc_names) - 1) + [num_classes]
    for i, name in enumerate(cfg.fc_names):
        n_in, n_out = widths[i], widths[i + 1]
        rows.append(LayerRow(name, f"classifier.{len(rows)}", "fc", (n_out, 1, 1),
                             n_in * n_out + n_out, r6, j, n_in * n_out, 4 * n_out,
                             s if i == 0 else 1))
        if i == len(cfg.fc_names) - 1:
            break
        n = "".join(ch for ch in name if ch.isdigit())
        after = [(f"{cfg.activation}{n}", cfg.activation)]
        if cfg.dropout:
            after.append((f"drop{n}", "dropout"))
        for row_name, kind in after:
            rows.append(LayerRow(row_name, f"classifier.{len(rows)}", kind, (n_out, 1, 1),
                                 0, r6, j, 0, 4 * n_out))
    return rows


def _check_args(width, fc_width, num_classes, input_size, in_channels=3):
    if not width > 0:
        raise ConfigError(f"width must be > 0, got {width}")
    for name, v in (("fc_width", fc_width), ("num_classes", num_classes),
                    ("input_size", input_size), ("in_channels", in_channels)):
        if int(v) != v or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v}")


def count_parameters(config, num_classes=None, width=1.0, fc_width=None, input_size=None,
                     in_channels=None):
    """Parameters of a net, from the layer arithmetic alone (Table 2), nothing allocated."""
    return sum(r.params for r in plan(config, num_classes, width, fc_width, input_size,
                                      in_channels))


def format_summary(rows):
    """A printable table of summary rows, with totals (columns as wide as the longest name,
    inception_4a/3x3_reduce say)."""
    a = max([9] + [len(r.name) for r in rows])
    b = max([13] + [len(r.index) for r in rows])
    head = (f"{'layer':<{a}} {'index':<{b}} {'output (C,H,W)':<18} {'params':>12} "
            f"{'rf':>5} {'jump':>5} {'mult-adds':>15} {'act. bytes':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        shape = "x".join(str(d) for d in r.out_shape)
        lines.append(f"{r.name:<{a}} {r.index:<{b}} {shape:<18} {r.params:>12,} {r.rf:>5} "
                     f"{r.jump:>5} {r.madds:>15,} {r.act_bytes:>12,}")
    lines.append("-" * len(head))
    lines.append(f"{'total':<{a}} {'':<{b}} {'':<18} {sum(r.params for r in rows):>12,} "
                 f"{'':>5} {'':>5} {sum(r.madds for r in rows):>15,} "
                 f"{sum(r.act_bytes for r in rows):>12,}")
    return "\n".join(lines)


# -- the model -------------------------------------------------------------------------------
class VGG(nn.Module):
    """A configuration of Table 1 (or an extra of configs.py) as a Module.

    config      'A', 'A-LRN', 'B', 'C', 'D', 'E', 'B-5x5', and the classic nets 'AlexNet',
                'AlexNet-1tower', 'ZFNet', 'LeNet-5' (configs.names()); 'NiN' and
                'GoogLeNet' give their own classes (see __new__)
    num_classes, fc_width, input_size, in_channels
                None: the config's (1000, 4096, 224, 3; LeNet-5: 10, 84, 32, 1). A net of
                one input channel fed RGB takes the channel mean first (the grey level).
    width       scales every conv's channels (rounded, at least 1): 1/16 for quick tests
    fc_width    channels of the hidden FC layers (4096 in the paper)
    input_size  the training crop side (224); fixes FC1's input size
    dropout     p of the dropout layers after the hidden FC layers (sect. 3.1: 0.5)
    init        'paper' | 'glorot' | 'kaiming' | 'zeros' | 'alexnet' (nn.init_weight)
    seed        weights and dropout masks are a function of it
    """

    def __new__(cls, config=None, *args, **kwargs):
        """VGG(config, ...) builds any config of configs.py: a net that is not a chain (NiN,
        GoogLeNet) comes back as its own class, built with the same arguments (and its
        definition() rebuilds it the same way), so checkpoints, the trainer and the tools
        need no second constructor."""
        net = module_of(config) if cls is VGG else None
        if net is not None:
            return net.Model(config, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, config, num_classes=None, width=1.0, fc_width=None, input_size=None,
                 dropout=0.5, init="paper", seed=0, in_channels=None):
        cfg, num_classes, fc_width, input_size, in_channels = checked_arguments(
            config, num_classes, fc_width, input_size, dropout, init, in_channels)
        self.config, self.activation = cfg.name, cfg.activation
        self.num_classes, self.width, self.fc_width = int(num_classes), width, int(fc_width)
        self.input_size, self.dropout, self.init, self.seed = int(input_size), dropout, init, seed
        self.in_channels = int(in_channels)
        self._rows = plan(self.config, num_classes, width, fc_width, input_size, in_channels)
        rng = np.random.default_rng(seed)
        self.features = nn.Sequential(*self._layers("features", rng))
        self.classifier = nn.Sequential(*self._layers("classifier", rng))
        if init == "alexnet":
            self._alexnet_biases()

    def _rows_of(self, part):
        return [r for r in self._rows if r.index.startswith(part + ".")]

    def _layers(self, part, rng):
        """The Modules of `part`, one per plan row, in torchvision's order (the weights are
        drawn in this order, features first)."""
        layers = []
        C = self.in_channels if part == "features" else \
            self._rows_of("features")[-1].out_shape[0]
        for i, row in enumerate(self._rows_of(part)):
            layers.append(self._module(row, C, i, rng))
            C = row.out_shape[0]
        return layers

    def _module(self, row, C, i, rng):
        """The Module of one plan row whose input has C channels; i: its position."""
        K, spec = row.out_shape[0], row.spec
        if row.kind == "conv":
            table = spec.connections()
            if table is not None:
                return nn.MaskedConv2d(C, K, row.kernel, table, row.stride, row.padding,
                                       self.init, rng)
            return nn.Conv2d(C, K, row.kernel, row.stride, row.padding, self.init, rng,
                             spec.groups)
        if row.kind == "fc":
            return nn.Linear(C * row.kernel * row.kernel, K, self.init, rng)
        if row.kind in ACTIVATIONS:
            return ACTIVATIONS[row.kind]()
        if row.kind == "dropout":
            return nn.Dropout(self.dropout, seed=nn.mix32(self.seed, i))
        if row.kind == "lrn":
            return nn.LRN(spec.size, spec.k, spec.alpha, spec.beta)
        if row.kind == "subsample":
            return nn.Subsample2d(C, row.kernel, row.stride)
        return nn.MaxPool2d(row.kernel, row.stride, spec.ceil)

    def _alexnet_biases(self):
        """AlexNet sect. 5: "We initialized the neuron biases in the second, fourth, and
        fifth convolutional layers, as well as in the fully-connected hidden layers, with
        the constant 1" (it speeds up the early stage of learning by giving the ReLUs
        positive inputs); the other biases stay 0."""
        ones = {"conv2", "conv4", "conv5"} | {r.name for r in self._rows_of("classifier")
                                             if r.kind == "fc"}
        ones.discard(self._rows[-1].name)  # the output layer is not a hidden one
        modules = dict(self.named_modules())
        for r in self._rows:
            if r.name in ones:
                backend.copy_into(modules[r.index].bias.data,
                                  np.ones(r.out_shape[0], dtype=np.float32))

    @property
    def feature_side(self):
        """s: the side of the last feature map at input_size (7 for VGG at 224)."""
        return self._rows_of("features")[-1].out_shape[1]

    def definition(self):
        """What rebuilds this model (stored in checkpoints)."""
        return dict(config=self.config, num_classes=self.num_classes, width=self.width,
                    fc_width=self.fc_width, input_size=self.input_size,
                    dropout=self.dropout, init=self.init, seed=self.seed,
                    in_channels=self.in_channels)

    def forward(self, x):
        """x: Tensor (N, in_channels, H, W) whose features reach s x s (a 1-channel net
        also takes RGB) -> logits Tensor (N, classes)."""
        side = self._side_for(x.shape[2]), self._side_for(x.shape[3])
        if side != (self.feature_side,) * 2:
            raise UserError(
                f"an input of {x.shape[2]}x{x.shape[3]} gives a {side[0]}x{side[1]} feature "
                f"map but FC1 expects {self.feature_side}x{self.feature_side} (input_size "
                f"{self.input_size}); use dense() for other sizes")
        return self.classifier(ops.flatten(self.features(self.input_channels(x))))

    def input_channels(self, x):
        """x as the first layer takes it: RGB through ChannelMean for a 1-channel net (image
        folders decode every image to RGB: a grey PNG to three equal channels)."""
        if x.shape[1] == self.in_channels:
            return x
        if self.in_channels == 1 and x.shape[1] == 3:
            return ops.channel_mean(x)
        raise UserError(f"config {self.config} takes {self.in_channels}-channel input, got "
                        f"{x.shape[1]} channels")

    def _side_for(self, H):
        """Feature-map side for an input side H (0 if some layer would get too little)."""
        for r in self._rows_of("features"):
            H = row_side(H, r)
            if H < 1:
                return 0
        return H

    def summary(self):
        """Per-layer rows (LayerRow): shapes, parameters, receptive field, cost; fc6-8 too."""
        return list(self._rows)

    def dense(self):
        """The fully-convolutional view of sect. 3.2, sharing this model's weight arrays.

        FC1 becomes an s x s conv (7x7 at 224: its (out, C*s*s) weight read as
        (out, C, s, s), which is exactly how flatten ordered the inputs), FC2 and FC3 1x1
        convs. Nothing is copied: the conv weights are reshape views, so training or
        loading this model (both write in place) shows in the view. Eval-only: dropout is
        replaced by Identity, keeping torchvision's classifier indices 0, 3, 6.
        """
        return DenseVGG(self)

    def preinitialise_from(self, source):
        """Sect. 3.1: copy net A's first four conv layers and its three FC layers.

        `source` is net A (a VGG) or its state dict. A's convs conv1_1 (3->64),
        conv2_1 (64->128), conv3_1 (128->256), conv3_2 (256->256) are its first four and go
        to the layers of the same names here: for D, features.0, 5, 10, 12 receive A's
        features.0, 3, 6, 8 (the first conv of blocks 1 and 2 and the first two of block
        3, the only ones with those shapes). classifier.0/3/6 go to the same names. All
        else keeps its random init. Shapes are checked before anything is written
        (one-line UserError); returns the names written, weights and biases.
        """
        src = ({n: p.data for n, p in source.named_parameters()}
               if isinstance(source, nn.Module) else dict(source))
        pairs = self._preinit_pairs(src)
        mine = dict(self.named_parameters())
        for s_name, t_name in pairs:
            if backend.shape(src[s_name]) != tuple(mine[t_name].shape):
                raise UserError(
                    f"cannot pre-initialise {t_name} of config {self.config} from "
                    f"{s_name}: shape {nn._shape(backend.shape(src[s_name]))} vs "
                    f"{nn._shape(mine[t_name].shape)} (same width, fc_width, input_size, "
                    "classes?)")
        for s_name, t_name in pairs:
            backend.copy_into(mine[t_name].data, src[s_name])
        return [t for _, t in pairs]

    def _preinit_pairs(self, src):
        """(source name, target name) for every tensor pre-initialisation copies."""
        def conv_index(k):
            parts = k.split(".")
            return int(parts[1]) if len(parts) == 3 and parts[0] == "features" and \
                parts[2] == "weight" and len(backend.shape(src[k])) == 4 else None
        convs = sorted(i for i in map(conv_index, src) if i is not None)
        if len(convs) < 4:
            raise UserError(f"the pre-initialisation source has {len(convs)} conv layers; "
                            "net A has 8")
        index = {r.name: r.index for r in self._rows}
        pairs = []
        for i, target in zip(convs[:4], ("conv1_1", "conv2_1", "conv3_1", "conv3_2")):
            if target not in index:
                raise UserError(f"config {self.config} has no layer {target} to "
                                "pre-initialise from net A")
            pairs += [(f"features.{i}.{t}", f"{index[target]}.{t}") for t in ("weight", "bias")]
        for i in (0, 3, 6):
            pairs += [(f"classifier.{i}.{t}",) * 2 for t in ("weight", "bias")]
        missing = [s for s, _ in pairs if s not in src]
        if missing:
            raise UserError(f"the pre-initialisation source has no tensor {missing[0]!r}")
        return pairs

    def __repr__(self):
        return (f"VGG({self.config!r}, num_classes={self.num_classes}, width={self.width}, "
                f"fc_width={self.fc_width}, input_size={self.input_size})")


class EvalOnly(nn.Module):
    """A view of a net's own modules for evaluation (the dense views): it cannot be put in
    training mode, and leaves the shared modules in the net's own mode."""

    def train(self, mode=True):
        if mode:
            raise UserError("the dense view is for evaluation only; train the net itself")
        self.training = False
        return self


class DenseVGG(EvalOnly):
    """A VGG's fully-convolutional view (VGG.dense()): x (N,3,H,W) -> scores (N,K,P,Q)."""

    def __init__(self, model):
        self.features = model.features  # the same modules: same Parameters
        self._input = model.input_channels
        s, layers = model.feature_side, []
        for m in model.classifier:  # FC1 an s x s conv, the other FCs 1x1; no dropout
            if isinstance(m, nn.Linear):
                layers.append(_conv_view(m, s if not layers else 1))
            else:
                layers.append(nn.Identity() if isinstance(m, nn.Dropout) else m)
        self.classifier = nn.Sequential(*layers)
        self.train(False)

    train = EvalOnly.train

    def forward(self, x):
        return self.classifier(self.features(self._input(x)))


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def _conv_view(linear, side):
    """A Conv2d whose weight is `linear`'s (out, C*side*side) read as (out, C, side, side)."""
    w = linear.weight.data
    K, n_in = w.shape
    C = n_in // (side * side)
    view = w.reshape(K, C, side, side)  # a view: w is C-contiguous
    return nn.Conv2d.wrap(nn.Parameter(view), linear.bias)
