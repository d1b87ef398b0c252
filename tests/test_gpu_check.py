"""benchmarks/gpu_check.sh: the dry run (every part's commands built, the Python parts run
on sim and cpu at tiny sizes), and the runner's promises -- a budget interrupts and then
kills, a failing or crashing part does not stop the others, the exit status says whether
all passed, no GPU stops everything in one line, compute-sanitizer's output is read right,
the output directory stays within 8 files of 16 MB."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402
import gpu_parts  # noqa: E402


def test_dry_run_builds_every_command_and_runs_the_python_parts(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("MINIVGG_DEVICE",
                                                            "NUMBA_ENABLE_CUDASIM")}
    proc = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), str(out), "--dry-run"],
                          capture_output=True, text=True, timeout=300,
                          env={**env, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    passed = sorted(line.split()[1] for line in lines if line.startswith("PASS "))
    assert passed == ["bench", "environment", "sanitizer", "tests", "train"], proc.stdout
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(gpu_check.FILES) and len(files) <= 8
    assert all(p.stat().st_size <= 16 * 2**20 for p in out.iterdir())
    text = {name: (out / name).read_text() for name in files}
    # the GPU's command lines, built and written down
    assert "-m pip install -q --no-deps --no-build-isolation -e ." in text["env.txt"]
    for tool in gpu_parts.SANITIZER_TOOLS:
        assert f"--tool {tool} --error-exitcode 86" in text["sanitizer.log"]
    assert "sanitize_run.py --device cuda" in text["sanitizer.log"]
    assert "-m minivgg.bench --device cuda --batch 32 --configs B D" in text["bench.log"]
    assert "-m minivgg.train --config B --preset cuda --device cuda" in text["train.log"]
    assert "-m pytest -o addopts=" in text["tests.log"] and "tests/test_conv.py" in text["tests.log"]
    # and the Python parts, run
    assert "tests collected" in text["tests.log"]
    assert "sanitize_run: OK" in text["sanitizer.log"]
    assert "## Whole training step on the CPU" in text["bench.md"]
    assert '"val_top1_error"' in text["train-metrics.jsonl"]
    assert "PASS    train" in text["summary.md"]


def test_budget_interrupts_then_kills(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "GRACE_S", 1)
    check = gpu_check.Check(tmp_path, dry_run=True)
    polite = ("import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
              "    print('interrupted, saving')\n")
    p = check.run([sys.executable, "-c", polite], "a.log", timeout=1)
    assert p.timed_out and p.seconds < 10 and "interrupted, saving" in p.output
    assert "stopped at the 1 s budget" in (tmp_path / "a.log").read_text()
    p = check.run([sys.executable, "-c", polite], "a.log", timeout=1, interrupt_ok=True)
    assert not p.timed_out  # training for a fixed time: the budget is the plan
    stubborn = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)"
    p = check.run([sys.executable, "-c", stubborn], "b.log", timeout=1)
    assert p.timed_out and p.seconds < 10 and p.rc != 0  # killed after the grace


def _fake_parts(monkeypatch, **outcomes):
    """Replace every part with one that returns (or raises) what `outcomes` says."""
    called = []

    def part(name):
        def run(check):
            called.append(name)
            result = outcomes.get(name, gpu_check.Outcome("PASS", "fine"))
            if isinstance(result, Exception):
                raise result
            return result
        return run
    for name in ("environment", "tests", "sanitizer", "bench", "train"):
        monkeypatch.setattr(gpu_parts, name, part(name))
    monkeypatch.setattr(gpu_parts, "start_data", lambda check: None)
    monkeypatch.setattr(gpu_parts, "cleanup", lambda check: None)
    return called


def test_a_failing_part_does_not_stop_the_others(tmp_path, monkeypatch, capsys):
    called = _fake_parts(monkeypatch, tests=RuntimeError("boom"),
                         sanitizer=gpu_check.Outcome("FAIL", "memcheck: 2 errors"))
    assert gpu_check.main([str(tmp_path)]) == 1
    assert sorted(called) == ["bench", "environment", "sanitizer", "tests", "train"]
    summary = (tmp_path / "summary.md").read_text()
    assert "FAIL    tests" in summary and "gpu_check itself failed: RuntimeError: boom" in summary
    assert "FAIL    sanitizer" in summary and "PASS    train" in summary
    last = capsys.readouterr().out.splitlines()[-1]
    assert "3 of 5 parts without failure" in last and "tests" in last and "sanitizer" in last


def test_all_passed_or_skipped_exits_0(tmp_path, monkeypatch):
    _fake_parts(monkeypatch, sanitizer=gpu_check.Outcome("SKIPPED", "memcheck refused"))
    assert gpu_check.main([str(tmp_path)]) == 0


def test_no_gpu_stops_everything_in_one_line(tmp_path, monkeypatch, capsys):
    called = _fake_parts(monkeypatch, environment=gpu_check.Outcome(
        "FAIL", "CuPy cannot see a GPU: CUDARuntimeError", fatal=True))
    assert gpu_check.main([str(tmp_path)]) == 2
    assert called == ["environment"]
    assert capsys.readouterr().out.splitlines()[-1] == \
        "gpu_check: CuPy cannot see a GPU: CUDARuntimeError"


@pytest.mark.parametrize("output,rc,status", [
    ("sanitize_run: OK: 60 launches\n========= ERROR SUMMARY: 0 errors\n", 0, "PASS"),
    ("========= Invalid __global__ write of size 4\nsanitize_run: OK\n"
     "========= ERROR SUMMARY: 3 errors\n", 86, "FAIL"),
    ("sanitize_run: FAILED: kernels never launched: x\n========= ERROR SUMMARY: 0 errors\n",
     1, "FAIL"),
    ("========= Error: Device not supported\n", 1, "SKIPPED"),
    ("Traceback (most recent call last):\nImportError: no cupy\n", 1, "FAIL"),
])
def test_sanitizer_output_is_read_right(output, rc, status):
    got, detail = gpu_parts.sanitizer_verdict("memcheck", gpu_check.Proc(rc, False, 1.0, output))
    assert got == status, detail
    assert detail.startswith("memcheck")


def test_big_logs_keep_their_end(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "MAX_BYTES", 1000)
    (tmp_path / "tests.log").write_text("x" * 5000 + "\n12 passed in 3.0s\n")
    gpu_check.cap_files(tmp_path)
    text = (tmp_path / "tests.log").read_text()
    assert len(text) <= 1000 and text.endswith("12 passed in 3.0s\n")
    assert text.startswith("[gpu_check: the beginning was cut")


def test_no_command_runs_past_the_total(tmp_path, monkeypatch):
    """Whatever a part asks for, a command ends by gpu_check.TOTAL_S from the start."""
    monkeypatch.setattr(gpu_check, "TOTAL_S", 2)
    monkeypatch.setattr(gpu_check, "GRACE_S", 1)
    check = gpu_check.Check(tmp_path, dry_run=True)
    p = check.run([sys.executable, "-c", "import time; time.sleep(60)"], "a.log", timeout=300)
    assert p.timed_out and p.seconds < 10
