"""Mutation testing of the kernels' index and launch code, ops.py and metrics.py (issue 21).

    python tools/mutation.py [--workdir DIR] [--only NAME ...] [--list | --report]

Needs mutmut 2 (`pip install "mutmut<3" whatthepatch` -- mutmut 3 rewrites functions into
trampolines, which @cuda.jit kernels cannot be). For every target below, copies the
repository to a scratch directory of its own (mutants are written into the files there,
one at a time) and runs mutmut on the target's selected lines with the target's tests;
then prints a table of mutants killed (a test failed), timed out (counted as killed: a
suite that does not end does not pass), and survived, with each survivor's diff. It takes hours on two cores: the
kernels run in Numba's CUDA simulator; the README's verification section has the last score.

Selected lines (given to mutmut as a patch that "adds" them: --use-patch-file):
    kernels/*.py       the launchers (everything below the "# Launchers" divider, and all
                       of kernels/conv/launchers.py) and, in
                       the @cuda.jit kernels, every index line (those carrying a range
                       comment "# [..." or "# (...", the project's convention), every loop
                       and branch, and every line that reads the grid
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
PYTEST = f"{sys.executable} -m pytest -x -q -n 0 -p no:cacheprovider"  # one process

# name -> (file, tests run against each mutant); tests are ordered cheapest first, and -x
# stops at the first failure, so a killed mutant costs seconds.
WARPS = "tests/test_common.py::test_default_block_sizes_are_whole_warps"
CONV_TESTS = " ".join(f"tests/test_conv.py::test_{t}" for t in (
    "every_pass_over_several_blocks_on_every_axis", "bias_over_several_blocks_on_every_axis",
    "v3_tile_edges", "backward_weight_split_k", "split_gradients_need_their_workspace",
    "split_k_policy", "bias_chunk_policy", "launchers_reject_bad_arguments",
    "split_gradients_are_reproducible_bit_for_bit", "forward_kernel", "backward_data_kernel",
    "backward_weight_kernel", "backward_bias_kernel"))

# name -> (files, tests run against each mutant); tests are ordered cheapest first, and -x
# stops at the first failure, so a killed mutant costs seconds.
TARGETS = {
    "common": (["kernels/common.py"], "tests/test_common.py tests/test_relu.py"),
    **{name: ([f"kernels/{name}.py"], f"tests/test_{name}.py {WARPS}") for name in (
        "relu", "sgd", "dropout", "pool", "lrn", "avgpool", "linear", "softmax_xent",
        "activations", "subsample", "mask", "euclidean", "concat")},
    "conv": ([f"kernels/conv/{m}.py" for m in ("launchers", "v1", "v2", "v3")],
             f"{CONV_TESTS} {WARPS}"),
    "ops": (["minivgg/ops.py"], "tests/test_ops.py tests/test_tape.py tests/test_cpu_fast.py"),
    "metrics": (["minivgg/metrics.py"], "tests/test_metrics.py tests/test_evaluate.py"),
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
    if not path.startswith("kernels/") or path.endswith(("common.py", "launchers.py")):
        return sorted(code)
    launch_start = next((i for i, line in enumerate(text, 1) if line.startswith("# Launcher")),
                        len(text) + 1)  # a file of kernels only (kernels/conv/v2.py)
    chosen = {n for n in code if n >= launch_start}
    body = kernel_bodies(ast.parse(source)) & code
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
    """mutmut on one target, in its own copy of the repository (its own mutmut cache)."""
    paths, tests = TARGETS[name]
    copy_repository(workdir)
    patch = workdir / f"mutation-{name}.patch"
    patch.write_text("".join(patch_for(path, selected(path)) for path in paths))
    command = ["mutmut", "run", "--paths-to-mutate", ",".join(paths),
               "--use-patch-file", str(patch),
               "--runner", f"{PYTEST} {tests}", "--tests-dir", "tests",
               "--disable-mutation-types", "string,fstring,decorator",
               "--test-time-base", "20", "--simple-output", "--no-progress"]
    lines = sum(len(selected(path)) for path in paths)
    print(f"== {name}: {lines} lines of {', '.join(paths)}; tests: {tests}", flush=True)
    subprocess.run(command, cwd=workdir, env=dict(os.environ, PYTHONHASHSEED="0",
                                                  HYPOTHESIS_PROFILE="mutation"))


STATUS = {"ok_killed": "killed", "bad_timeout": "timeout", "bad_survived": "survived",
          "ok_suspicious": "killed", "untested": "untested", "skipped": "skipped"}


def outcomes(workdir):
    """(file, status, mutant id, target directory) of every mutant of every target run."""
    rows = []
    for cache in sorted(workdir.glob("*/.mutmut-cache")):
        db = sqlite3.connect(cache)
        rows += [r + (cache.parent,) for r in db.execute(
            "select SourceFile.filename, Mutant.status, Mutant.id from Mutant "
            "join Line on Mutant.line = Line.id "
            "join SourceFile on Line.sourcefile = SourceFile.id").fetchall()]
        db.close()
    return rows


def report(workdir):
    """The table of outcomes per file, and every survivor's diff."""
    counts, survivors = {}, []
    for filename, status, mutant, target in outcomes(workdir):
        outcome = STATUS.get(status, status)
        counts.setdefault(filename, {}).setdefault(outcome, 0)
        counts[filename][outcome] += 1
        if outcome == "survived":
            survivors.append((mutant, target))
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
    for mutant, target in survivors:
        shown = subprocess.run(["mutmut", "show", str(mutant)], cwd=target,
                               capture_output=True, text=True).stdout
        diff = [line for line in shown.splitlines() if line[:1] in "+-@"
                and not line.startswith(("---", "+++"))]
        print(f"\nsurvivor {target.name}/{mutant}:\n" + "\n".join(diff))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/minivgg-mutation"),
                        help="where each target gets its scratch copy of the repository "
                             "(default: %(default)s)")
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
            paths = TARGETS[name][0]
            lines = sum(len(selected(path)) for path in paths)
            print(f"{name:14s} {lines:4d} lines of {', '.join(paths)}")
        return 0
    if shutil.which("mutmut") is None:
        print("error: mutmut is not installed: pip install 'mutmut<3' whatthepatch",
              file=sys.stderr)
        return 2
    if not args.report:
        for name in names:
            run_target(name, args.workdir / name)
    report(args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
