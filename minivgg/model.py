"""VGG from a configuration of Table 1: the network, its summary, its dense view, its
initialisation and the paper's pre-initialisation from net A.

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
from dataclasses import dataclass

import numpy as np

from minivgg import backend, configs, nn, ops
from minivgg.configs import ConfigError, Conv, Norm, Pool
from minivgg.errors import UserError


# -- the plan: every layer's name, index and shapes, without allocating anything ------------
@dataclass
class LayerRow:
    """One row of the summary: a layer, its output and what it costs (per image).

    name        paper/Caffe style: conv1_1, relu1_1, pool1, ..., fc6, relu6, drop6, fc8
    index       torchvision's: features.0, classifier.6 (the parameter-name prefix)
    out_shape   (C, H, W) of the output; FC layers as (channels, 1, 1)
    params      weights + biases
    rf, jump    receptive field side in input pixels, and the input-pixel distance between
                neighbouring outputs: r <- r + (k-1) j, j <- j s (fc6 seen as an s x s conv)
    madds       multiply-adds
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


def _out_side(H, k, stride, pad, what, cfg_name, input_size):
    side = (H + 2 * pad - k) // stride + 1
    if side < 1:
        raise ConfigError(f"input_size {input_size} is too small for config {cfg_name}: "
                          f"{what} gets a {H}x{H} map, smaller than its {k}x{k} window")
    return side


def plan(config, num_classes=1000, width=1.0, fc_width=4096, input_size=224):
    """The rows of every layer, features then classifier (no arrays are allocated)."""
    cfg = configs.get(config)
    _check_args(width, fc_width, num_classes, input_size)
    rows, C, H, r, j = [], 3, input_size, 1, 1
    block, n_conv, in_block = 1, 0, 0

    def add(name, kind, k=1, s=1, pad=0, params=0, madds=0, spec=None):
        nonlocal r, j
        r, j = r + (k - 1) * j, j * s
        rows.append(LayerRow(name, f"features.{len(rows)}", kind, (C, H, H), params, r, j,
                             madds, 4 * C * H * H, k, s, pad, spec))

    for layer in cfg.layers:
        if isinstance(layer, Conv):
            n_conv, in_block = n_conv + 1, in_block + 1
            tag = f"{block}_{in_block}" if cfg.blocks else f"{n_conv}"
            K, k = _channels(layer.channels, width), layer.kernel
            C_in = C
            H = _out_side(H, k, layer.stride, layer.pad, f"conv{tag}", cfg.name, input_size)
            C = K
            add(f"conv{tag}", "conv", k, layer.stride, layer.pad, K * C_in * k * k + K,
                K * H * H * C_in * k * k, layer)
            add(f"relu{tag}", "relu")
        elif isinstance(layer, Norm):
            add(f"norm{block if cfg.blocks else n_conv}", "lrn", spec=layer)
        elif isinstance(layer, Pool):
            tag = block if cfg.blocks else n_conv
            H = _out_side(H, layer.window, layer.stride, 0, f"pool{tag}", cfg.name,
                          input_size)
            add(f"pool{tag}", "pool", layer.window, layer.stride, spec=layer)
            block, in_block = block + 1, 0
    return rows + _classifier_rows(C, H, r, j, fc_width, num_classes)


def _classifier_rows(C, s, r, j, fc_width, num_classes):
    """fc6 (an s x s conv over the last map, sect. 3.2), relu6, drop6, fc7, ..., fc8."""
    rows, r6 = [], r + (s - 1) * j
    spec = [("fc6", C * s * s, fc_width), ("fc7", fc_width, fc_width),
            ("fc8", fc_width, num_classes)]
    for i, (name, n_in, n_out) in enumerate(spec):
        k = s if i == 0 else 1
        rows.append(LayerRow(name, f"classifier.{3 * i}", "fc", (n_out, 1, 1),
                             n_in * n_out + n_out, r6, j, n_in * n_out, 4 * n_out, k))
        if i < 2:
            n = name[2:]
            for kind, k_ in (("relu", 1), ("drop", 2)):
                rows.append(LayerRow(f"{kind}{n}", f"classifier.{3 * i + k_}",
                                     "relu" if kind == "relu" else "dropout",
                                     (n_out, 1, 1), 0, r6, j, 0, 4 * n_out))
    return rows


def _check_args(width, fc_width, num_classes, input_size):
    if not width > 0:
        raise ConfigError(f"width must be > 0, got {width}")
    for name, v in (("fc_width", fc_width), ("num_classes", num_classes),
                    ("input_size", input_size)):
        if int(v) != v or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v}")


def count_parameters(config, num_classes=1000, width=1.0, fc_width=4096, input_size=224):
    """Parameters of a VGG, from the layer arithmetic alone (Table 2), nothing allocated."""
    return sum(r.params for r in plan(config, num_classes, width, fc_width, input_size))


def format_summary(rows):
    """A printable table of summary rows, with totals."""
    head = (f"{'layer':<9} {'index':<13} {'output (C,H,W)':<18} {'params':>12} "
            f"{'rf':>5} {'jump':>5} {'mult-adds':>15} {'act. bytes':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        shape = "x".join(str(d) for d in r.out_shape)
        lines.append(f"{r.name:<9} {r.index:<13} {shape:<18} {r.params:>12,} {r.rf:>5} "
                     f"{r.jump:>5} {r.madds:>15,} {r.act_bytes:>12,}")
    lines.append("-" * len(head))
    lines.append(f"{'total':<9} {'':<13} {'':<18} {sum(r.params for r in rows):>12,} "
                 f"{'':>5} {'':>5} {sum(r.madds for r in rows):>15,} "
                 f"{sum(r.act_bytes for r in rows):>12,}")
    return "\n".join(lines)


# -- the model -------------------------------------------------------------------------------
class VGG(nn.Module):
    """A configuration of Table 1 (or an extra of configs.py) as a Module.

    config      'A', 'A-LRN', 'B', 'C', 'D', 'E', 'B-5x5', 'AlexNet' (configs.names())
    width       scales every conv's channels (rounded, at least 1): 1/16 for quick tests
    fc_width    channels of the two hidden FC layers (4096 in the paper)
    input_size  the training crop side (224); fixes FC1's input size
    dropout     p of the two dropout layers (sect. 3.1: 0.5)
    init        'paper' | 'glorot' | 'kaiming' | 'zeros' (nn.init_weight)
    seed        weights and dropout masks are a function of it
    """

    def __init__(self, config, num_classes=1000, width=1.0, fc_width=4096, input_size=224,
                 dropout=0.5, init="paper", seed=0):
        if init not in nn.INITS:
            raise ConfigError(f"unknown init {init!r}: choose one of {', '.join(nn.INITS)}")
        if not 0 <= dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self.config = configs.get(config).name
        self.num_classes, self.width, self.fc_width = int(num_classes), width, int(fc_width)
        self.input_size, self.dropout, self.init, self.seed = int(input_size), dropout, init, seed
        self._rows = plan(self.config, num_classes, width, fc_width, input_size)
        rng = np.random.default_rng(seed)
        self.features = nn.Sequential(*self._feature_layers(rng))
        C, s = self._rows_of("features")[-1].out_shape[:2]
        self.classifier = nn.Sequential(
            nn.Linear(C * s * s, fc_width, init, rng), nn.ReLU(),
            nn.Dropout(dropout, seed=nn.mix32(seed, 2)),
            nn.Linear(fc_width, fc_width, init, rng), nn.ReLU(),
            nn.Dropout(dropout, seed=nn.mix32(seed, 5)),
            nn.Linear(fc_width, num_classes, init, rng))

    def _rows_of(self, part):
        return [r for r in self._rows if r.index.startswith(part + ".")]

    def _feature_layers(self, rng):
        """The Modules of the feature stack, one per plan row, in torchvision's order."""
        layers, C = [], 3
        for row in self._rows_of("features"):
            if row.kind == "conv":
                layers.append(nn.Conv2d(C, row.out_shape[0], row.kernel, row.stride,
                                        row.padding, self.init, rng))
            elif row.kind == "relu":
                layers.append(nn.ReLU())
            elif row.kind == "lrn":
                n = row.spec
                layers.append(nn.LRN(n.size, n.k, n.alpha, n.beta))
            else:
                layers.append(nn.MaxPool2d(row.kernel, row.stride))
            C = row.out_shape[0]
        return layers

    @property
    def feature_side(self):
        """s: the side of the last feature map at input_size (7 for VGG at 224)."""
        return self._rows_of("features")[-1].out_shape[1]

    def definition(self):
        """What rebuilds this model (stored in checkpoints)."""
        return dict(config=self.config, num_classes=self.num_classes, width=self.width,
                    fc_width=self.fc_width, input_size=self.input_size,
                    dropout=self.dropout, init=self.init, seed=self.seed)

    def forward(self, x):
        """x: Tensor (N, 3, H, W) whose features reach s x s -> logits Tensor (N, classes)."""
        side = self._side_for(x.shape[2]), self._side_for(x.shape[3])
        if side != (self.feature_side,) * 2:
            raise UserError(
                f"an input of {x.shape[2]}x{x.shape[3]} gives a {side[0]}x{side[1]} feature "
                f"map but FC1 expects {self.feature_side}x{self.feature_side} (input_size "
                f"{self.input_size}); use dense() for other sizes")
        return self.classifier(ops.flatten(self.features(x)))

    def _side_for(self, H):
        """Feature-map side for an input side H (0 if some layer would get too little)."""
        for r in self._rows:
            if r.kind in ("conv", "pool"):
                H = (H + 2 * r.padding - r.kernel) // r.stride + 1
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


class DenseVGG(nn.Module):
    """A VGG's fully-convolutional view (VGG.dense()): x (N,3,H,W) -> scores (N,K,P,Q)."""

    def __init__(self, model):
        self.features = model.features  # the same modules: same Parameters
        fc, s = model.classifier, model.feature_side
        self.classifier = nn.Sequential(
            _conv_view(fc[0], s), nn.ReLU(), nn.Identity(),
            _conv_view(fc[3], 1), nn.ReLU(), nn.Identity(),
            _conv_view(fc[6], 1))
        self.train(False)

    def train(self, mode=True):
        if mode:
            raise UserError("the dense view is for evaluation only; train the VGG itself")
        self.training = False  # the shared features keep the VGG's own mode
        return self

    def forward(self, x):
        return self.classifier(self.features(x))


def _conv_view(linear, side):
    """A Conv2d whose weight is `linear`'s (out, C*side*side) read as (out, C, side, side)."""
    w = linear.weight.data
    K, n_in = w.shape
    C = n_in // (side * side)
    view = w.reshape(K, C, side, side)  # a view: w is C-contiguous
    return nn.Conv2d.wrap(nn.Parameter(view), linear.bias)
