"""The command line of `python -m minivgg.bench` (the timing tables; `static` has its own)."""
import argparse
import os
import sys
import time

from minivgg import backend
from minivgg.bench import timing
from minivgg.bench.report import header_lines, write_text
from minivgg.bench.shapes import PASSES, select_layers, vgg16_layers
from minivgg.errors import UserError
from minivgg.helpformat import DefaultsHelpFormatter

DEFAULTS = {"cuda": dict(size=224, width=1.0), "cpu": dict(size=32, width=0.125)}


class Bench:
    """The run's settings and the device-specific pieces: array module, timers, torch, the
    notes printed under the tables, and the time budget."""

    def __init__(self, args, device, torch):
        self.args, self.device, self.torch = args, device, torch
        gpu = device == "cuda"
        self.xp = backend.xp()
        self.once = timing.cupy_once if gpu else timing.host_once
        self.torch_once = timing.torch_once if gpu else timing.host_once
        self.warmup = max(1, args.warmup) if gpu else args.warmup  # compile, cuDNN autotune
        self.notes, self.left_out, self.t0 = [], [], time.perf_counter()

    def time(self, fn, once=None):
        return timing.median_ms(fn, once or self.once, self.args.steps, self.warmup,
                                self.args.max_seconds)

    def out_of_time(self, label):
        """True (and `label` noted as left out) once --budget-seconds have passed."""
        budget = self.args.budget_seconds
        if budget and time.perf_counter() - self.t0 > budget:
            self.left_out.append(label)
            return True
        return False

    def free(self):
        if self.device == "cuda":
            self.xp.get_default_memory_pool().free_all_blocks()
            if self.torch is not None:
                self.torch.cuda.empty_cache()

    def note(self, text):
        if text not in self.notes:
            self.notes.append(text)

    def progress(self, text):
        print(f"[bench {time.perf_counter() - self.t0:5.0f} s] {text}", file=sys.stderr,
              flush=True)


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m minivgg.bench",
        description="cuda: time the conv kernels (every version) on VGG-16's layers against "
                    "CuPy im2col + cuBLAS and PyTorch cuDNN, the whole training step of "
                    "configs A-E against PyTorch, and the step's launch overhead. cpu: the "
                    "cpu device's whole step and every layer side by side with PyTorch on "
                    "the CPU, at 1 and 2 threads. Prints markdown tables. "
                    "`python -m minivgg.bench static --help`: the tables that need no GPU.",
        formatter_class=DefaultsHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"],
                   default="cpu" if os.environ.get("MINIVGG_DEVICE") == "cpu" else "cuda",
                   help="cuda: the kernels on the GPU; cpu: the NumPy references and PyTorch "
                        "on the CPU, at the cpu preset's size")
    p.add_argument("--batch", type=int, nargs="+", default=[64, 32], help="batch sizes N")
    p.add_argument("--size", type=int, help="input side (default 224 on cuda, 32 on cpu)")
    p.add_argument("--width", type=float,
                   help="multiplier of the conv channels (default 1 on cuda, 0.125 on cpu)")
    p.add_argument("--layers", nargs="*", metavar="NAME",
                   help="cuda: VGG-16 conv layers to time (default: every distinct shape, "
                        "conv1_1 ... conv5_1; a repeated shape such as conv3_3 is conv3_2's)")
    p.add_argument("--passes", nargs="*", choices=PASSES, default=list(PASSES),
                   help="cuda: which passes of each conv layer to time")
    p.add_argument("--versions", type=int, nargs="+", default=[1, 2, 3],
                   help="kernel versions to time; those kernels/conv/ lacks are skipped")
    p.add_argument("--configs", nargs="*", default=list("ABCDE"),
                   help="configurations for the whole training step (none: skip it)")
    p.add_argument("--no-overhead", action="store_true",
                   help="cuda: leave out the launch-overhead table")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="cpu: thread counts, each side at each (threadpoolctl)")
    p.add_argument("--no-layer-table", dest="layer_table", action="store_false",
                   help="cpu: leave out the per-layer table")
    p.add_argument("--steps", type=int, default=10, help="timed runs; the median is reported")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed runs first (at least 1 on cuda: compilation, cuDNN autotuning)")
    p.add_argument("--max-seconds", type=float, default=5.0,
                   help="stop timing one measurement once its timed runs add up to this")
    p.add_argument("--budget-seconds", type=float,
                   help="start no new measurement after this many seconds; what is left "
                        "out is listed under the tables")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    p.add_argument("--out", metavar="FILE", help="also write the markdown to FILE")
    from minivgg.bench.distributed import add_arguments
    add_arguments(p)  # --distributed: 1 vs R processes (sect. 3.3)
    return p


def check_args(args):
    d = DEFAULTS[args.device]
    args.size = d["size"] if args.size is None else args.size
    args.width = d["width"] if args.width is None else args.width
    for name in ("size", "steps"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0 or any(n < 1 for n in args.batch) or any(n < 1 for n in args.threads):
        raise UserError("--warmup must be >= 0, and every --batch and --threads >= 1")
    from minivgg import configs
    for c in args.configs:
        configs.get(c)  # an unknown config: one line, before any work
    layers = vgg16_layers(args.size, args.width)  # a size too small for VGG: one line
    args.shapes = layers if args.layers is None else select_layers(layers, args.layers)


def load_torch(args):
    """torch, or None (not installed, --no-torch, or no CUDA in it for device cuda)."""
    if args.no_torch:
        return None
    try:
        import torch
    except ImportError:
        return None
    if args.device == "cuda" and not torch.cuda.is_available():
        print("note: this PyTorch has no CUDA; its columns stay empty", file=sys.stderr)
        return None
    torch.backends.cudnn.benchmark = True
    return torch


def no_gpu_message():
    """None if CuPy has a usable GPU, else the one line to print instead of benchmarking."""
    usable, why = backend._gpu_status()
    if usable:
        return None
    return (f"minivgg.bench: no CUDA GPU available ({why}); run on a machine with an NVIDIA "
            "GPU, or pass --device cpu to time the NumPy references")


def run_sections(bench, out):
    if bench.args.distributed:
        from minivgg.bench.distributed import distributed_section
        distributed_section(bench, out)
        return
    if bench.device == "cpu":
        from minivgg.bench.cpu import cpu_sections
        cpu_sections(bench, out)
        return
    from minivgg.bench.conv import conv_section
    from minivgg.bench.overhead import overhead_section
    from minivgg.bench.step import step_section
    conv_section(bench, out)
    step_section(bench, out)
    if not bench.args.no_overhead:
        overhead_section(bench, out)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.device == "cuda":
        msg = no_gpu_message()
        if msg and args.distributed:  # the data-parallel table runs on the cpu device too
            print(f"{msg.split(';')[0]}; timing the cpu device instead", file=sys.stderr)
            args.device = "cpu"
        elif msg:
            print(msg)
            return 0
    backend.set_device(args.device)
    check_args(args)
    torch = load_torch(args)
    bench, lines = Bench(args, args.device, torch), []

    def out(text):
        print(text, flush=True)
        lines.append(text)
    out(f"# minivgg.bench ({args.device})\n")
    out("\n".join(header_lines(args.device, torch)))
    out(f"- command: python -m minivgg.bench {' '.join(argv)}")
    run_sections(bench, out)
    if bench.left_out:
        bench.note(f"stopped at --budget-seconds {args.budget_seconds:g}; left out: "
                   + ", ".join(bench.left_out))
    if bench.notes:
        out("\n" + "\n".join(f"- {n}" for n in bench.notes))
    if args.out:
        write_text(args.out, "\n".join(lines) + "\n")
    return 0
