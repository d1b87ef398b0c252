"""The roofline estimate of VGG-16's conv layers on an H200: each pass's FLOPs and the
fewest bytes it must move, their ratio (arithmetic intensity), and the time floors they
give against the FP32 peak and HBM bandwidth. Above the ridge point (peak / bandwidth,
14 FLOP/byte on an H200) a pass is bound by arithmetic, below it by memory."""
from minivgg.bench.occupancy import H200
from minivgg.bench.shapes import PASSES, conv_bytes, conv_flops

HEADER = ("layer", "shape", "pass", "GFLOP", "MB", "FLOP/byte", "compute floor ms",
          "memory floor ms", "bound by")


def pass_floor(shape, N, pass_, gpu=H200):
    """(flops, bytes, intensity, compute ms, memory ms) of one pass at batch N."""
    flops = conv_flops(N, shape.C, shape.K, *shape.PQ, shape.R, shape.S)
    nbytes = conv_bytes(shape, N, pass_)
    return (flops, nbytes, flops / nbytes, 1e3 * flops / gpu["fp32_flops"],
            1e3 * nbytes / gpu["hbm_bytes_per_s"])


def roofline_rows(layers, N, gpu=H200):
    """Rows for every (layer shape, pass); a merged shape counts once (label says which)."""
    rows = []
    for shape in layers:
        for p in PASSES:
            flops, nbytes, ai, t_c, t_m = pass_floor(shape, N, p, gpu)
            rows.append([shape.label(), shape.describe(N), p, flops / 1e9, nbytes / 1e6, ai,
                         t_c, t_m, "compute" if t_c >= t_m else "memory"])
    return rows


def step_floor_ms(layers, N, gpu=H200):
    """The conv part of one training step at its floor: every layer (repeats counted) and
    all three passes, except conv1_1's backward-data (its input, the image, needs none)."""
    total = 0.0
    for shape in layers:
        for p in PASSES:
            if p == "bwd-data" and shape.C == 3:
                continue
            total += max(pass_floor(shape, N, p, gpu)[3:]) * (1 + len(shape.same))
    return total
