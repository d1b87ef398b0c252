"""Smoke tests of lessons/: each lesson runs straight through on the cpu device, prints its
key numbers and writes its figures.

Every lesson runs in a subprocess, as a reader would run it:
    python lessons/NN_topic.py --no-pause --device cpu --out TMP
(lessons 8 and 9 with --quick; lesson 5 switches itself to the simulator). The expected numbers
below are written out from the paper and by hand, not computed by the code under test.
"""
import os
import re
import subprocess
import sys

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LESSONS = os.path.join(ROOT, "lessons")


def run_lesson(name, out, *extra, timeout=120):
    env = dict(os.environ)
    env.pop("MINIVGG_DEVICE", None)
    # One BLAS thread: on a small shared machine several BLAS threads per process fight
    # over the cores and make NumPy's GEMMs tens of times slower.
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               MPLBACKEND="Agg")
    cmd = [sys.executable, os.path.join(LESSONS, name), "--no-pause", "--device", "cpu",
           "--out", str(out), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "End of lesson" in proc.stdout
    return proc.stdout


def assert_png(out, name, min_side=200, min_bytes=5000):
    path = os.path.join(str(out), name)
    assert os.path.isfile(path), f"{name} was not written"
    assert os.path.getsize(path) >= min_bytes, f"{name} is suspiciously small"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert min(im.size) >= min_side, f"{name} is only {im.size}"


def number(text, pattern):
    """The first group of `pattern` in `text`, as a float (commas removed)."""
    m = re.search(pattern, text)
    assert m, f"no line matching {pattern!r}"
    return float(m.group(1).replace(",", ""))


def test_01_receptive_fields(tmp_path):
    out = run_lesson("01_receptive_fields.py", tmp_path)
    # VGG-16 (D): conv5_3 sees 196 pixels, pool5 212, fc6 as a 7x7 conv 404.
    assert "D conv5_3 receptive field: 196" in out
    assert "D pool5 receptive field: 212" in out
    assert "D fc6 receptive field: 404" in out
    # Two 3x3 layers see 5x5 (sect. 2.3); the measured support of one unit matches.
    for layer, r in [("conv1_2", 5), ("pool1", 6), ("conv2_2", 14), ("conv3_3", 40),
                     ("conv4_3", 92), ("conv5_3", 196), ("pool5", 212), ("fc6", 404)]:
        assert f"{layer} measured support: {r} x {r} (formula {r})" in out, layer
    assert_png(tmp_path, "01_receptive_fields.png")


def test_02_parameter_counts(tmp_path):
    out = run_lesson("02_parameter_counts.py", tmp_path)
    for cfg, n in [("A", "132,863,336"), ("A-LRN", "132,863,336"), ("B", "133,047,848"),
                   ("C", "133,638,952"), ("D", "138,357,544"), ("E", "143,667,240")]:
        assert f"parameters {cfg}: {n}" in out
    assert "27 C^2" in out and "49 C^2" in out
    assert "one 7x7 has 81% more" in out
    # AlexNet, one tower: convs 34,944 + 614,656 + 885,120 + 1,327,488 + 884,992, FCs
    # 37,752,832 + 16,781,312 + 4,097,000. B-5x5: five 5x5 convs 10,860,672 + B's FCs.
    assert "parameters AlexNet-1tower: 62,378,344" in out
    assert "parameters B-5x5: 134,503,528" in out
    assert "allocated A at width 1/16: 43,202; counted: 43,202" in out
    assert_png(tmp_path, "02_parameter_counts.png")


def test_03_one_by_one_convolutions(tmp_path):
    out = run_lesson("03_one_by_one_convolutions.py", tmp_path)
    assert number(out, r"1x1 conv vs einsum: max abs difference (\S+)") < 1e-4
    assert number(out, r"matmul: max abs difference (\S+)") < 1e-4
    assert number(out, r"1x1 conv:\s+max \|f\(a\+b\) - f\(a\) - f\(b\)\| = (\S+)") < 1e-4
    assert number(out, r"1x1 conv \+ ReLU: max \|f\(a\+b\) - f\(a\) - f\(b\)\| = (\S+)") > 0.1
    # C: 1x1 layers keep the receptive field: 32 in block 3, 68 in block 4, 140 in block 5.
    for layer, r in [("conv3_3", 32), ("conv4_3", 68), ("conv5_3", 140)]:
        assert f"C {layer} (1x1) receptive field: before {r}, after {r}" in out
    assert "C pool5 receptive field: 156  (D: 212)" in out
    assert_png(tmp_path, "03_one_by_one_convolutions.png")


def test_04_dense_evaluation(tmp_path):
    out = run_lesson("04_dense_evaluation.py", tmp_path)
    diff = number(out, r"max abs difference at input_size: (\S+)")
    scale = number(out, r"scores of size ~(\S+)\)")
    assert diff <= 1e-5 * max(scale, 1.0)
    # (Q - 224) / 32 + 1
    for q, p in [(224, 1), (256, 2), (320, 4), (384, 6)]:
        assert f"score map size for {q}x{q}: {p} x {p}" in out
    # Grace Hopper (512 x 600) with its smaller side rescaled to 384: 450 x 384 ->
    # (450 - 224) // 32 + 1 = 8 rows, (384 - 224) / 32 + 1 = 6 columns.
    assert "photo score map size: 8 x 6" in out
    assert number(out, r"check against numpy mean: max abs difference (\S+)") < 1e-3
    assert_png(tmp_path, "04_dense_evaluation.png")


def test_05_inside_a_kernel(tmp_path):
    out = run_lesson("05_inside_a_kernel.py", tmp_path)
    assert "device: sim" in out
    assert "thread -> output mapping: 48 of 48 threads" in out  # y is 1 x 3 x 4 x 4
    assert number(out, r"conv_forward_v1 vs forward_ref: max abs difference (\S+)") < 1e-5
    assert "recorded loads: 6 of 6 (block, step) pairs" in out  # 2 blocks x 3 steps
    assert number(out, r"linear_forward_v2 vs forward_ref: max abs difference (\S+)") < 1e-4
    # v1: each of the 4 x 20 threads reads 40 of x and 40 of w: 6400. v2: x (4 x 40) once
    # per block column (2), w (20 x 40) once: 320 + 800 = 1120.
    assert "global loads: v1 6400, v2 1120" in out
    assert "breakpoint thread: 27" in out  # y[0, 1, 2, 3] = 1*16 + 2*4 + 3
    assert_png(tmp_path, "05_inside_a_kernel.png")


def test_06_gradient_checking(tmp_path):
    out = run_lesson("06_gradient_checking.py", tmp_path)
    for m in re.finditer(r"gradient check .*: relative error (\S+)", out):
        assert float(m.group(1)) < 1e-6, m.group(0)
    assert len(re.findall(r"gradient check .*: relative error", out)) == 5
    assert "max-pool tie: numeric 0.5/0.5, analytic 1/0" in out
    assert "directional check conv2d: passed" in out
    assert "directional check lrn: passed" in out
    assert "directional check conv2d with a broken dx: FAILED" in out
    best32 = number(out, r"best float32: (\S+) at")
    best64 = number(out, r"best float64: (\S+) at")
    assert best64 < 1e-8 < best32
    assert_png(tmp_path, "06_gradient_checking.png")


def test_07_memory_and_compute(tmp_path):
    out = run_lesson("07_memory_and_compute.py", tmp_path)
    assert "D multiply-adds per image: 15,470,264,320" in out  # VGG-16's 15.5 G
    assert "D parameters: 138,357,544" in out
    # Every layer's output at 224: 114,603,936 bytes per image. Training: 3 x 4 bytes per
    # parameter, plus per image the input (602,112 bytes) and twice the outputs:
    # (80e9 - 1,660,290,528) // 229,809,984 = 340.
    assert "D activation bytes per image (every layer's output, float32): 114,603,936" in out
    assert "largest batch on an 80 GB H100 (model): 340" in out
    kept = number(out, r"outputs kept by the tape: ([\d,]+) bytes")
    formula = number(out, r"formula N x \(input \+ sum of act_bytes\): ([\d,]+)")
    assert abs(kept - formula) <= 64
    assert_png(tmp_path, "07_memory_and_compute.png")


def test_08_depth_and_initialisation_quick(tmp_path):
    out = run_lesson("08_depth_and_initialisation.py", tmp_path, "--quick")
    assert "ln(4) = 1.386" in out
    for run in ("A, paper-like init", "E, paper-like init", "E, pre-initialised from A",
                "E, Glorot"):
        loss = number(out, rf"final loss {re.escape(run)}: (\S+)")
        assert 0 <= loss < 10
    assert_png(tmp_path, "08_depth_and_initialisation.png")


def test_10_from_lenet_to_vgg(tmp_path):
    out = run_lesson("10_from_lenet_to_vgg.py", tmp_path)
    # LeNet-5: 156 + 12 + 1,516 + 32 + 48,120 + 10,164 + 850 (the compendium's table).
    # AlexNet, two towers: conv2, conv4, conv5 see 48, 192, 192 maps (see test_classic_cnns).
    # ZFNet: 14,208 + 614,656 + 885,120 + 1,327,488 + 884,992 + AlexNet's FCs.
    for net, n in [("LeNet-5", "60,850"), ("AlexNet", "60,965,224"), ("ZFNet", "62,357,608"),
                   ("VGG-16", "138,357,544")]:
        assert f"parameters {net}: {n};" in out, net
    # AlexNet: 55*55*96*363 + 27*27*256*1200 + 13*13*(384*2304 + 384*1728 + 256*1728)
    # + 9216*4096 + 4096*4096 + 4096*1000 = 724,406,816 (the "0.7 GFLOPs" usually quoted).
    assert "multiply-adds AlexNet: 724,406,816" in out
    assert "multiply-adds VGG-16: 15,470,264,320" in out
    assert "FC share of AlexNet's parameters: 96.2%" in out  # 58,631,144 / 60,965,224
    for line in ["first layer AlexNet: 11x11 stride 4 -> 55x55 maps, receptive field 11, jump 4",
                 "first layer ZFNet: 7x7 stride 2 -> 110x110 maps, receptive field 7, jump 2",
                 "first layer VGG-16: 3x3 stride 1 -> 224x224 maps, receptive field 3, jump 1"]:
        assert line in out
    # Sampling every 4th pixel folds 0.2 cycles/pixel to |0.2*4 - 1| / 4 = 0.05; every 2nd
    # keeps it; 0.3 folds to |0.3*2 - 1| / 2 = 0.2 with stride 2.
    assert "aliasing AlexNet: 0.20 cycles/pixel is seen as 0.050" in out
    assert "aliasing ZFNet: 0.20 cycles/pixel is seen as 0.200" in out
    assert "aliasing ZFNet: 0.30 cycles/pixel is seen as 0.200" in out
    assert abs(number(out, r"aliasing VGG-16: 0.30 cycles/pixel is seen as (\S+)") - 0.3) < 0.01
    # conv2, 4, 5 halved: (614,656 - 307,456) + (1,327,488 - 663,936) + (884,992 - 442,624)
    assert "grouped convolutions save 1,413,120 parameters" in out
    assert "LeNet-5's C3: 1,516 parameters through its connection table, 2,416 fully" in out
    assert_png(tmp_path, "10_from_lenet_to_vgg.png")


def test_09_localisation_quick(tmp_path):
    out = run_lesson("09_localisation.py", tmp_path, "--quick")
    # The code, by hand from the printed box in the crop: centre from the crop's centre,
    # all over the crop side 32.
    m = re.search(r"in the crop at \(y, x\) = \(\d+, \d+\)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", out)
    x0, y0, x1, y1 = (float(v) for v in m.groups())
    want = [((x0 + x1) / 2 - 16) / 32, ((y0 + y1) / 2 - 16) / 32, (x1 - x0) / 32,
            (y1 - y0) / 32]
    got = [float(v) for v in re.search(r"code \(cx, cy, w, h\) = \[(.*)\]", out)[1].split(",")]
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-4
    flipped = [float(v) for v in re.search(r"flipped code\s+= \[(.*)\]", out)[1].split(",")]
    assert flipped[0] == -got[0] and flipped[1:] == got[1:]
    assert number(out, r"ops.euclidean_loss on cpu \S+: difference (\S+)") < 1e-6
    assert "PCR gradient outside image 0's class columns: max |.| = 0" in out
    assert "dense view at Q = 64: 2 x 2 positions, 32 px apart" in out
    assert "5 x 5 grid of crops: 25 boxes" in out
    assert re.search(r"IoU test, merged 5 x 5 grid: IoU \S+ -> (correct|wrong)", out)
    assert_png(tmp_path, "09_localisation.png")
