"""The parts of benchmarks/gpu_check.sh, in order, each a function of the Check that
returns an Outcome. Budgets (seconds) keep the whole run under 8 minutes on an H200:
environment about 30 (its commands 20-60 each), then tests and compute-sanitizer side by
side 180, bench 110, training 105 + 20 to save; gpu_check.TOTAL_S cuts any command that
would end past 7 min 20 s. In a dry run each part builds the same command lines and runs
its Python on the sim or cpu device at tiny sizes instead."""
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

from gpu_check import ROOT, Outcome

BUDGET = dict(environment=40, tests=180, sanitizer=180, bench=110, train=105)
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck")

VERSIONS = r"""
import importlib.metadata as m, platform, sys
def v(d):
    try:
        return m.version(d)
    except m.PackageNotFoundError:
        return "not installed"
print("python", platform.python_version(), sys.executable)
for d in ("numpy", "numba", "numba-cuda", "cupy-cuda13x", "cupy-cuda12x", "torch",
          "hypothesis", "pytest", "pytest-xdist", "threadpoolctl"):
    print(d, v(d))
try:
    import cupy
    r = cupy.cuda.runtime.runtimeGetVersion()
    print("CUDA runtime (CuPy)", f"{r // 1000}.{r % 1000 // 10}")
except Exception as e:
    print("CUDA runtime (CuPy): unavailable,", type(e).__name__)
try:
    import torch
    print("torch CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version(),
          "GPU visible:", torch.cuda.is_available())
except Exception as e:
    print("torch: unavailable,", type(e).__name__)
"""
# CuPy sees a GPU and computes on it; then one of our kernels, through Numba, on CuPy arrays.
GPU_PROBE = ("import cupy; n = cupy.cuda.runtime.getDeviceCount(); "
             "assert float((cupy.arange(4, dtype=cupy.float32) ** 2).sum()) == 14.0; "
             "print('CuPy sees', n, 'GPU(s)')")
KERNEL_PROBE = ("from minivgg import backend; backend.set_device('cuda'); import cupy; "
                "from kernels import relu; x = cupy.arange(-4, 4, dtype=cupy.float32); "
                "y = cupy.empty_like(x); relu.forward(x, y); assert float(y.sum()) == 6.0; "
                "print('a Numba kernel ran on CuPy arrays')")


def _last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip()[:200] if lines else "no output"


def environment(c):
    """Versions; minivgg installed without its dependencies (the machine's CuPy and torch
    stay); stop everything if CuPy cannot see the GPU."""
    py = c.python
    cmds = [["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
             "--format=csv,noheader"], [py, "-c", VERSIONS]]
    sanitizer = find_sanitizer()
    install = [py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", "."]
    if c.dry_run:
        c.run([py, "-c", VERSIONS], "env.txt", 60)
        c.log("env.txt", "\n[dry run] would run:\n" + "\n".join(
            " ".join(x) for x in cmds[:1] + [install, [py, "-c", GPU_PROBE],
                                             [py, "-c", KERNEL_PROBE]]) + "\n")
        return Outcome("PASS", "dry run: versions printed, GPU commands built")
    for cmd in cmds + ([[sanitizer, "--version"]] if sanitizer else []):
        c.run(cmd, "env.txt", 20)
    probe = c.run([py, "-c", GPU_PROBE], "env.txt", 30)
    if probe.rc != 0:
        return Outcome("FAIL", f"CuPy cannot see a GPU: {_last_line(probe.output)}", fatal=True)
    pip = c.run(install, "env.txt", 60)
    kernel = c.run([py, "-c", KERNEL_PROBE], "env.txt", 60)
    versions = [line for line in Path(c.out / "env.txt").read_text().splitlines()
                if re.match(r"(python|numba|cupy|torch|NVIDIA|CUDA)", line)]
    if kernel.rc != 0:
        return Outcome("FAIL", f"Numba cannot run a kernel: {_last_line(kernel.output)}",
                       versions)
    note = "" if pip.rc == 0 else " (pip install -e failed: running from the checkout)"
    return Outcome("PASS", f"GPU and Numba kernels usable{note}", versions)


def find_sanitizer():
    """compute-sanitizer on PATH or in the usual CUDA folders, else None."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for pattern in ("/usr/local/cuda*/bin/compute-sanitizer",
                    "/usr/local/cuda*/compute-sanitizer/compute-sanitizer",
                    "/opt/nvidia/*/compute-sanitizer", "/opt/nvidia/*/*/compute-sanitizer"):
        hits = sorted(Path("/").glob(pattern.lstrip("/")))
        if hits:
            return str(hits[-1])
    return None


def kernel_test_files():
    """tests/test_<module>.py of every module in kernels/, then the tests of the rest of the
    cuda path."""
    names = sorted({p.stem for p in (ROOT / "kernels").glob("*.py")}
                   | {p.parent.name for p in (ROOT / "kernels").glob("*/__init__.py")}
                   - {"__init__", "common"})
    files = [f"tests/test_{n}.py" for n in names if (ROOT / "tests" / f"test_{n}.py").exists()]
    # and the tests that run the rest of the cuda path (ops, tape, SGD state, checkpoints,
    # evaluation, top-k, the no-sync setting) on the device
    rest = ["test_whole_step", "test_ops", "test_cuda_paths", "test_metrics", "test_common"]
    return files + [f"tests/{n}.py" for n in rest if f"tests/{n}.py" not in files] + \
        ["tests/test_backend.py::test_no_sync_per_launch_is_in_force_in_this_process"]


def tests(c):
    """Rung 4: the kernel tests, the whole-step test and the PyTorch oracle tests (in the
    kernel tests' files) with MINIVGG_DEVICE=cuda and the gpu hypothesis profile."""
    # -o addopts=: pyproject's "-n auto" needs pytest-xdist, which the GPU machine may lack
    cmd = [c.python, "-m", "pytest", "-o", "addopts=", "-q", "-rfE", "-p", "no:cacheprovider",
           "--maxfail=25", "--durations=10", *kernel_test_files()]
    if importlib.util.find_spec("xdist"):  # 4 processes compile the kernels in parallel
        cmd[6:6] = ["-n", "4", "--dist", "loadfile"]
    env = c.env(MINIVGG_DEVICE="cuda", HYPOTHESIS_PROFILE="gpu", MINIVGG_REQUIRE_PTX="1")
    if c.dry_run:  # the files, the profile and the imports, without running anything
        p = c.run(cmd + ["--collect-only"], "tests.log", 120, env)
        ok = p.rc == 0 and re.search(r"\d+ tests? collected", p.output)
        return Outcome("PASS" if ok else "FAIL", f"dry run: {_last_line(p.output)}")
    p = c.run(cmd, "tests.log", BUDGET["tests"], env)
    summary = _last_line(p.output)
    if p.timed_out:
        return Outcome("FAIL", f"not finished in {BUDGET['tests']} s: {summary}")
    return Outcome("PASS" if p.rc == 0 else "FAIL", summary)


def sanitizer(c):
    """compute-sanitizer's memcheck, racecheck and synccheck, side by side, on a program
    that launches every kernel once and takes one training step (sanitize_run.py)."""
    program = [c.python, "benchmarks/sanitize_run.py"]
    exe = find_sanitizer()
    cmds = {t: [exe or "compute-sanitizer", "--tool", t, "--error-exitcode", "86",
                "--print-limit", "30", *program, "--device", "cuda"] for t in SANITIZER_TOOLS}
    if c.dry_run:
        c.log("sanitizer.log", "[dry run] on a GPU:\n" + "\n".join(
            " ".join(map(str, cmd)) for cmd in cmds.values()) + "\n")
        p = c.run(program + ["--device", "sim"], "sanitizer.log", 300)
        ok = p.rc == 0 and "sanitize_run: OK" in p.output
        return Outcome("PASS" if ok else "FAIL", f"dry run on sim: {_last_line(p.output)}")
    if exe is None:
        return Outcome("SKIPPED", "compute-sanitizer not found")
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(len(cmds)) as pool:
        procs = {t: pool.submit(c.run, cmd, f"sanitizer-{t}.log", BUDGET["sanitizer"])
                 for t, cmd in cmds.items()}
    verdicts = {t: sanitizer_verdict(t, f.result()) for t, f in procs.items()}
    for t in cmds:  # one log: the three runs one after the other
        part = c.out / f"sanitizer-{t}.log"
        c.log("sanitizer.log", part.read_text())
        part.unlink()
    statuses = {s for s, _ in verdicts.values()}
    status = "FAIL" if "FAIL" in statuses else "PASS" if "PASS" in statuses else "SKIPPED"
    return Outcome(status, "; ".join(d for _, d in verdicts.values()))


def sanitizer_verdict(tool, p):
    """(status, detail) of one compute-sanitizer run from its output."""
    found = re.search(r"ERROR SUMMARY: (\d+) errors?", p.output)
    program_ok = "sanitize_run: OK" in p.output
    if found is None:
        refusal = [line for line in p.output.splitlines()
                   if line.startswith("=========") and re.search(r"not supported|error",
                                                                  line, re.I)]
        if refusal and not p.timed_out:
            return "SKIPPED", f"{tool} refused: {refusal[0].strip('= ')[:120]}"
        why = "timed out" if p.timed_out else f"no summary ({_last_line(p.output)})"
        return "FAIL", f"{tool}: {why}"
    errors = int(found.group(1))
    if errors == 0 and program_ok and p.rc == 0 and not p.timed_out:
        return "PASS", f"{tool}: 0 errors"
    extra = "" if program_ok else ", and the program failed"
    return "FAIL", f"{tool}: {errors} errors{extra}"


def bench(c):
    """python -m minivgg.bench in budget mode: VGG-16's conv layers at 224, every kernel
    version, batch 32, beside im2col + cuBLAS and cuDNN (TF32 off and on); the step of B
    and D with peak memory; the launch overhead of the step."""
    md = c.out / "bench.md"
    cmd = [c.python, "-m", "minivgg.bench", "--device", "cuda", "--batch", "32",
           "--configs", "B", "D", "--steps", "5", "--warmup", "1", "--max-seconds", "1",
           "--budget-seconds", str(BUDGET["bench"] - 30), "--out", md]
    if c.dry_run:
        c.log("bench.log", "[dry run] on a GPU: " + " ".join(map(str, cmd)) + "\n")
        cmd = [c.python, "-m", "minivgg.bench", "--device", "cpu", "--batch", "2",
               "--configs", "A", "--threads", "1", "--steps", "1", "--warmup", "0",
               "--out", md]
    p = c.run(cmd, "bench.log", BUDGET["bench"])
    tables = re.findall(r"^## (.+?)(?: at | on |,|\(|$)", md.read_text(), re.M) \
        if md.exists() else []
    if p.rc != 0 or p.timed_out or not tables:
        return Outcome("FAIL", f"{'timed out: ' if p.timed_out else ''}{_last_line(p.output)}")
    return Outcome("PASS", f"{len(tables)} tables in bench.md: {', '.join(tables)}")


def start_data(c):
    """Draw the shapes set for training in the background (CPU work, while the GPU runs
    the tests): the cuda preset's 96-pixel images."""
    size, n_train, n_val, workers = (40, 20, 10, 1) if c.dry_run else (96, 5000, 1000, 8)
    c.tmp.mkdir(parents=True, exist_ok=True)
    data = c.tmp / "shapes"
    cmd = [c.python, "-m", "minivgg.data", "shapes", data, "--size", size, "--train",
           n_train, "--val", n_val, "--workers", workers]
    c.log("train.log", "$ " + " ".join(map(str, cmd)) + "  (in the background)\n")
    log = open(c.out / "train.log", "a")
    c.background["data"] = (subprocess.Popen(list(map(str, cmd)), stdout=log,
                                             stderr=subprocess.STDOUT, cwd=ROOT, env=c.env()),
                            data, log)


def train(c):
    """python -m minivgg.train --config B --preset cuda for a fixed budget (SIGINT at the
    end: it saves and stops), then images/s and the validation accuracy reached."""
    proc, data, log = c.background["data"]
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    if proc.returncode != 0:
        return Outcome("FAIL", f"drawing the data set failed (exit {proc.returncode})")
    run = c.tmp / "run"
    cmd = [c.python, "-m", "minivgg.train", "--config", "B", "--preset", "cuda", "--device",
           "cuda", "--data", data, "--out", run, "--workers", "8"]
    if c.dry_run:
        c.log("train.log", "[dry run] on a GPU: " + " ".join(map(str, cmd)) + "\n")
        cmd = [c.python, "-m", "minivgg.train", "--config", "A", "--preset", "cpu", "--device",
               "cpu", "--data", data, "--out", run, "--workers", "1", "--epochs", "1",
               "--batch-size", "5", "--warmup-steps", "0"]
    p = c.run(cmd, "train.log", BUDGET["train"], interrupt_ok=True)
    return train_outcome(c, p, run / "metrics.jsonl")


def train_outcome(c, p, metrics):
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] \
        if metrics.exists() else []
    if metrics.exists():
        shutil.copy(metrics, c.out / "train-metrics.jsonl")
    if not rows or p.rc not in (0, 130):
        return Outcome("FAIL", f"exit {p.rc}, {len(rows)} epochs: {_last_line(p.output)}")
    best = min(rows, key=lambda r: r["val_top1_error"])
    stopped = " (stopped at the budget)" if p.rc == 130 else ""
    return Outcome("PASS", f"{len(rows)} epochs in {p.seconds:.0f} s{stopped}; "
                           f"{rows[-1]['images_per_s']:.0f} images/s; best val top-1 accuracy "
                           f"{100 * (1 - best['val_top1_error']):.1f}% (epoch {best['epoch']})")


def cleanup(c):
    """Stop the data drawing if it still runs; remove the data set and the run."""
    for proc, _, log in c.background.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    shutil.rmtree(c.tmp, ignore_errors=True)
