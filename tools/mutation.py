"""Mutation testing of the kernels' index and launch code, ops.py and metrics.py (issue 21).

    python tools/mutation.py [--workdir DIR] [--only NAME ...] [--list]

Needs mutmut 2 (`pip install "mutmut<3" whatthepatch` -- mutmut 3 rewrites functions into
trampolines, which @cuda.jit kernels cannot be). Copies the repository to a scratch
directory (mutants are written into the files there, one at a time), then for every target
below runs mutmut on the target's selected lines with the target's tests, and prints a table
of mutants killed (a test failed), timed out (counted as killed: a suite that does not end
does not pass), and survived, with each survivor's diff. It takes hours on two cores: the
kernels run in Numba's CUDA simulator; the README's verification section has the last score.

Selected lines (given to mutmut as a patch that "adds" them: --use-patch-file):
    kernels/*.py       the launchers (everything below the "# Launchers" divider) and, in
                       the @cuda.jit kernels, every index line (those carrying a range
                       comment "# [..." or "# (...", the project's convention), every loop
                       and branch, and every line that reads the grid; in the small kernel
                       files, every line of a kernel body
    kernels/common.py  all of it (the launch guard, the recorder)
    minivgg/ops.py, minivgg/metrics.py  all of it
String and f-string mutations (error messages) and decorator removal are skipped.
"""
import argparse
import ast
import difflib
import io
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTEST = f"{sys.executable} -m pytest -x -q -p no:cacheprovider"
SMALL_KERNELS = {"relu", "sgd", "dropout", "pool", "lrn", "avgpool", "linear", "softmax_xent"}

# name -> (file, tests run against each mutant); tests are ordered cheapest first, and -x
# stops at the first failure, so a killed mutant costs seconds.
TARGETS = {
    "common": ("kernels/common.py", "tests/test_common.py tests/test_relu.py"),
    "relu": ("kernels/relu.py", "tests/test_relu.py"),
    "sgd": ("kernels/sgd.py", "tests/test_sgd.py"),
    "dropout": ("kernels/dropout.py", "tests/test_dropout.py"),
    "pool": ("kernels/pool.py", "tests/test_pool.py"),
    "lrn": ("kernels/lrn.py", "tests/test_lrn.py"),
    "avgpool": ("kernels/avgpool.py", "tests/test_avgpool.py"),
    "linear": ("kernels/linear.py", "tests/test_linear.py"),
    "softmax_xent": ("kernels/softmax_xent.py", "tests/test_softmax_xent.py"),
    "conv": ("kernels/conv.py", "tests/test_conv.py"),
    "ops": ("minivgg/ops.py", "tests/test_ops.py tests/test_tape.py tests/test_cpu_fast.py"),
    "metrics": ("minivgg/metrics.py", "tests/test_metrics.py tests/test_evaluate.py"),
}
RANGE_COMMENT = re.compile(r"#\s*[\[(]")
GRID_READS = re.compile(r"cuda\.(grid|gridsize|blockIdx|threadIdx|blockDim)")
CONTROL = re.compile(r"^\s*(for|while|if|elif|return)\b")


def code_lines(source):
    """Line numbers holding code: not blank, not only a comment, not a docstring."""
    lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                            tokenize.DEDENT, tokenize.ENDMARKER):
            lines.update(range(tok.start[0], tok.end[0] + 1))
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and \
                isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            lines -= set(range(body[0].lineno, body[0].end_lineno + 1))
    return lines


def kernel_bodies(tree):
    """{line: True} for the lines of @cuda.jit function bodies."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(
                "jit" in ast.unparse(d) for d in node.decorator_list):
            lines.update(range(node.body[0].lineno, node.end_lineno + 1))
    return lines


def selected(path):
    """The line numbers of `path` to mutate (see the module docstring)."""
    source = (ROOT / path).read_text()
    code, text = code_lines(source), source.splitlines()
    if not path.startswith("kernels/") or path.endswith("common.py"):
        return sorted(code)
    launch_start = next(i for i, line in enumerate(text, 1) if line.startswith("# Launcher"))
    chosen = {n for n in code if n >= launch_start}
    body = kernel_bodies(ast.parse(source)) & code
    if Path(path).stem in SMALL_KERNELS:
        return sorted(chosen | body)
    for n in body:
        line = text[n - 1]
        if RANGE_COMMENT.search(line) or GRID_READS.search(line) or CONTROL.match(line):
            chosen.add(n)
    return sorted(chosen)


def patch_for(path, lines):
    """A unified diff whose added lines are exactly `lines` of `path` (for mutmut)."""
    text = (ROOT / path).read_text().splitlines(keepends=True)
    keep = set(lines)
    before = [line for n, line in enumerate(text, 1) if n not in keep]
    return "".join(difflib.unified_diff(before, text, path, path, n=0))


def copy_repository(workdir):
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (workdir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, workdir / name)


def run_target(name, workdir):
    path, tests = TARGETS[name]
    patch = workdir / f"mutation-{name}.patch"
    patch.write_text(patch_for(path, selected(path)))
    command = ["mutmut", "run", "--paths-to-mutate", path, "--use-patch-file", str(patch),
               "--runner", f"{PYTEST} {tests}", "--tests-dir", "tests",
               "--disable-mutation-types", "string,fstring,decorator",
               "--test-time-base", "60", "--simple-output", "--no-progress"]
    print(f"== {name}: {len(selected(path))} lines of {path}; tests: {tests}", flush=True)
    subprocess.run(command, cwd=workdir, env=dict(os.environ, PYTHONHASHSEED="0"))


STATUS = {"ok_killed": "killed", "bad_timeout": "timeout", "bad_survived": "survived",
          "ok_suspicious": "killed", "untested": "untested", "skipped": "skipped"}


def report(workdir):
    """The table of outcomes per file, and every survivor's diff."""
    db = sqlite3.connect(workdir / ".mutmut-cache")
    rows = db.execute("select SourceFile.filename, Mutant.status, Mutant.id from Mutant "
                      "join Line on Mutant.line = Line.id "
                      "join SourceFile on Line.sourcefile = SourceFile.id").fetchall()
    counts, survivors = {}, []
    for filename, status, mutant in rows:
        outcome = STATUS.get(status, status)
        counts.setdefault(filename, {}).setdefault(outcome, 0)
        counts[filename][outcome] += 1
        if outcome == "survived":
            survivors.append(mutant)
    print("| file | mutants | killed | timed out | survived | not run | score |")
    print("|---|---|---|---|---|---|---|")
    total = dict(killed=0, timeout=0, survived=0)
    for filename, c in sorted(counts.items()):
        k, t, s = c.get("killed", 0), c.get("timeout", 0), c.get("survived", 0)
        n = sum(c.values())
        for key, v in (("killed", k), ("timeout", t), ("survived", s)):
            total[key] += v
        run = k + t + s
        score = f"{100 * (k + t) / run:.1f}%" if run else "-"
        print(f"| {filename} | {n} | {k} | {t} | {s} | {n - run} | {score} |")
    run = sum(total.values())
    if run:
        print(f"| all | {run} | {total['killed']} | {total['timeout']} | {total['survived']} "
              f"| | {100 * (total['killed'] + total['timeout']) / run:.1f}% |")
    for mutant in survivors:
        shown = subprocess.run(["mutmut", "show", str(mutant)], cwd=workdir,
                               capture_output=True, text=True).stdout
        diff = [line for line in shown.splitlines() if line[:1] in "+-@"
                and not line.startswith(("---", "+++"))]
        print(f"\nsurvivor {mutant}:\n" + "\n".join(diff))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/minivgg-mutation"),
                        help="scratch copy of the repository (default: %(default)s)")
    parser.add_argument("--only", nargs="+", choices=sorted(TARGETS), metavar="NAME",
                        help=f"targets to run, of: {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--list", action="store_true",
                        help="print how many lines each target mutates, and stop")
    parser.add_argument("--report", action="store_true",
                        help="print the table of an earlier run in --workdir, and stop")
    args = parser.parse_args(argv)
    names = args.only or list(TARGETS)
    if args.list:
        for name in names:
            print(f"{name:14s} {len(selected(TARGETS[name][0])):4d} lines of {TARGETS[name][0]}")
        return 0
    if shutil.which("mutmut") is None:
        print("error: mutmut is not installed: pip install 'mutmut<3' whatthepatch",
              file=sys.stderr)
        return 2
    if not args.report:
        args.workdir.mkdir(parents=True, exist_ok=True)
        copy_repository(args.workdir)
        for name in names:
            run_target(name, args.workdir)
    report(args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
