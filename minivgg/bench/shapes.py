"""What is timed and tabulated: VGG-16's conv layer shapes, FLOPs and bytes of a pass."""
from dataclasses import dataclass

from minivgg.errors import UserError

PASSES = ("fwd", "bwd-data", "bwd-weight")
NUM_CLASSES = 1000
FLOAT_BYTES = 4


@dataclass(frozen=True)
class ConvShape:
    """A conv layer: x (N, C, H, W), w (K, C, R, S). `same`: later layers of that shape."""
    name: str
    C: int
    K: int
    H: int
    W: int
    R: int = 3
    S: int = 3
    stride: int = 1
    pad: int = 1
    same: tuple = ()

    @property
    def PQ(self):
        return ((self.H + 2 * self.pad - self.R) // self.stride + 1,
                (self.W + 2 * self.pad - self.S) // self.stride + 1)

    def label(self):
        return self.name + (f" (+{', '.join(self.same)})" if self.same else "")

    def describe(self, N):
        return f"{N}x{self.C}x{self.H}x{self.W} -> {self.K} ({self.R}x{self.S})"


def conv_flops(N, C, K, P, Q, R, S):
    """Floating-point operations of one conv pass: N*K*P*Q outputs x C*R*S multiply-adds x 2."""
    return 2 * N * K * P * Q * C * R * S


def conv_bytes(shape, N, pass_):
    """The fewest bytes a pass must move through device memory: every input read once, every
    output written once (float32). fwd: x, w, b -> y; bwd-data: dy, w -> dx; bwd-weight:
    x, dy -> dw (the bias gradient is a separate launch)."""
    P, Q = shape.PQ
    x, y = N * shape.C * shape.H * shape.W, N * shape.K * P * Q
    w = shape.K * shape.C * shape.R * shape.S
    elements = {"fwd": x + w + shape.K + y, "bwd-data": y + w + x, "bwd-weight": x + y + w}
    return FLOAT_BYTES * elements[pass_]


def tflops(flops, ms):
    return flops / (ms * 1e-3) / 1e12 if ms else None


def fc_width(width):
    """FC1/FC2 channels: the paper's 4096, scaled with the convs' width (at least 16)."""
    return max(16, int(round(4096 * width)))


def vgg16_layers(size=224, width=1.0):
    """The conv layers of VGG-16 (config D) at `size`, identical shapes merged into the first."""
    from minivgg.model import plan  # after the device is set: it imports the kernels
    shapes, C, H = {}, 3, size
    for row in plan("D", width=width, input_size=size):
        if row.kind == "conv":
            spec = row.spec
            key = (C, row.out_shape[0], H, spec.kernel, spec.stride, spec.pad)
            if key in shapes:
                first = shapes[key]
                shapes[key] = ConvShape(**{**first.__dict__, "same": first.same + (row.name,)})
            else:
                shapes[key] = ConvShape(row.name, C, row.out_shape[0], H, H, spec.kernel,
                                        spec.kernel, spec.stride, spec.pad)
        C, H = row.out_shape[0], row.out_shape[1]
    return list(shapes.values())


def select_layers(layers, names):
    """The shapes `names` ask for (any VGG-16 conv name; a repeat names its shape); UserError."""
    by_name = {n: s for s in layers for n in (s.name, *s.same)}
    chosen = []
    for n in names:
        if n not in by_name:
            raise UserError(f"unknown layer {n!r}: choose among {', '.join(by_name)}")
        if by_name[n] not in chosen:
            chosen.append(by_name[n])
    return chosen
