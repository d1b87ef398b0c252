"""`python -m minivgg.bench`: the FLOP count, VGG-16's layer list, the CuPy-style im2col
baseline against the NumPy references, the markdown table, the timers, the one-line exit
without a GPU, the launch-overhead measurement, and a tiny run of the cpu device's side by
side tables (with PyTorch where it is installed)."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from kernels import conv
from kernels.conv import outer3x3
from minivgg.bench import cpu, im2col, overhead, report, shapes, timing
from minivgg.bench import conv as bench_conv
from minivgg.bench import layers as bench_layers
from minivgg.errors import UserError

TINY = ["--device", "cpu", "--size", "32", "--width", "0.125", "--batch", "2", "--configs",
        "A", "--steps", "1", "--warmup", "0", "--threads", "1"]


def run_bench(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "MINIVGG_DEVICE"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "minivgg.bench", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_flops_of_a_conv_pass_by_hand():
    # N=2, C=3, K=4, P=5, Q=6, 3x3: 2*4*5*6 = 240 outputs, 27 multiply-adds each, 2 FLOPs
    assert shapes.conv_flops(2, 3, 4, 5, 6, 3, 3) == 240 * 27 * 2 == 12960
    assert shapes.tflops(3e12, 1500.0) == pytest.approx(2.0)  # 3 TFLOP in 1.5 s
    # VGG-16's conv1_2 at batch 64: 64*64*224*224 outputs x 64*9 taps x 2 = 236.8 GFLOP
    assert shapes.conv_flops(64, 64, 64, 224, 224, 3, 3) == 236_760_072_192


def test_vgg16_conv_layers_at_224_are_nine_distinct_shapes():
    layers = shapes.vgg16_layers(224)
    got = [(s.name, s.C, s.K, s.H, s.W, s.R, s.stride, s.pad, s.same) for s in layers]
    assert got == [
        ("conv1_1", 3, 64, 224, 224, 3, 1, 1, ()),
        ("conv1_2", 64, 64, 224, 224, 3, 1, 1, ()),
        ("conv2_1", 64, 128, 112, 112, 3, 1, 1, ()),
        ("conv2_2", 128, 128, 112, 112, 3, 1, 1, ()),
        ("conv3_1", 128, 256, 56, 56, 3, 1, 1, ()),
        ("conv3_2", 256, 256, 56, 56, 3, 1, 1, ("conv3_3",)),
        ("conv4_1", 256, 512, 28, 28, 3, 1, 1, ()),
        ("conv4_2", 512, 512, 28, 28, 3, 1, 1, ("conv4_3",)),
        ("conv5_1", 512, 512, 14, 14, 3, 1, 1, ("conv5_2", "conv5_3")),
    ]
    assert sum(1 + len(s.same) for s in layers) == 13
    assert layers[5].PQ == (56, 56) and layers[5].label() == "conv3_2 (+conv3_3)"


def test_layers_are_chosen_by_any_vgg16_name():
    layers = shapes.vgg16_layers(32, 0.125)
    assert [s.K for s in layers] == [8, 8, 16, 16, 32, 32, 64, 64, 64]
    chosen = shapes.select_layers(layers, ["conv5_3", "conv1_1", "conv5_1"])
    assert [s.name for s in chosen] == ["conv5_1", "conv1_1"]
    with pytest.raises(UserError, match="unknown layer 'conv6_1'"):
        shapes.select_layers(layers, ["conv6_1"])


@pytest.mark.parametrize("N,C,H,W,K,R,stride,pad", [
    (2, 3, 7, 6, 4, 3, 1, 1),   # VGG's 3x3 pad 1, odd sizes
    (1, 2, 9, 9, 3, 3, 2, 1),   # stride 2
    (2, 4, 5, 5, 3, 1, 1, 0),   # config C's 1x1
])
def test_im2col_baseline_equals_the_references(N, C, H, W, K, R, stride, pad):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((K, C, R, R))
    b = rng.standard_normal(K)
    y = conv.forward_ref(x, w, b, stride, pad)
    dy = rng.standard_normal(y.shape)
    dx, dw, _ = conv.backward_ref(x, w, dy, stride, pad)
    np.testing.assert_allclose(im2col.im2col_forward(np, x, w, b, stride, pad), y, rtol=1e-10)
    np.testing.assert_allclose(im2col.im2col_backward_data(np, dy, w, H, W, stride, pad), dx,
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(im2col.im2col_backward_weight(np, x, dy, R, R, stride, pad), dw,
                               rtol=1e-10)


def test_markdown_table_of_a_hand_made_row():
    table = report.markdown_table(("layer", "ms", "note"),
                                 [["conv1_1", 12.345, "x"], ["conv5_1", None, "longer"]])
    assert table == ("| layer   |   ms | note   |\n"
                     "|---------|-----:|--------|\n"
                     "| conv1_1 | 12.3 | x      |\n"
                     "| conv5_1 |    - | longer |")
    assert [report.fmt(v) for v in (123.4, 0.012345, 5.678, 0.0, None)] == \
        ["123", "0.0123", "5.68", "0", "-"]
    assert report.fmt_bytes(3 * 2**30 // 2) == "1.50 GiB" and report.fmt_bytes(None) == "-"


def test_median_skips_the_warmup_and_stops_at_the_budget():
    times = iter([100.0, 5.0, 1.0, 3.0, 7.0, 50.0])
    calls = []

    def once(fn):
        fn()
        return next(times)
    assert timing.median_ms(lambda: calls.append(1), once, steps=3, warmup=2) == 3.0
    assert len(calls) == 5
    times = iter([400.0, 700.0, 1.0, 1.0])
    assert timing.median_ms(lambda: None, once, steps=4, warmup=0, budget_s=1.0) == 550.0


def test_without_a_gpu_it_says_so_in_one_line_and_exits_0():
    proc = run_bench(env_extra={"CUDA_VISIBLE_DEVICES": ""})  # no GPU even where there is one
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    assert lines[0].startswith("minivgg.bench: no CUDA GPU available (")
    assert "pass --device cpu" in lines[0]
    assert "Traceback" not in proc.stderr


def _rows(text, first):
    return [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()
            if line.startswith(f"| {first} ")]


def test_cpu_run_prints_the_side_by_side_tables(tmp_path):
    """The step of A at batch 2 and every layer, ours beside PyTorch's, at 1 and 2 threads,
    with the thread counts the libraries reported; the ratios are ours / torch."""
    pytest.importorskip("torch")
    out = tmp_path / "bench.md"
    proc = run_bench(*TINY[:-1], "1", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    import llvmlite.binding as llvm  # the CPU as Numba compiles for it, and its widest vectors
    cpu = next(x for x in text.splitlines() if x.startswith("- CPU: "))
    assert re.search(rf"\({re.escape(llvm.get_host_cpu_name())}, (AVX-512|AVX2|no AVX2)\)", cpu)
    for n in (1, 2):  # our loops and PyTorch at n, NumPy's BLAS at 1 a call, read back
        line = next(x for x in text.splitlines() if x.startswith(f"- {n} thread(s): ours"))
        assert line.startswith(f"- {n} thread(s): ours {n} thread")
        assert ": 1 threads a call;" in line and f"PyTorch {n} intra-op threads" in line
    assert ("| config | batch | ours ms (1 thr) | torch ms (1 thr) | ratio (1 thr) | "
            "ours ms (2 thr)") in text
    (step,) = _rows(text, "A")
    assert step[:2] == ["A", "2"]
    for i in (2, 5):  # 1 thread, 2 threads
        ours, theirs, ratio = map(float, step[i:i + 3])
        assert ours > 0 and theirs > 0 and ratio == pytest.approx(ours / theirs, rel=0.02)
    conv1 = _rows(text, "conv1_1")
    assert [(r[1], r[2]) for r in conv1] == [("2x3x32x32 -> 8 (3x3)", p) for p in ("fwd", "bwd")]
    first_cells = {line.split("|")[1].strip() for line in text.splitlines()
                   if line.startswith("| ")}
    assert {"relu1_1", "pool1", "conv5_1", "fc6", "fc8", "loss"} <= first_cells
    assert "within 1.25x of PyTorch" in text and "within 1.5x of PyTorch" in text
    assert ("- convs of the cpu device: VGG's 3x3 stride-1 convs by compiled loops, forward "
            "and dx (kernels/conv/direct3x3.py's; outer3x3.py's") in text
    assert "- GEMMs of the other convs (5x5, 11x11, strided): " in text
    pixels, lanes = outer3x3.block()
    assert ("- fully connected layers: the forward by kernels/gemm_outer.py's outer products "
            f"(blocks of {pixels} rows x {lanes} outputs") in text
    assert out.read_text() == proc.stdout


@pytest.mark.parametrize("machine, says", [
    ((True, True), "kernels/gemm.py's compiled loop where the dot products are long"),
    ((False, True), "NumPy's BLAS, and kernels/gemm.py's compiled loop for a few"),
    ((False, False), "NumPy's BLAS")])
def test_the_bench_says_which_gemm_the_convs_use(machine, says, monkeypatch):
    from kernels import gemm
    from minivgg.bench import threads
    monkeypatch.setattr(gemm, "machine", lambda: machine)
    got = threads.conv_gemm_side()
    assert got.startswith(says) and (machine[1] or got == "NumPy's BLAS")


def test_our_layers_and_torch_ops_compute_the_same_thing():
    """Each layer the per-layer table times, ours and PyTorch's on the same arrays: the
    same output and the same gradients (so the table compares like with like)."""
    torch = pytest.importorskip("torch")
    from minivgg import backend
    backend.set_device("cpu")
    net = cpu.preset_net("A-LRN", 32, 0.125)
    layers = bench_layers.distinct_layers([net])
    assert [x.kind for x in layers][:4] == ["conv", "relu", "lrn", "pool"]
    assert layers[-1].kind == "xent" and "dropout" not in [x.kind for x in layers]
    for layer in layers:
        a = bench_layers.inputs(layer, 3, seed=5)
        fwd, bwd = bench_layers.ours(layer, a, net.dropout)
        t_fwd, t_bwd = bench_layers.theirs(torch, layer, a, net.dropout)
        assert _rel_err(fwd(), t_fwd().detach().numpy()) < 1e-5, f"{layer.name} fwd"
        got, want = bwd(), t_bwd()
        assert len(got) == len(want) == (0 if layer.first else 1) + len(a["params"])
        for g, t in zip(got, want):
            assert _rel_err(g, t.numpy()) < 1e-5, f"{layer.name} bwd"


def _rel_err(got, want):
    """||got - want|| / ||want||: float32 sums in another order land near 1e-7."""
    got, want = np.ravel(got).astype(np.float64), np.ravel(want).astype(np.float64)
    return np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)


def test_block_timing_takes_turns_a_block_at_a_time_after_a_pause():
    order, clock = [], iter(range(1, 100))  # the n-th reading of the timer is n ms

    def once(fn):
        fn()
        return float(next(clock))
    a, b = (lambda: order.append("a")), (lambda: order.append("b"))
    pauses = []
    got = timing.blocks_ms([a, None, b], once, steps=3, warmup=1, block=2,
                           sleep=pauses.append)
    # a: warm-up 1, timed 2, 3; b: 4, timed 5, 6; a: 7, timed 8; b: 9, timed 10
    assert got == [3.0, None, 6.0]
    assert order == ["a"] * 3 + ["b"] * 3 + ["a"] * 2 + ["b"] * 2
    assert pauses == [timing.SETTLE_S] * 4


def test_launch_overhead_counts_the_launches_of_a_step():
    """Two relu launches per step on the simulator (conftest): two launches counted, and
    host and device times measured (here both by the host clock)."""
    from kernels import relu
    x = np.linspace(-1, 1, 64, dtype=np.float32)
    y, dx = np.empty_like(x), np.empty_like(x)

    def step():
        relu.forward(x, y)
        relu.backward(y, x, dx)
    launches, host_ms, gpu_ms = overhead.overhead(step, steps=2, warmup=1)
    assert launches == 2 and host_ms > 0 and gpu_ms >= host_ms * 0.5
    row = overhead.overhead_row("B", 32, launches, 3.0, 2.0)
    assert row[2:] == ["2", 3.0, 2.0, 1500.0, 1.5]  # 3 ms for 2 launches: 1500 us each


@pytest.mark.parametrize("module", ["cli", "static"])
def test_help_shows_only_defaults_that_say_something(module):
    """No "(default: None)" where the device decides, nor True/False on a switch."""
    import importlib
    parser = importlib.import_module(f"minivgg.bench.{module}").build_parser()
    text = " ".join(parser.format_help().split())  # unwrapped
    for noise in ("(default: None)", "(default: True)", "(default: False)"):
        assert noise not in text
    real = {"cli": "timed runs; the median is reported (default: 10)",
            "static": "input side (default: 224)"}[module]
    assert real in text  # a real default is still shown


def test_bad_layer_is_one_line_exit_2():
    proc = run_bench(*TINY, "--layers", "conv9_9")
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown layer 'conv9_9'")
    assert proc.stdout == ""  # checked before any work
    assert "Traceback" not in proc.stderr


def test_a_version_the_launchers_lack_is_noted_and_skipped():
    # The kernels run in Numba's simulator here (conftest), on a tiny layer.
    from types import SimpleNamespace
    notes = []
    fake = SimpleNamespace(device="sim", xp=np, args=SimpleNamespace(versions=[2, 99]),
                           time=lambda fn: (fn(), 1.5)[1], note=notes.append)
    shape = shapes.ConvShape("tiny", C=1, K=2, H=3, W=3)
    a = bench_conv.conv_arrays(np, shape, 1)
    assert bench_conv.ours_ms(fake, "fwd", a, shape) == {"v2": 1.5}
    np.testing.assert_allclose(a["y"], conv.forward_ref(a["x"], a["w"], a["b"], 1, 1),
                               rtol=1e-5, atol=1e-6)  # the call timed is the real launch
    assert len(notes) == 1 and "version 99 skipped for fwd" in notes[0]
    assert "has versions" in notes[0]


def test_the_gpu_tables_rows_on_the_simulator():
    """conv_rows, as the cuda table builds them, on the simulator (conftest) with host
    timers: every version of each pass, TFLOP/s from the FLOPs, the im2col baseline, and
    empty torch columns without torch."""
    from types import SimpleNamespace
    args = SimpleNamespace(versions=[1, 2, 3], passes=["fwd", "bwd-weight"])
    fake = SimpleNamespace(device="sim", xp=np, args=args, torch=None, notes=[],
                           time=lambda fn, once=None: timing.median_ms(
                               fn, timing.host_once, 1, 0), free=lambda: None,
                           note=lambda text: None)
    shape = shapes.ConvShape("tiny", C=2, K=3, H=5, W=5)
    rows = bench_conv.conv_rows(fake, shape, 1)
    assert [(r[2], r[3]) for r in rows] == [(p, f"v{v}") for p in args.passes for v in (1, 2, 3)]
    flops = shapes.conv_flops(1, 2, 3, 5, 5, 3, 3)
    for r in rows:
        assert r[:2] == ["tiny", "1x2x5x5 -> 3 (3x3)"] and r[4] > 0 and r[6] > 0
        assert r[5] == pytest.approx(flops / (r[4] * 1e-3) / 1e12)
        assert r[7:] == [None, None]


def test_split_weight_gradient_gets_its_workspace():
    """bwd-weight v2 over 289 pixels runs in two chunks (kernels/conv.py's split_k): the
    bench allocates the workspace the launcher asks for, and the result is dw."""
    shape = shapes.ConvShape("split", C=1, K=2, H=17, W=17, R=1, S=1, pad=0)
    a = bench_conv.conv_arrays(np, shape, 1)
    assert conv.backward_weight_workspace(a["x"].shape, a["w"].shape, 1, 0, 2) is not None
    bench_conv.kernel_call("bwd-weight", 2, a, shape, np)()
    want = conv.backward_ref(a["x"], a["w"], a["dy"], 1, 0, need_dx=False)[1]
    np.testing.assert_allclose(a["dw"], want, rtol=1e-4, atol=1e-4)


def test_torch_baselines_compute_the_same_passes():
    torch = pytest.importorskip("torch")
    shape = shapes.ConvShape("tiny", C=3, K=4, H=6, W=5, R=3, S=3, stride=2, pad=1)
    t = bench_conv.torch_tensors(torch, shape, 2, "cpu")
    calls = bench_conv.torch_calls(torch, shape, t)
    x, w, b, dy = (t[k].double().numpy() for k in ("x", "w", "b", "dy"))
    dx, dw, _ = conv.backward_ref(x, w, dy, 2, 1)
    for got, want in ((calls["fwd"](), conv.forward_ref(x, w, b, 2, 1)),
                      (calls["bwd-data"](), dx), (calls["bwd-weight"](), dw)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)


def test_a_net_with_branches_is_timed_without_a_torch_column():
    """NiN has no PyTorch twin in the bench (a chain of plan rows cannot build it): its
    step is timed, its torch cells are '-', and a note says why; no layer table for it."""
    proc = run_bench("--device", "cpu", "--size", "80", "--width", "0.0625", "--batch", "2",
                     "--configs", "NiN", "--steps", "1", "--warmup", "0", "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (step,) = _rows(proc.stdout, "NiN")
    assert step[:2] == ["NiN", "2"] and float(step[2]) > 0 and step[3:5] == ["-", "-"]
    assert "NiN: timed without PyTorch" in proc.stdout
    assert "Every layer" not in proc.stdout


def test_the_blas_line_names_openblas_kernels_and_the_settings_that_chose_them():
    from minivgg.bench import threads
    info = {"internal_api": "openblas", "version": "0.3.31", "threading_layer": "pthreads",
            "architecture": "Haswell", "num_threads": 1}
    assert threads._describe(info) == "OpenBLAS 0.3.31 (pthreads, Haswell kernels): 1 threads"
    assert threads.blas_choice_note({"PATH": "/bin"}) == ""
    note = threads.blas_choice_note({"OPENBLAS_CORETYPE": "Haswell", "PATH": "/bin"})
    assert note.startswith("OPENBLAS_CORETYPE=Haswell in the environment")
    assert note.endswith("with OPENBLAS_CORETYPE unset")
