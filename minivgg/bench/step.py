"""The whole training step (forward, soft-max loss, backward, SGD with momentum) of a VGG
configuration, ours through minivgg.ops and the same net in PyTorch; on cuda also peak
memory and the launch overhead (host time per step against GPU time per step)."""
import gc
from dataclasses import dataclass

import numpy as np

from minivgg import backend
from minivgg.bench.report import fmt_bytes, markdown_table
from minivgg.bench.shapes import NUM_CLASSES, fc_width
from minivgg.bench.timing import tf32

STEP_HEADER = ("config", "batch", "images/s", "peak memory", "torch images/s", "torch peak")
OVERHEAD_HEADER = ("config", "batch", "launches/step", "host ms/step", "GPU ms/step",
                   "host µs/launch", "host/GPU")


@dataclass(frozen=True)
class Net:
    """The net a step trains: a config of Table 1 at `size`, channels scaled by `width`,
    FC1/FC2 of `fc` channels, dropout p, and the SGD settings both sides use."""
    config: str
    size: int
    width: float
    fc: int
    classes: int = NUM_CLASSES
    dropout: float = 0.5
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4

    @classmethod
    def scaled(cls, config, size, width):
        """The bench's default: the paper's net with every width scaled, 1000 classes."""
        return cls(config, size, width, fc_width(width))


def our_step(net, N, seed=0):
    """One SGD step of `net` at batch N through minivgg.ops (ops' default kernel versions).
    backward() frees each step's graph, so activations do not pile up across steps."""
    from minivgg import ops
    from minivgg.model import VGG
    from minivgg.optim import SGD
    from minivgg.tape import Tensor
    model = VGG(net.config, net.classes, net.width, net.fc, net.size, dropout=net.dropout,
                init="kaiming", seed=seed)
    opt = SGD(model.named_parameters(), lr=net.lr, momentum=net.momentum,
              weight_decay=net.weight_decay)
    x = backend.to_device(np.random.default_rng(seed).standard_normal(
        (N, 3, net.size, net.size), dtype=np.float32))
    labels = (np.arange(N) % net.classes).astype(np.int32)  # host labels, as training passes

    def step():
        opt.zero_grad()
        loss = ops.softmax_cross_entropy(model(Tensor(x)), labels)
        loss.backward()
        opt.step()
    return step


def torch_vgg(torch, net):
    """The same net in PyTorch, laid out as torchvision's VGG (in-place ReLUs); for the
    classic nets, grouped convs, tanh, and LeNet-5's sub-sampling as an average pool (its
    coefficient and bias cost nothing measurable; C3 runs as the full conv ours does)."""
    from minivgg.model import defaults, plan
    nn, layers, C = torch.nn, [], defaults(net.config)[3]
    act = {"relu": lambda: nn.ReLU(inplace=True), "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
    for r in plan(net.config, net.classes, net.width, net.fc, net.size):
        if r.kind == "conv":
            layers.append(nn.Conv2d(C, r.out_shape[0], r.kernel, r.stride, r.padding,
                                    groups=r.spec.groups))
        elif r.kind in act:
            layers.append(act[r.kind]())
        elif r.kind == "lrn":
            s = r.spec  # PyTorch's alpha multiplies the window's mean, ours (AlexNet's) its sum
            layers.append(nn.LocalResponseNorm(s.size, s.alpha * s.size, s.beta, s.k))
        elif r.kind == "subsample":
            layers.append(nn.AvgPool2d(r.kernel, r.stride))
        elif r.kind == "fc":
            if r.index == "classifier.0":
                layers.append(nn.Flatten())
            layers.append(nn.Linear(C * r.kernel * r.kernel, r.out_shape[0]))
        elif r.kind == "dropout":
            if net.dropout:
                layers.append(nn.Dropout(net.dropout))
        else:
            layers.append(nn.MaxPool2d(r.kernel, r.stride, ceil_mode=r.spec.ceil))
        C = r.out_shape[0]
    return nn.Sequential(*layers)


def has_torch_twin(config):
    """torch_vgg builds the chains of configs.py; the nets with branches (NiN, GoogLeNet)
    have their PyTorch twins in tests/test_nin_googlenet.py only, so the bench times
    them without a PyTorch column."""
    from minivgg import configs
    return configs.get(config).module is None


def torch_step(torch, net, N, device):
    """PyTorch's step of the same net, or None when it has no twin here (has_torch_twin)."""
    if torch is None or not has_torch_twin(net.config):
        return None
    model = torch_vgg(torch, net).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=net.lr, momentum=net.momentum,
                          weight_decay=net.weight_decay)
    from minivgg.model import defaults
    x = torch.randn(N, defaults(net.config)[3], net.size, net.size, device=device)
    labels = torch.arange(N, device=device) % net.classes

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), labels).backward()
        opt.step()
    return step


def cupy_peak_bytes(step):
    """Peak bytes in use from CuPy's pool during one step (a memory hook counts them)."""
    import cupy
    pool = cupy.get_default_memory_pool()

    class Peak(cupy.cuda.MemoryHook):
        name = "minivgg.bench.peak"

        def __init__(self):
            self.used = self.peak = pool.used_bytes()

        def malloc_postprocess(self, **kw):
            self.used += kw["mem_size"]
            self.peak = max(self.peak, self.used)

        def free_postprocess(self, **kw):
            self.used -= kw["mem_size"]

    gc.collect()
    hook = Peak()
    with hook:
        step()
        cupy.cuda.get_current_stream().synchronize()
    return hook.peak


def step_rows(bench, cfg, N):
    """[config, N, images/s, peak, torch images/s, torch peak] on cuda, TF32 off."""
    net, torch = Net.scaled(cfg, bench.args.size, bench.args.width), bench.torch
    step = our_step(net, N)
    ms = bench.time(step)
    peak = cupy_peak_bytes(step)
    del step
    gc.collect()
    bench.free()
    t_ips = t_peak = None
    if torch is not None and has_torch_twin(cfg):
        with tf32(torch, False):
            step = torch_step(torch, net, N, "cuda")
            t_ms = bench.time(step, bench.torch_once)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            t_ips, t_peak = N * 1e3 / t_ms, torch.cuda.max_memory_allocated()
        del step
        bench.free()
    return [cfg, str(N), N * 1e3 / ms, fmt_bytes(peak), t_ips, fmt_bytes(t_peak)]


def step_section(bench, out):
    a, rows = bench.args, []
    for N in a.batch:
        for cfg in a.configs:
            if not bench.out_of_time(f"step {cfg} N={N}"):
                bench.progress(f"step {cfg} N={N}")
                rows.append(step_rows(bench, cfg, N))
    if rows:
        out(f"\n## Whole training step at {a.size} (width {a.width:g}): forward, loss, "
            f"backward, SGD\n")
        out(markdown_table(STEP_HEADER, rows))
        out("\npeak memory: bytes in use from CuPy's pool; torch: max_memory_allocated; "
            "torch with TF32 off.")
