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


# GoogLeNet's Table 1 (Szegedy et al.): input maps C, side H, then #1x1, #3x3 reduce, #3x3,
# #5x5 reduce, #5x5, pool proj, for each Inception module at 224 x 224.
TABLE1 = [("3a", 192, 28, (64, 96, 128, 16, 32, 32)),
          ("3b", 256, 28, (128, 128, 192, 32, 96, 64)),
          ("4a", 480, 14, (192, 96, 208, 16, 48, 64)),
          ("4b", 512, 14, (160, 112, 224, 24, 64, 64)),
          ("4c", 512, 14, (128, 128, 256, 24, 64, 64)),
          ("4d", 512, 14, (112, 144, 288, 32, 64, 64)),
          ("4e", 528, 14, (256, 160, 320, 32, 128, 128)),
          ("5a", 832, 7, (256, 160, 320, 32, 128, 128)),
          ("5b", 832, 7, (384, 192, 384, 48, 128, 128))]


def inception_madds(C, H, n1, r3, n3, r5, n5, pp):
    """K*C*k*k*H*W summed over a module's convs: with the 1x1 reductions (Fig. 2b), and the
    naive module (Fig. 2a: 3x3 and 5x5 over all C maps, the pool's C maps passed on)."""
    with_ = H * H * (C * n1 + C * r3 + 9 * r3 * n3 + C * r5 + 25 * r5 * n5 + C * pp)
    return with_, H * H * C * (n1 + 9 * n3 + 25 * n5)


def test_11_inception_and_nin(tmp_path):
    out = run_lesson("11_inception_and_nin.py", tmp_path)
    # Config C: a 1x1 of 256 over 256 maps at 56x56 vs D's 3x3 there; C's three 1x1s are
    # conv3_3 (256, 56), conv4_3 and conv5_3 (512 over 512, at 28 and 14).
    assert (f"C conv3_3 (1x1): {257 * 256:,} parameters, {56 * 56 * 256 * 256:,} multiply-adds; "
            f"D conv3_3 (3x3): {(9 * 256 + 1) * 256:,}, {9 * 56 * 56 * 256 * 256:,}") in out
    ones_p = 257 * 256 + 2 * 513 * 512
    ones_m = 56 * 56 * 256 * 256 + (28 * 28 + 14 * 14) * 512 * 512
    assert (f"C's three 1x1 layers: {ones_p:,} parameters, {ones_m:,} multiply-adds; D's 3x3 "
            f"at the same places: {(9 * 256 + 1) * 256 + 2 * (9 * 512 + 1) * 512:,}, "
            f"{9 * ones_m:,} (9.0x the work)") in out
    assert "pool5 receptive field: B 156, C 156, D 212" in out
    # NiN's mlpconv1: 96 filters of 11x11x3, stride 4: 54x54 maps; then two 1x1s 96 -> 96.
    # mlpconv4: 1024 of 3x3x384 on 6x6, then 1x1s 1024 -> 1024 and 1024 -> 1000 classes.
    assert (f"NiN mlpconv1: spatial conv {(363 + 1) * 96:,} parameters {54 * 54 * 96 * 363:,} "
            f"multiply-adds; two 1x1 convs {2 * 97 * 96:,} parameters "
            f"{2 * 54 * 54 * 96 * 96:,} multiply-adds") in out
    assert (f"NiN mlpconv4: spatial conv {(9 * 384 + 1) * 1024:,} parameters "
            f"{36 * 1024 * 9 * 384:,} multiply-adds; two 1x1 convs "
            f"{1025 * 1024 + 1025 * 1000:,} parameters {36 * 1024 * 2024:,} multiply-adds") in out
    assert "parameters NiN: 7,595,176;" in out  # test_nin_googlenet's sum of the architecture
    # Inception 3a and 4a by hand from Table 1's widths; the naive module also passes the
    # pool's C maps on: 64 + 128 + 32 + 192 = 416 maps for 3a, not 256.
    for name, C, H, widths in TABLE1[:1] + TABLE1[2:3]:
        w, wo = inception_madds(C, H, *widths)
        n1, r3, n3, r5, n5, pp = widths
        p = ((C + 1) * (n1 + r3 + r5 + pp) + (9 * r3 + 1) * n3 + (25 * r5 + 1) * n5,
             (C + 1) * n1 + (9 * C + 1) * n3 + (25 * C + 1) * n5)
        assert (f"inception_{name} multiply-adds: with reductions {w:,}, without {wo:,}, "
                f"saved {wo / w:.2f}x") in out, name
        assert (f"inception_{name} output maps: with reductions {n1 + n3 + n5 + pp}, without "
                f"{n1 + n3 + n5 + C}; parameters with {p[0]:,}, without {p[1]:,}\n") in out, name
    assert "inception_3a multiply-adds: with reductions 128,049,152, without 303,464,448" in out
    # All nine, and the naive modules stacked: each sees the previous naive output.
    w_all = sum(inception_madds(C, H, *wd)[0] for _, C, H, wd in TABLE1)
    wo_all = sum(inception_madds(C, H, *wd)[1] for _, C, H, wd in TABLE1)
    C_naive, stacked = 192, 0
    for _, _, H, wd in TABLE1:
        stacked += inception_madds(C_naive, H, *wd)[1]
        C_naive += wd[0] + wd[2] + wd[4]
    assert (f"nine modules, multiply-adds: with reductions {w_all:,}, without {wo_all:,} "
            f"({wo_all / w_all:.2f}x); naive modules stacked {stacked:,} "
            f"({stacked / w_all:.1f}x), inception_5b giving {C_naive} maps instead of 1024") in out
    # The whole GoogLeNet at test time: stem conv 7x7/2 (112), 1x1 64 and 3x3 192 (56), the
    # modules, the 1024 -> 1000 classifier; parameters as test_nin_googlenet documents.
    stem = 112 * 112 * 64 * 147 + 56 * 56 * 64 * 64 + 56 * 56 * 192 * 576
    googlenet_madds = stem + w_all + 1024 * 1000
    assert f"parameters GoogLeNet: 6,998,552; multiply-adds GoogLeNet: {googlenet_madds:,}" in out
    # Global average pooling vs FC: VGG-16's fc6-fc8, GoogLeNet's one 1024 -> 1000.
    vgg_fc = (25088 + 1) * 4096 + (4096 + 1) * 4096 + (4096 + 1) * 1000
    assert f"FC parameters VGG-16: {vgg_fc:,} of 138,357,544 (89.4%)" in out
    assert "FC parameters NiN: 0 of 7,595,176 (0.0%)" in out
    assert "FC parameters GoogLeNet: 1,025,000 of 6,998,552 (14.6%)" in out
    gap = 138_357_544 - vgg_fc + 513 * 1000
    assert (f"VGG-16 with global average pooling and one FC 512 -> 1000: {gap:,} parameters "
            f"({138_357_544 / gap:.1f}x fewer)") in out
    # Depth as the papers count it: GoogLeNet 3 stem convs + 9 modules x 2 + 1 = 22 on the
    # longest path, 3 + 9 x 6 + 1 = 58 weight layers; NiN 4 x 3.
    for net, n, depth in [("AlexNet", "60,965,224", "8 (8"), ("VGG-16", "138,357,544", "16 (16"),
                          ("NiN", "7,595,176", "12 (12"), ("GoogLeNet", "6,998,552", "22 (58")]:
        assert re.search(rf"closing {net}: {n} parameters, [\d,]+ multiply-adds, "
                         rf"depth {re.escape(depth)} weight layers\)", out), net
    assert (f"GoogLeNet vs AlexNet: {60_965_224 / 6_998_552:.1f}x fewer parameters, "
            f"{googlenet_madds / 724_406_816:.1f}x the multiply-adds") in out
    assert_png(tmp_path, "11_inception_and_nin.png")


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


def test_12_what_the_network_sees_quick(tmp_path):
    out = run_lesson("12_what_the_network_sees.py", tmp_path, "--quick")
    # Unpooling, rectification and the transposed filters by hand give exactly what
    # visualise.deconv computes, inside the unit's receptive field.
    assert "every value at its switch: yes" in out
    assert number(out, r"project_strongest: max abs difference (\S+)") == 0
    assert "every non-zero pixel of the projection inside it: yes" in out
    assert number(out, r"size-0 square, max difference over \d+ positions: (\S+)") < 1e-5
    assert re.search(r"8px square, stride 8: 4x4 positions", out)  # (32 - 8) // 8 + 1
    assert number(out, r"mean colourfulness trained (\S+),") <= 1
    assert_png(tmp_path, "12_what_the_network_sees.png")
