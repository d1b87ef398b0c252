"""`python -m minivgg.bench static`: what can be known about the kernels on an H200
without one -- registers, shared memory and occupancy of every kernel (ptx.py,
occupancy.py), the roofline of VGG-16's conv layers (roofline.py), and the launch
geometry of VGG-16's training step and of every kernel version (geometry.py)."""
import argparse
import collections
import json
import os
import platform
import re
import subprocess
import sys

from minivgg.bench import geometry, roofline
from minivgg.bench.occupancy import H200, occupancy, waves
from minivgg.bench.report import fmt, markdown_table, write_text
from minivgg.bench.shapes import PASSES, vgg16_layers
from minivgg.errors import UserError
from minivgg.helpformat import DefaultsHelpFormatter

RESOURCE_HEADER = ("kernel", "threads/block", "registers", "shared memory", "stack, spills",
                   "blocks/SM", "occupancy", "limited by")


def compile_resources():
    """{kernel function name: ptxas report} from a child process (ptx.py) that compiles
    every kernel for sm_90; raises UserError with its last line if it fails."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_ENABLE_CUDASIM", "MINIVGG_DEVICE")}
    proc = subprocess.run([sys.executable, "-m", "minivgg.bench.ptx", "--cc", "9.0",
                           "--ptxas-all", "--no-ptx-text"], capture_output=True, text=True,
                          env=env, timeout=900)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"compiling the kernels for sm_90 failed: {last}")
    return resources_of(json.loads(proc.stdout))


def resources_of(results):
    """{kernel function name: {"registers", "smem", ...} or {"error"}} from ptx.py's JSON."""
    out = {}
    for name, per_cc in results.items():
        entry = per_cc.get("9.0", {})
        report = entry.get("ptxas") if entry.get("ok") else {"ok": False,
                                                             "error": entry.get("error")}
        out[name.split(".", 1)[1]] = report or {"ok": False, "error": "not assembled"}
    return out


def kernel_occupancy(resources, kernel, threads):
    """Occupancy of `kernel` in blocks of `threads`, or None without its ptxas report."""
    r = resources.get(kernel)
    if not r or not r.get("ok") or not threads:
        return None
    return occupancy(threads, r["registers"], r["smem"])


def resource_rows(resources, threads_of):
    rows = []
    for kernel, r in resources.items():
        threads = sorted(threads_of.get(kernel, ()))
        occ = kernel_occupancy(resources, kernel, threads[0] if threads else None)
        if not r.get("ok"):
            rows.append([kernel, ", ".join(map(str, threads)) or "-", r.get("error", "-")[:60],
                         "-", "-", "-", "-", "-"])
            continue
        spills = f"{r['stack']} B, {r['spill_stores']}/{r['spill_loads']} B"
        rows.append([kernel, ", ".join(map(str, threads)) or "-", str(r["registers"]),
                     f"{r['smem']} B", spills, str(occ.blocks) if occ else "-",
                     f"{100 * occ.fraction:.0f}%" if occ else "-", occ.limit if occ else "-"])
    return rows


def _cell(resources, launch):
    """'blocks (waves)' of one launch."""
    occ = kernel_occupancy(resources, launch.kernel, launch.threads)
    w = waves(launch.blocks, occ.blocks) if occ else None
    return f"{launch.blocks} ({fmt(w)})" if w is not None else str(launch.blocks)


def merge_by_label(per_batch, resources):
    """Rows [label, kernel, threads, blocks/SM, 'blocks (waves)' per batch] from
    {N: [(label "name pass", Launch)]}. A layer whose launches are those of an earlier
    layer with the same pass, at every batch, joins that layer's rows (conv3_2, conv3_3)."""
    launches = collections.OrderedDict()  # label -> {N: [Launch]}
    for N, labelled in per_batch.items():
        for label, launch in labelled:
            launches.setdefault(label, {}).setdefault(N, []).append(launch)
    groups = collections.OrderedDict()  # (pass, rows) -> [names]
    for label, by_n in launches.items():
        name, _, what = label.rpartition(" ")
        rows = tuple(_launch_row(resources, by_n, N_list=list(per_batch), i=i)
                     for i in range(max(len(v) for v in by_n.values())))
        groups.setdefault((what, rows), []).append(name)
    return [[f"{', '.join(names)} {what}".strip(), *row]
            for (what, rows), names in groups.items() for row in rows]


def _launch_row(resources, by_n, N_list, i):
    """(kernel, threads, blocks/SM, cell per batch) of the i-th launch of a label."""
    first = next(v[i] for v in by_n.values() if len(v) > i)
    occ = kernel_occupancy(resources, first.kernel, first.threads)
    cells = tuple(_cell(resources, by_n[N][i]) if len(by_n.get(N, ())) > i else "-"
                  for N in N_list)
    return (first.kernel, str(first.threads), str(occ.blocks) if occ else "-", *cells)


def version_rows(args, resources):
    """Rows of every conv and linear kernel version on VGG-16's layers, every batch."""
    per_batch = {N: [] for N in args.batch}
    for N in args.batch:
        for shape in vgg16_layers(args.size):
            for p in PASSES:
                for v in (1, 2, 3):
                    per_batch[N] += [(f"{shape.name} {p}-v{v}", launch)
                                     for launch in geometry.conv_version_launches(shape, N, p, v)]
        side = args.size // 32
        for name, I, O in (("fc6", 512 * side * side, 4096), ("fc7", 4096, 4096),
                           ("fc8", 4096, 1000)):
            for p in PASSES:
                for v in (1, 2):
                    per_batch[N] += [(f"{name} {p}-v{v}", launch)
                                     for launch in geometry.linear_version_launches(N, I, O, p, v)]
    return merge_by_label(per_batch, resources)


def starved(labelled, resources):
    """Per kernel, its launches under one wave: 'kernel: n of m (fewest: blocks (waves),
    label)', the kernels with the most such launches first."""
    by_kernel = collections.OrderedDict()
    for label, launch in labelled:
        occ = kernel_occupancy(resources, launch.kernel, launch.threads)
        w = waves(launch.blocks, occ.blocks) if occ else None
        entry = by_kernel.setdefault(launch.kernel, [0, []])
        entry[0] += 1
        if w is not None and w < 1:
            entry[1].append((launch.blocks, label, launch))
    out = []
    for kernel, (total, few) in sorted(by_kernel.items(), key=lambda kv: -len(kv[1][1])):
        if few:
            blocks, label, launch = min(few, key=lambda t: t[0])
            out.append(f"{kernel} {len(few)} of {total} (fewest: {_cell(resources, launch)} "
                       f"at {label})")
    return out


def _tool_versions():
    from importlib import metadata

    from minivgg.bench.ptx import ptxas_path
    versions = []
    for dist in ("numba", "numba-cuda", "nvidia-cuda-nvcc-cu12"):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    exe = ptxas_path()
    if exe:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
        release = re.search(r"release ([\d.]+)", out)
        versions.append(f"ptxas {release.group(1)}" if release else "ptxas")
    return f"Python {platform.python_version()}, " + ", ".join(versions)


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m minivgg.bench static",
        description="Tables that need no GPU: registers, shared memory and occupancy of every "
                    "kernel for sm_90 (numba.cuda.compile_ptx + ptxas), the roofline of "
                    "VGG-16's conv layers on an H200, and the launch geometry of VGG-16's "
                    "training step and of every kernel version (blocks, waves over 132 SMs).",
        formatter_class=DefaultsHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[32, 64, 128, 256],
                   help="batch sizes of the geometry tables")
    p.add_argument("--roofline-batch", type=int, default=32, help="batch of the roofline")
    p.add_argument("--size", type=int, default=224, help="input side")
    p.add_argument("--no-ptx", action="store_true",
                   help="skip compiling (no registers, occupancy or waves; fast)")
    p.add_argument("--ptx-json", metavar="FILE",
                   help="read `python -m minivgg.bench.ptx --ptxas-all` output from FILE "
                        "instead of compiling")
    p.add_argument("--out", metavar="FILE", help="also write the markdown to FILE")
    return p


def _resources(args):
    if args.no_ptx:
        return {}
    if args.ptx_json:
        try:
            with open(args.ptx_json) as f:
                return resources_of(json.load(f))
        except (OSError, ValueError) as e:
            raise UserError(f"--ptx-json {args.ptx_json}: cannot read ({e})") from None
    return compile_resources()


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.size < 32 or args.size % 32 or any(n < 1 for n in args.batch):
        raise UserError("--size must be a multiple of 32 and every --batch >= 1")
    resources = _resources(args)
    step = {N: geometry.training_step("D", N, args.size) for N in args.batch}
    others = {N: geometry.other_launches(N, args.size) for N in args.batch}
    versions = version_rows(args, resources)
    threads_of = collections.defaultdict(set)
    for labelled in list(step.values()) + list(others.values()):
        for _, launch in labelled:
            threads_of[launch.kernel].add(launch.threads)
    for row in versions:
        threads_of[row[1]].add(int(row[2]))
    lines = []

    def out(text):
        print(text, flush=True)
        lines.append(text)
    sections(args, argv, out, resources, step, others, versions, threads_of)
    if args.out:
        write_text(args.out, "\n".join(lines) + "\n")
    return 0


def sections(args, argv, out, resources, step, others, versions, threads_of):
    by_batch = ("layer and pass", "kernel", "threads", "blocks/SM",
                *(f"N={N}: blocks (waves)" for N in args.batch))
    out("# minivgg.bench static (no GPU needed)\n")
    out(f"- {_tool_versions()}")
    out(f"- target: {H200['name']}, sm_90, {H200['sms']} SMs, FP32 "
        f"{H200['fp32_flops'] / 1e12:g} TFLOP/s, HBM {H200['hbm_bytes_per_s'] / 1e12:g} TB/s")
    out(f"- command: python -m minivgg.bench static {' '.join(argv)}")
    if resources:
        out("\n## Kernel resources on sm_90 (ptxas -v) and theoretical occupancy\n")
        out(markdown_table(RESOURCE_HEADER, resource_rows(resources, threads_of)))
        out("\nthreads/block: as the launchers launch it (geometry below; occupancy at the "
            "first). Occupancy: resident warps of the SM's 64, by the occupancy calculator's "
            "arithmetic, with the largest shared-memory carve-out.")
    layers = vgg16_layers(args.size)
    N = args.roofline_batch
    out(f"\n## Roofline of VGG-16's conv layers at {args.size}, batch {N}, on an H200\n")
    out(markdown_table(roofline.HEADER, roofline.roofline_rows(layers, N)))
    out(f"\nBytes: each input read once, each output written once (float32). Ridge point "
        f"{H200['fp32_flops'] / H200['hbm_bytes_per_s']:.0f} FLOP/byte. The conv part of "
        f"one training step (13 layers, 3 passes, no backward-data for conv1_1) cannot run "
        f"in under {roofline.step_floor_ms(layers, N):.1f} ms at batch {N} in FP32.")
    out(f"\n## Launch geometry of VGG-16's training step at {args.size} (minivgg.ops)\n")
    out(markdown_table(by_batch, merge_by_label(step, resources)))
    out("\nwaves: blocks over the blocks the H200 holds at once (132 SMs x blocks/SM); under "
        "1 part of the GPU idles. Layers whose launches are the same share a row.")
    out("\n## Launch geometry of every conv and linear kernel version\n")
    out(markdown_table(by_batch, versions))
    out("\n## Launch geometry of the launchers the step does not use\n")
    out(markdown_table(by_batch, merge_by_label(others, resources)))
    if resources:
        few = starved(step[args.batch[0]], resources)
        out(f"\nLaunches of the training step under one wave at batch {args.batch[0]}, "
            f"by kernel: " + ("; ".join(few) if few else "none") + ".")
