"""Every GPU check in one command (benchmarks/gpu_check.sh runs this): the parts in
gpu_parts.py, each under a time budget, their logs and tables in one output directory,
one PASS / FAIL / SKIPPED line per part, and an exit status that says whether all passed.

    python benchmarks/gpu_check.py [OUT_DIR] [--dry-run]

OUT_DIR (default benchmarks/gpu-<date>) gets at most 8 files of at most 16 MB: summary.md,
env.txt, tests.log, sanitizer.log, bench.md, bench.log, train.log, train-metrics.jsonl.
--dry-run runs anywhere: it builds every part's command lines and exercises the Python
parts on the sim and cpu devices at tiny sizes, so the script is known to work before
the few minutes of a GPU are spent on it.

Exit status: 0 no part failed (a SKIPPED part, such as a refused compute-sanitizer, is
said in its line), 1 some part failed, 2 the GPU is not usable (nothing else run).
"""
import argparse
import concurrent.futures
import datetime
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ROOT = Path(__file__).resolve().parents[1]
MAX_FILES, MAX_BYTES = 8, 16 * 2**20
GRACE_S = 20  # after SIGINT at the budget, time to save and print before SIGKILL
# Every command's budget is also cut to what is left of this (from the start), keeping
# GRACE_S and the summary inside the 8 minutes whatever a part takes.
TOTAL_S = 8 * 60 - 2 * GRACE_S


@dataclass
class Outcome:
    """What a part reports: PASS / FAIL / SKIPPED, one line of detail, more lines for the
    summary, and its time (filled in by the runner)."""
    status: str
    detail: str
    lines: list = field(default_factory=list)
    seconds: float = 0.0
    fatal: bool = False  # nothing else can run (no usable GPU)


@dataclass
class Proc:
    rc: int
    timed_out: bool
    seconds: float
    output: str  # what the command printed (also in its log)


class Check:
    """The run's settings and the one way to run a command: logged, under a budget."""

    def __init__(self, out, dry_run, python=sys.executable):
        self.out, self.dry_run, self.python = Path(out), dry_run, python
        self.t0 = time.perf_counter()
        self.tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"minivgg-gpu-check-{os.getpid()}"
        self.background = {}

    def env(self, **extra):
        env = {k: v for k, v in os.environ.items()
               if k not in ("MINIVGG_DEVICE", "NUMBA_ENABLE_CUDASIM", "HYPOTHESIS_PROFILE")}
        env.update(PYTHONUNBUFFERED="1", **{k: str(v) for k, v in extra.items()})
        return env

    def log(self, name, text):
        with open(self.out / name, "a") as f:
            f.write(text)

    def run(self, cmd, log, timeout, env=None, interrupt_ok=False):
        """Run cmd (a list), its output appended to OUT/log under a '$ cmd' line. At
        `timeout` seconds it gets SIGINT (pytest then prints its summary, training saves),
        and SIGKILL GRACE_S later. interrupt_ok: reaching the budget is the plan (training
        for a fixed time), not a failure."""
        self.log(log, f"\n$ {shlex.join(map(str, cmd))}\n")
        start, path = time.perf_counter(), self.out / log
        timeout = max(1.0, min(timeout, TOTAL_S - (start - self.t0)))
        with open(path, "a") as f:
            begin = f.tell()
            try:
                proc = subprocess.Popen(list(map(str, cmd)), stdout=f, stderr=subprocess.STDOUT,
                                        cwd=ROOT, env=env or self.env(), start_new_session=True)
            except OSError as e:
                f.write(f"cannot start: {e}\n")
                return Proc(127, False, 0.0, f"cannot start: {e}")
            timed_out = _wait(proc, timeout)
        with open(path) as f:
            f.seek(begin)
            output = f.read()
        rc = proc.returncode
        if timed_out:
            self.log(log, f"\n[gpu_check: stopped at the {timeout:.0f} s budget]\n")
        return Proc(rc, timed_out and not interrupt_ok, time.perf_counter() - start, output)


def _wait(proc, timeout):
    """Wait for proc; at the timeout interrupt its process group, then kill it. Returns
    whether the timeout was reached."""
    try:
        proc.wait(timeout=timeout)
        return False
    except subprocess.TimeoutExpired:
        pass
    for sig, wait_s in ((signal.SIGINT, GRACE_S), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    return True


def timed(part, check):
    """Run one part, catching what it raises: a bug in one part must not stop the others."""
    start = time.perf_counter()
    try:
        outcome = part(check)
    except Exception as e:  # report it as that part's failure, go on
        outcome = Outcome("FAIL", f"gpu_check itself failed: {type(e).__name__}: {e}")
    outcome.seconds = time.perf_counter() - start
    return outcome


def status_line(name, o):
    return f"{o.status:7s} {name:12s} {o.seconds:6.1f} s  {o.detail}"


def cap_files(out):
    """Keep the output within what a caller copies back: a file over MAX_BYTES keeps its
    last MAX_BYTES (logs end with the verdicts); extra files are reported."""
    files = sorted(p for p in Path(out).iterdir() if p.is_file())
    for p in files:
        if p.stat().st_size > MAX_BYTES:
            data = p.read_bytes()[-(MAX_BYTES - 200):]
            p.write_bytes(b"[gpu_check: the beginning was cut to keep 16 MB]\n" + data)
    return files


FILES = ("summary.md", "env.txt", "tests.log", "sanitizer.log", "bench.md", "bench.log",
         "train.log", "train-metrics.jsonl")


def write_summary(check, argv, results, seconds):
    lines = [f"# gpu_check {datetime.datetime.now():%Y-%m-%d %H:%M}"
             f"{' (dry run)' if check.dry_run else ''}\n",
             f"- command: benchmarks/gpu_check.sh {shlex.join(argv)}",
             f"- host: {os.uname().nodename}, {os.cpu_count()} CPUs; {seconds:.0f} s in all\n",
             "```", *(status_line(n, o) for n, o in results.items()), "```"]
    for name, o in results.items():
        if o.lines:
            lines += [f"\n## {name}\n", *o.lines]
    check.log("summary.md", "\n".join(lines) + "\n")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="benchmarks/gpu_check.sh",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", help="output directory (default benchmarks/gpu-<date>)")
    p.add_argument("--dry-run", action="store_true",
                   help="no GPU: build the commands, run the Python parts on sim/cpu, tiny")
    args = p.parse_args(argv)
    out = Path(args.out or ROOT / "benchmarks" / f"gpu-{datetime.date.today():%Y-%m-%d}")
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:  # a second run into the same directory replaces the first
        (out / name).unlink(missing_ok=True)
    import gpu_parts
    check, results, t0 = Check(out, args.dry_run), {}, time.perf_counter()

    def done(name, outcome):
        results[name] = outcome
        print(status_line(name, outcome), flush=True)
    print(f"gpu_check{' --dry-run' if args.dry_run else ''}: output in {out}", flush=True)
    done("environment", timed(gpu_parts.environment, check))
    if results["environment"].fatal:
        print(f"gpu_check: {results['environment'].detail}")
        write_summary(check, argv, results, time.perf_counter() - t0)
        return 2
    gpu_parts.start_data(check)  # drawn on the CPU while the GPU runs tests
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = {pool.submit(timed, gpu_parts.tests, check): "tests",
                   pool.submit(timed, gpu_parts.sanitizer, check): "sanitizer"}
        for future in concurrent.futures.as_completed(running):
            done(running[future], future.result())
    done("bench", timed(gpu_parts.bench, check))
    done("train", timed(gpu_parts.train, check))
    gpu_parts.cleanup(check)
    seconds = time.perf_counter() - t0
    write_summary(check, argv, results, seconds)
    cap_files(out)
    failed = [n for n, o in results.items() if o.status == "FAIL"]
    print(f"gpu_check: {len(results) - len(failed)} of {len(results)} parts without failure "
          f"in {seconds:.0f} s; {', '.join(failed) or 'none'} failed; see {out}/summary.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
