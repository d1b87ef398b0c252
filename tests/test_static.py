"""`python -m minivgg.bench static`: occupancy arithmetic by hand, stand-in arrays that go
through the launchers and minivgg.ops exactly as real arrays do, launch geometry and the
roofline by hand, and the command itself (without compiling: tests/test_ptx.py builds the
tables from its compiled kernels)."""
import contextlib
import math

import numpy as np
import pytest

from kernels import relu
from kernels.common import recording
from minivgg import backend
from minivgg.bench import geometry, occupancy, roofline, shapes, static


@pytest.mark.parametrize("threads,regs,smem,blocks,limit", [
    (256, 80, 4224, 3, "registers"),    # conv v3: 80 x 32 = 2560 regs a warp, 6 warps a quarter
    (256, 32, 2048, 8, "warps"),        # 64 warps / 8 a block
    (128, 32, 0, 16, "warps"),
    (256, 46, 2048, 5, "registers"),    # 46 -> 48 regs (1536 a warp): 10 warps a quarter
    (64, 16, 100_000, 2, "shared memory"),  # (100000 + 1024) rounded to 128 B, 228 KB an SM
    (64, 16, 116_000, 1, "shared memory"),  # 2 x 116000 fits in 228 KB, not with 1 KB each
    (32, 16, 0, 32, "blocks"),          # 32 blocks an SM at most
    (32, 80, 0, 24, "registers"),       # a quarter holds 6 warps of 2560: 24, not 65536 // 2560
    (64, 33, 0, 24, "registers"),       # 33 x 32 rounds up to 1280 a warp: 12 a quarter
    (256, 256, 0, 0, "registers"),      # over 255 registers a thread: no block fits
])
def test_occupancy_by_hand(threads, regs, smem, blocks, limit):
    occ = occupancy.occupancy(threads, regs, smem)
    assert (occ.blocks, occ.limit) == (blocks, limit)
    assert occ.fraction == pytest.approx(blocks * math.ceil(threads / 32) / 64)


def test_waves():
    assert occupancy.waves(8, 5) == pytest.approx(8 / 660)  # 8 blocks on 132 SMs x 5
    assert occupancy.waves(1320, 5) == 2.0 and occupancy.waves(7, 0) is None


def test_stand_ins_launch_like_real_arrays(monkeypatch):
    """The same launches from the launchers with StandIns as with NumPy arrays: every conv
    pass and version (split-K workspace included) and every linear one."""
    shape = shapes.ConvShape("x", C=5, K=70, H=9, W=9)
    for fn, args in [(geometry.conv_version_launches, (shape, 2)),
                     (geometry.linear_version_launches, (3, 40, 37))]:
        for p in shapes.PASSES:
            for v in (1, 2, 3) if fn is geometry.conv_version_launches else (1, 2):
                stand_in = fn(*args, p, v)
                assert stand_in[0].kernel.endswith(f"_v{v}"), (p, v, stand_in)
                with monkeypatch.context() as m:
                    m.setattr(geometry, "StandIn", lambda s, d=np.float32: np.empty(s, d))
                    assert fn(*args, p, v) == stand_in, (p, v)
    assert any(launch.kernel == "conv_sum_partials_v1"
               for launch in geometry.conv_version_launches(shape, 64, "bwd-weight", 3))


def test_a_training_step_on_stand_ins_launches_like_one_on_arrays(monkeypatch):
    """minivgg.ops on the stand-in device against ops on the sim device with NumPy arrays
    (recorded, not run): the same launches, in the same order, for VGG-A at 32 px."""
    args = ("A-LRN", 2, 32, 10, 1 / 16, 16)
    stand_in = geometry.training_step(*args)

    @contextlib.contextmanager
    def real_arrays():
        backend.set_device("sim")
        with recording(execute=False) as launches:
            yield launches
    monkeypatch.setattr(geometry, "stand_in_device", real_arrays)
    monkeypatch.setattr(geometry, "StandIn", lambda s, d=np.float32: np.zeros(s, d))
    assert geometry.training_step(*args) == stand_in
    kernels = {launch.kernel for _, launch in stand_in}
    assert {"lrn_forward_v1", "lrn_backward_v1", "dropout_v1", "sgd_step_v1"} <= kernels


def test_vgg16_step_geometry_by_hand():
    step = geometry.training_step("D", 32)
    by_label = {}
    for label, launch in step:
        by_label.setdefault(label, []).append(launch)
    pool1 = by_label["pool1 fwd"][0]  # one thread per output: 32*64*112*112 / 256
    assert (pool1.kernel, pool1.blocks, pool1.threads) == ("pool_forward_v1", 100352, 256)
    relu1 = by_label["relu1_1 fwd"][0]  # a grid-stride loop, capped
    assert relu1.blocks == relu.MAX_BLOCKS
    # the image needs no gradient: conv1_1's backward has no backward-data launch
    assert not any("backward_data" in x.kernel for x in by_label["conv1_1 bwd"])
    assert any("backward_data" in x.kernel for x in by_label["conv1_2 bwd"])
    sgd = [launch for label, launch in step if label.endswith(" SGD")]
    assert len(sgd) == 32  # 16 layers, a weight and a bias each
    fc6 = by_label["fc6.weight SGD"][0]  # 25088 x 4096 weights, 256 a block, capped
    assert fc6.blocks == min(math.ceil(25088 * 4096 / 256), 65536)


def test_roofline_by_hand():
    conv1_2 = shapes.vgg16_layers()[1]
    flops, nbytes, ai, t_c, t_m = roofline.pass_floor(conv1_2, 32, "fwd")
    assert flops == 2 * 32 * 64 * 224 * 224 * 64 * 9
    assert nbytes == 4 * (2 * 32 * 64 * 224 * 224 + 64 * 64 * 9 + 64)  # x, y, w, b
    assert ai == pytest.approx(flops / nbytes)
    assert t_c == pytest.approx(1e3 * flops / 67e12) and t_m == pytest.approx(1e3 * nbytes / 4.8e12)
    # 13 layers x 3 passes minus conv1_1's backward-data, each at max(compute, memory)
    layers = shapes.vgg16_layers()
    floors = [max(roofline.pass_floor(s, 32, p)[3:]) * (1 + len(s.same))
              for s in layers for p in shapes.PASSES if not (p == "bwd-data" and s.C == 3)]
    assert roofline.step_floor_ms(layers, 32) == pytest.approx(sum(floors))


def test_static_command_without_compiling(tmp_path, capsys):
    out = tmp_path / "static.md"
    assert static.main(["--no-ptx", "--batch", "32", "64", "--out", str(out)]) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out
    for title in ("## Roofline", "## Launch geometry of VGG-16's training step",
                  "## Launch geometry of every conv and linear kernel version",
                  "## Launch geometry of the launchers the step does not use"):
        assert title in text
    assert "| conv3_3, conv3_2 bwd " in text  # the same launches share a row
    assert "norm1 (A-LRN) fwd" in text and "dense score map" in text
