"""Where each framework keeps VGG's weights, and which VGG a set of tensors is.

Everything is brought to torchvision's names and layouts, which are minivgg's own
(DESIGN.md, "Interfaces users expect"): conv weights (K, C, R, S) as features.N.weight,
FC weights (out, in) as classifier.{0,3,6}.weight, FC1's inputs flattened in (c, h, w)
order. Then detect() finds the configuration of Table 1 from the shapes alone.

    torchvision  features.N.*, classifier.{0,3,6}.*: taken as they are.
    timm         the same features; fc6 and fc7 kept as convolutions (pre_logits.fc1 is
                 (4096, 512, 7, 7), pre_logits.fc2 (4096, 4096, 1, 1), timm's form of the
                 paper's sect. 3.2 dense view) and fc8 as head.fc: read back as FC layers.
    keras        one HDF5 group per layer; conv kernels (R, S, C, K) ("HWIO"), dense
                 kernels (in, out), and fc1's inputs flattened channels-last, (h, w, c).
"""
import math

import numpy as np

from minivgg.configs import ConfigError
from minivgg.errors import UserError

# The configurations a set of weights may be: every VGG of Table 1 and sect. 4.1 (A before
# A-LRN: their tensors are the same, and A is what torchvision and Keras call vgg11).
VGG_CONFIGS = ("A", "A-LRN", "B", "C", "D", "E", "B-5x5")
NICKNAMES = {"A": "VGG-11", "B": "VGG-13", "D": "VGG-16", "E": "VGG-19"}

TIMM_TO_TORCHVISION = {"pre_logits.fc1.": "classifier.0.", "pre_logits.fc2.": "classifier.3.",
                       "head.fc.": "classifier.6."}
BATCH_NORM = ("running_mean", "running_var", "num_batches_tracked")


def label(config):
    """'config D (VGG-16)' for messages."""
    nick = NICKNAMES.get(config)
    return f"config {config}" + (f" ({nick})" if nick else "")


def _shape(s):
    return "(" + ", ".join(str(int(d)) for d in s) + ")"


# -- naming ----------------------------------------------------------------------------------
def naming(names):
    """'torchvision', 'timm' or None (not a VGG state dict in either naming)."""
    if any(n.startswith(tuple(TIMM_TO_TORCHVISION)) for n in names):
        return "timm"
    if any(n.startswith(("features.", "classifier.")) for n in names):
        return "torchvision"
    return None


def check_vgg_names(names, path):
    """A one-line UserError for a state dict that is not a plain VGG's (ResNet, vgg16_bn)."""
    names = list(names)
    bn = [n for n in names if n.rsplit(".", 1)[-1] in BATCH_NORM]
    if bn and naming(names):
        raise UserError(f"{path} is a VGG with batch normalisation ({bn[0]!r}: torchvision's "
                        "vgg16_bn and the like); the paper's nets, and minivgg's, have none")
    if naming(names) is None:
        shown = ", ".join(repr(n) for n in names[:4]) + (", ..." if len(names) > 4 else "")
        raise UserError(f"{path} is not a VGG state dict: its {len(names)} tensors are named "
                        f"{shown}, not features.N / classifier.N (torchvision) or pre_logits / "
                        "head.fc (timm) -- another architecture?")


def from_timm(tensors):
    """timm's names and conv-shaped fc6/fc7 -> torchvision's names and (out, in) FC weights."""
    out = {}
    for name, a in tensors.items():
        for old, new in TIMM_TO_TORCHVISION.items():
            if name.startswith(old):
                name = new + name[len(old):]
                if a.ndim == 4:  # (out, C, s, s) read as (out, C*s*s): the same (c, h, w) order
                    a = a.reshape(a.shape[0], -1)
        out[name] = a
    return out


def to_timm_name(name):
    """torchvision's name -> timm's (for messages about a timm file)."""
    for old, new in TIMM_TO_TORCHVISION.items():
        if name.startswith(new):
            return old + name[len(new):]
    return name


# -- what a configuration's tensors look like -------------------------------------------------
def expected_shapes(config, num_classes=1000, width=1.0, fc_width=4096, input_size=224):
    """{torchvision name: shape} of VGG(config, ...)'s parameters, from model.plan alone."""
    from minivgg.model import plan
    out, C = {}, 3
    for r in plan(config, num_classes, width, fc_width, input_size):
        if r.kind == "conv":
            K = r.out_shape[0]
            out[f"{r.index}.weight"], out[f"{r.index}.bias"] = (K, C, r.kernel, r.kernel), (K,)
        elif r.kind == "fc":
            n_out = r.out_shape[0]
            out[f"{r.index}.weight"] = (n_out, r.params // n_out - 1)
            out[f"{r.index}.bias"] = (n_out,)
        if r.index.startswith("features."):
            C = r.out_shape[0]
    return out


def _conv_weights(shapes):
    """[(index, shape)] of the 4-D features.N.weight tensors, by index."""
    out = []
    for name, s in shapes.items():
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "features" and parts[2] == "weight" and \
                parts[1].isdigit() and len(s) == 4:
            out.append((int(parts[1]), s))
    return sorted(out)


def sizes(shapes, path):
    """width, fc_width, num_classes, input_size that the tensor shapes imply.

    width from the first conv (64 channels at width 1), fc_width from fc6, the classes
    from fc8, the input size from fc6's inputs: C * s * s for the last conv's C channels,
    so the last feature map is s x s and the input 32 s (five 2x2 poolings; 224 for s = 7).
    """
    convs = _conv_weights(shapes)
    if not convs:
        raise UserError(f"{path} has no conv weights features.N.weight: not a VGG")
    fc6, fc8 = shapes.get("classifier.0.weight"), shapes.get("classifier.6.weight")
    out = dict(width=convs[0][1][0] / 64, fc_width=fc6[0] if fc6 else 4096,
               num_classes=fc8[0] if fc8 else 1000, input_size=224)
    if fc6 and len(fc6) == 2:
        C = convs[-1][1][0]
        s = math.isqrt(fc6[1] // C) if fc6[1] % C == 0 else 0
        if s < 1 or C * s * s != fc6[1]:
            raise UserError(f"{path}: classifier.0.weight takes {fc6[1]} inputs, which is not "
                            f"C x s x s for the last conv's C = {C} channels: not a VGG")
        out["input_size"] = 32 * s
    return out


def _differences(shapes, want):
    missing = [k for k in want if k not in shapes]
    extra = [k for k in shapes if k not in want]
    wrong = [k for k in want if k in shapes and tuple(shapes[k]) != tuple(want[k])]
    return missing, extra, wrong


def detect(tensors, path, rename=lambda n: n):
    """The VGG definition (config, num_classes, width, fc_width, input_size) of `tensors`.

    Every configuration's expected shapes are compared with the tensors'; the one that
    fits exactly wins. None fits: a one-line UserError against the closest, naming the
    missing, extra and wrongly shaped tensors (`rename` gives the file's own names).
    """
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    guess = sizes(shapes, path)
    best = None
    for config in VGG_CONFIGS:
        try:
            want = expected_shapes(config, **guess)
        except ConfigError:  # an input size too small for this config
            continue
        diff = _differences(shapes, want)
        if not any(diff):
            return dict(config=config, **guess)
        n = sum(map(len, diff))
        if best is None or n < best[0]:
            best = (n, config, want, diff)
    if best is None:
        raise UserError(f"{path}: no VGG configuration fits these tensors")
    raise UserError(_mismatch(path, *best[1:], shapes, guess, rename))


def _mismatch(path, config, want, diff, shapes, guess, rename):
    """'... does not fit config D (VGG-16): missing 'x' (shape); ...' on one line."""
    missing, extra, wrong = diff
    parts = []
    for what, names, show in (
            ("missing", missing, lambda k: f"{rename(k)!r} {_shape(want[k])}"),
            ("unexpected", extra, lambda k: f"{rename(k)!r} {_shape(shapes[k])}"),
            ("wrong shape", wrong, lambda k: f"{rename(k)!r} is {_shape(shapes[k])} where it "
                                             f"should be {_shape(want[k])}")):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            parts.append(f"{what}: " + ", ".join(show(k) for k in names[:3]) + more)
    width = "" if guess["width"] == 1 else f" at width {guess['width']:g}"
    return f"{path} does not fit {label(config)}{width}, the closest VGG: " + "; ".join(parts)


# -- Keras ------------------------------------------------------------------------------------
def _keras_layers(layers, path):
    """[(layer name, kernel, bias)] of the layers that hold weights, conv and dense apart."""
    convs, dense = [], []
    for name, weights in layers:
        if not weights:
            continue  # input, pooling, flatten: nothing stored
        kernels = [w for w in weights if w.ndim in (2, 4)]
        biases = [w for w in weights if w.ndim == 1]
        if len(weights) != 2 or len(kernels) != 1 or len(biases) != 1:
            shapes = ", ".join(_shape(w.shape) for w in weights)
            raise UserError(f"{path}: layer {name!r} holds {len(weights)} weights ({shapes}), "
                            "not a conv or dense kernel and its bias: not a plain VGG "
                            "(batch norm, or another architecture?)")
        (convs if kernels[0].ndim == 4 else dense).append((name, kernels[0], biases[0]))
    if not convs:
        raise UserError(f"{path} holds no conv layers: not a VGG")
    if not dense:
        raise UserError(f"{path} holds no dense layers (an include_top=False 'notop' file?); "
                        "minivgg's VGG needs its classifier, fc1, fc2 and predictions")
    if len(dense) != 3:
        raise UserError(f"{path} holds {len(dense)} dense layers "
                        f"({', '.join(n for n, _, _ in dense)}); VGG has 3 (fc1, fc2, "
                        "predictions)")
    R, S, C_in, _ = convs[0][1].shape
    if R != S or C_in != 3:  # (K, C, R, S): Theano's ordering, whose kernels are also flipped
        raise UserError(f"{path}: the first conv kernel {convs[0][0]!r} is "
                        f"{_shape(convs[0][1].shape)}, not (R, S, 3, K) as TensorFlow orders "
                        "it; only the tf_dim_ordering_tf_kernels files are supported")
    return convs, dense


def from_keras(layers, path):
    """Keras layers [(name, [arrays])] -> {torchvision name: array} and Keras names by them.

    Conv kernels (R, S, C, K) -> (K, C, R, S): TensorFlow's conv, like PyTorch's, is a
    cross-correlation, so no flip. Dense kernels (in, out) -> (out, in). fc1's inputs
    were flattened channels-last, index (h * s + w) * C + c; ours are c * s * s + h * s + w.
    The conv layers get torchvision's indices of the configuration their shapes match.
    """
    convs, dense = _keras_layers(layers, path)
    C, (fc1, fc2, fc3) = convs[-1][1].shape[3], dense
    n_in, n_out = fc1[1].shape
    s = math.isqrt(n_in // C) if n_in % C == 0 else 0
    if s < 1 or C * s * s != n_in:
        raise UserError(f"{path}: {fc1[0]!r} takes {n_in} inputs, which is not s x s x C "
                        f"for the last conv's C = {C} channels: not a VGG")
    w1 = fc1[1].reshape(s, s, C, n_out).transpose(3, 2, 0, 1).reshape(n_out, n_in)
    fcs = [(w1, fc1[2]), (fc2[1].T, fc2[2]), (fc3[1].T, fc3[2])]
    kernels = [(name, k.transpose(3, 2, 0, 1), b) for name, k, b in convs]
    guess = dict(width=kernels[0][1].shape[0] / 64, fc_width=n_out,
                 num_classes=fc3[1].shape[1], input_size=32 * s)
    index = _keras_conv_indices(kernels, guess, path)
    out, names = {}, {}
    for i, (name, w, b) in zip(index, kernels):
        out[f"features.{i}.weight"], out[f"features.{i}.bias"] = w, b
        names[f"features.{i}"] = name
    for i, (w, b), (name, _, _) in zip((0, 3, 6), fcs, dense):
        out[f"classifier.{i}.weight"], out[f"classifier.{i}.bias"] = w, b
        names[f"classifier.{i}"] = name
    return {k: np.ascontiguousarray(v) for k, v in out.items()}, names


def _keras_conv_indices(kernels, guess, path):
    """torchvision's features indices of the convs, from the config their shapes match."""
    got = [k.shape for _, k, _ in kernels]
    closest = None
    for config in VGG_CONFIGS:
        try:
            want = _conv_weights(expected_shapes(config, **guess))
        except ConfigError:
            continue
        if [s for _, s in want] == got:
            return [i for i, _ in want]
        same = sum(s == g for (_, s), g in zip(want, got))
        if len(want) == len(got) and (closest is None or same > closest[0]):
            closest = (same, config, want)  # the same count, and most shapes in common
    if closest is None:
        counts = ", ".join(f"{c} {len(_conv_weights(expected_shapes(c)))}"
                           for c in ("A", "B", "D", "E"))
        raise UserError(f"{path} holds {len(got)} conv layers, which no VGG has ({counts})")
    _, config, want = closest
    j = next(j for j, (_, s) in enumerate(want) if s != got[j])
    hwio = lambda s: _shape((s[2], s[3], s[1], s[0]))  # noqa: E731 (back to Keras's order)
    raise UserError(f"{path}: layer {kernels[j][0]!r} has a kernel of shape {hwio(got[j])} "
                    f"where {label(config)} has {hwio(want[j][1])}")
