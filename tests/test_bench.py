"""`python -m minivgg.bench`: the FLOP count, VGG-16's layer list, the CuPy-style im2col
baseline against the NumPy references, the markdown table, the timer, the one-line exit
without a GPU, and a tiny run on the cpu device."""
import os
import subprocess
import sys

import numpy as np
import pytest

from kernels import conv
from minivgg import bench
from minivgg.errors import UserError

TINY = ["--device", "cpu", "--size", "32", "--width", "0.125", "--batch", "2", "--configs",
        "A", "--steps", "1", "--warmup", "0", "--no-torch"]


def run_bench(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "MINIVGG_DEVICE"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "minivgg.bench", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_flops_of_a_conv_pass_by_hand():
    # N=2, C=3, K=4, P=5, Q=6, 3x3: 2*4*5*6 = 240 outputs, 27 multiply-adds each, 2 FLOPs
    assert bench.conv_flops(2, 3, 4, 5, 6, 3, 3) == 240 * 27 * 2 == 12960
    assert bench.tflops(3e12, 1500.0) == pytest.approx(2.0)  # 3 TFLOP in 1.5 s
    # VGG-16's conv1_2 at batch 64: 64*64*224*224 outputs x 64*9 taps x 2 = 236.8 GFLOP
    assert bench.conv_flops(64, 64, 64, 224, 224, 3, 3) == 236_760_072_192


def test_vgg16_conv_layers_at_224_are_nine_distinct_shapes():
    layers = bench.vgg16_layers(224)
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
    layers = bench.vgg16_layers(32, 0.125)
    assert [s.K for s in layers] == [8, 8, 16, 16, 32, 32, 64, 64, 64]
    chosen = bench.select_layers(layers, ["conv5_3", "conv1_1", "conv5_1"])
    assert [s.name for s in chosen] == ["conv5_1", "conv1_1"]
    with pytest.raises(UserError, match="unknown layer 'conv6_1'"):
        bench.select_layers(layers, ["conv6_1"])


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
    np.testing.assert_allclose(bench.im2col_forward(np, x, w, b, stride, pad), y, rtol=1e-10)
    np.testing.assert_allclose(bench.im2col_backward_data(np, dy, w, H, W, stride, pad), dx,
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bench.im2col_backward_weight(np, x, dy, R, R, stride, pad), dw,
                               rtol=1e-10)


def test_markdown_table_of_a_hand_made_row():
    table = bench.markdown_table(("layer", "ms", "note"),
                                 [["conv1_1", 12.345, "x"], ["conv5_1", None, "longer"]])
    assert table == ("| layer   |   ms | note   |\n"
                     "|---------|-----:|--------|\n"
                     "| conv1_1 | 12.3 | x      |\n"
                     "| conv5_1 |    - | longer |")
    assert [bench.fmt(v) for v in (123.4, 0.012345, 5.678, 0.0, None)] == \
        ["123", "0.0123", "5.68", "0", "-"]
    assert bench.fmt_bytes(3 * 2**30 // 2) == "1.50 GiB" and bench.fmt_bytes(None) == "-"


def test_median_skips_the_warmup_and_stops_at_the_budget():
    times = iter([100.0, 5.0, 1.0, 3.0, 7.0, 50.0])
    calls = []

    def once(fn):
        fn()
        return next(times)
    assert bench.median_ms(lambda: calls.append(1), once, steps=3, warmup=2) == 3.0
    assert len(calls) == 5
    times = iter([400.0, 700.0, 1.0, 1.0])
    assert bench.median_ms(lambda: None, once, steps=4, warmup=0, budget_s=1.0) == 550.0


def test_without_a_gpu_it_says_so_in_one_line_and_exits_0():
    proc = run_bench(env_extra={"CUDA_VISIBLE_DEVICES": ""})  # no GPU even where there is one
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    assert lines[0].startswith("minivgg.bench: no CUDA GPU available (")
    assert "pass --device cpu" in lines[0]
    assert "Traceback" not in proc.stderr


def test_cpu_run_prints_both_tables(tmp_path):
    out = tmp_path / "bench.md"
    proc = run_bench(*TINY, "--layers", "conv1_1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "| layer   | shape                | pass       | version |" in proc.stdout
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| conv1_1 ")]
    assert [[c.strip() for c in r[:4]] for r in rows] == [
        ["conv1_1", "2x3x32x32 -> 8 (3x3)", p, "ref"] for p in bench.PASSES]
    for r in rows:
        ms, tf = float(r[4]), float(r[5])
        assert ms > 0 and tf == pytest.approx(bench.conv_flops(2, 3, 8, 32, 32, 3, 3)
                                              / ms / 1e9, rel=0.02)
        assert [c.strip() for c in r[6:]] == ["-", "-", "-"]
    step = [line.split("|")[1:-1] for line in lines if line.startswith("| A ")]
    assert len(step) == 1 and step[0][1].strip() == "2" and float(step[0][2]) > 0
    assert step[0][3].strip().endswith("iB")  # peak memory, e.g. "14.5 MiB"
    assert out.read_text() == proc.stdout


def test_bad_layer_is_one_line_exit_2():
    proc = run_bench(*TINY, "--layers", "conv9_9")
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown layer 'conv9_9'")
    assert proc.stdout == ""  # checked before any work
    assert "Traceback" not in proc.stderr


def test_a_version_the_launchers_lack_is_noted_and_skipped():
    # The kernels run in Numba's simulator here (conftest), on a tiny layer.
    from types import SimpleNamespace
    notes = []
    fake = SimpleNamespace(device="sim", args=SimpleNamespace(versions=[2, 99]),
                           time=lambda fn: (fn(), 1.5)[1], note=notes.append)
    shape = bench.ConvShape("tiny", C=1, K=2, H=3, W=3)
    a = bench.conv_arrays(np, shape, 1)
    assert bench.ours_ms(fake, "fwd", a, shape) == {"v2": 1.5}
    np.testing.assert_allclose(a["y"], conv.forward_ref(a["x"], a["w"], a["b"], 1, 1),
                               rtol=1e-5, atol=1e-6)  # the call timed is the real launch
    assert len(notes) == 1 and "version 99 skipped for fwd" in notes[0]
    assert "has versions" in notes[0]


def test_torch_baselines_compute_the_same_passes():
    torch = pytest.importorskip("torch")
    shape = bench.ConvShape("tiny", C=3, K=4, H=6, W=5, R=3, S=3, stride=2, pad=1)
    t = bench.torch_tensors(torch, shape, 2, "cpu")
    calls = bench.torch_calls(torch, shape, t)
    x, w, b, dy = (t[k].double().numpy() for k in ("x", "w", "b", "dy"))
    dx, dw, _ = conv.backward_ref(x, w, dy, 2, 1)
    for got, want in ((calls["fwd"](), conv.forward_ref(x, w, b, 2, 1)),
                      (calls["bwd-data"](), dx), (calls["bwd-weight"](), dw)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
