"""Launch every kernel of kernels/ once -- every version, forward and backward, the split
paths (several reduction chunks, their partial sums) included -- then one whole training
step: the program compute-sanitizer's memcheck, racecheck and synccheck watch in
benchmarks/gpu_check.sh (part 3). Small shapes that still cross the tiles (conv v3's 64 x 64,
the 16 x 16 of v2 and linear).

Every output starts as NaN and must be finite afterwards (a kernel that leaves part of its
output unwritten shows here even when the sanitizer is quiet), and every kernel listed in a
module's PTX_SIGNATURES must have been launched. Exit 0 and a last line "sanitize_run: OK"
when both hold; 1 otherwise.

    python benchmarks/sanitize_run.py --device cuda     # on a GPU (default)
    python benchmarks/sanitize_run.py --device sim      # the same launches in the simulator
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

# (N, C, H, K, FC in, FC out): on a GPU, 70 channels and 9 x 9 maps cross conv v3's 64-wide
# tiles and v2's 16; the simulator (one Python thread per CUDA thread) gets the least.
SIZES = {"cuda": (2, 5, 9, 70, 40, 37), "sim": (1, 2, 5, 3, 5, 3)}


class Run:
    """The device's arrays: NaN-poisoned outputs, and the check that they were written."""

    def __init__(self, xp, rng):
        self.xp, self.rng, self.unwritten = xp, rng, []

    def rand(self, *shape, scale=1.0):
        return self.xp.asarray((scale * self.rng.standard_normal(shape)).astype(np.float32))

    def out(self, *shape):
        return self.xp.full(shape, np.nan, dtype=np.float32)

    def written(self, name, *arrays):
        for a in arrays:
            if not bool(self.xp.isfinite(a).all()):
                self.unwritten.append(name)


def conv_launches(run, N, C, H, K):
    from kernels import conv
    x, w, b = run.rand(N, C, H, H), run.rand(K, C, 3, 3, scale=0.2), run.rand(K)
    dy = run.rand(N, K, H, H)
    for v in (1, 2, 3):
        y, dx, dw = run.out(N, K, H, H), run.out(N, C, H, H), run.out(K, C, 3, 3)
        conv.forward(x, w, b, y, 1, 1, version=v)
        conv.backward_data(dy, w, dx, 1, 1, version=v)
        run.written(f"conv v{v} fwd, bwd-data", y, dx)
        for chunks in ((None,) if v == 1 else (1, 3)):  # one chunk, and a split with partials
            ws = None if v == 1 else conv.backward_weight_workspace(
                x.shape, w.shape, 1, 1, v, split_k_chunks=chunks)
            dw = run.out(K, C, 3, 3)
            conv.backward_weight(x, dy, dw, 1, 1, version=v, split_k_chunks=chunks,
                                 workspace=None if ws is None else run.out(*ws))
            run.written(f"conv v{v} bwd-weight ({chunks or 1} chunks)", dw)
    db, ws = run.out(K), conv.backward_bias_workspace(dy.shape)
    conv.backward_bias(dy, db, workspace=None if ws is None else run.out(*ws))
    run.written("conv bias", db)


def linear_launches(run, N, I, O):
    from kernels import linear
    x, w, b, dy = run.rand(N, I), run.rand(O, I, scale=0.2), run.rand(O), run.rand(N, O)
    for v in (1, 2):
        y, dx, dw = run.out(N, O), run.out(N, I), run.out(O, I)
        linear.forward(x, w, b, y, version=v)
        linear.backward_data(dy, w, dx, version=v)
        linear.backward_weight(x, dy, dw, version=v)
        run.written(f"linear v{v}", y, dx, dw)
    db = run.out(O)
    linear.backward_bias(dy, db)
    run.written("linear bias", db)


def elementwise_launches(run, N, C, H):
    """relu, max-pool (VGG's 2x2/2 and AlexNet's overlapping 3x3/2), LRN, average pool,
    dropout, soft-max cross-entropy, SGD."""
    from kernels import avgpool, dropout, lrn, pool, relu, sgd, softmax_xent
    x, dy = run.rand(N, C, H, H), run.rand(N, C, H, H)
    y, dx = run.out(N, C, H, H), run.out(N, C, H, H)
    relu.forward(x, y)
    relu.backward(y, dy, dx)
    run.written("relu", y, dx)
    for window in (2, 3):
        P = (H - window) // 2 + 1
        py, pdx = run.out(N, C, P, P), run.out(N, C, H, H)
        pool.forward(x, py, window, 2)
        pool.backward(x, run.rand(N, C, P, P), pdx, window, 2)
        run.written(f"pool {window}x{window}", py, pdx)
    lrn.forward(x, y, 5, 2.0, 1e-4, 0.75)
    lrn.backward(x, dy, dx, 5, 2.0, 1e-4, 0.75)
    run.written("lrn", y, dx)
    m, mdx = run.out(N, C), run.out(N, C, H, H)
    avgpool.forward(x, m)
    avgpool.backward(run.rand(N, C), mdx)
    run.written("avgpool", m, mdx)
    dropout.forward(x, y, 0.5, 7)
    dropout.backward(dy, dx, 0.5, 7)
    run.written("dropout", y, dx)
    labels = run.xp.asarray(np.arange(N) % C, dtype=np.int32)
    logits, probs, loss, dlogits = run.rand(N, C), run.out(N, C), run.out(1), run.out(N, C)
    softmax_xent.forward(logits, labels, probs, loss)
    softmax_xent.backward(probs, labels, run.xp.ones(1, dtype=np.float32), dlogits)
    run.written("softmax_xent", probs, loss, dlogits)
    w, v = run.rand(C, H), run.xp.zeros((C, H), dtype=np.float32)
    sgd.step(w, run.rand(C, H), v, 0.01, 0.9, 5e-4)
    run.written("sgd", w, v)


def classic_launches(run, N, C, H):
    """The kernels of the classic CNNs and of localisation: tanh and sigmoid, LeNet-5's
    trainable sub-sampling and its C3 connection mask, the Euclidean (box) loss."""
    from kernels import activations, euclidean, mask, subsample
    x, dy = run.rand(N, C, H, H), run.rand(N, C, H, H)
    for kind in ("tanh", "sigmoid"):
        y, dx = run.out(N, C, H, H), run.out(N, C, H, H)
        activations.forward(kind, x, y)
        activations.backward(kind, y, dy, dx)
        run.written(kind, y, dx)
    P = (H - 2) // 2 + 1
    coef, bias, sy = run.rand(C), run.rand(C), run.out(N, C, P, P)
    sdy, sdx, dcoef, dbias = run.rand(N, C, P, P), run.out(N, C, H, H), run.out(C), run.out(C)
    subsample.forward(x, coef, bias, sy, 2, 2)
    subsample.backward_data(sdy, coef, sdx, 2, 2)
    subsample.backward_params(x, sdy, dcoef, dbias, 2, 2)
    run.written("subsample", sy, sdx, dcoef, dbias)
    w = run.rand(C + 1, C, 3, 3)
    table = run.xp.asarray((np.arange((C + 1) * C) % 2).reshape(C + 1, C), dtype=np.float32)
    wm, dw = run.out(*w.shape), run.out(*w.shape)
    mask.forward(w, table, wm)
    mask.backward(run.rand(*w.shape), table, dw)
    run.written("mask", wm, dw)
    groups = run.xp.asarray(np.arange(N) % 3, dtype=np.int32)
    pred, target = run.rand(N, 12), run.rand(N, 4)
    boxes, loss, dpred = run.out(N, 4), run.out(1), run.out(N, 12)
    euclidean.forward(pred, target, groups, boxes, loss)
    euclidean.backward(pred, target, groups, run.xp.ones(1, dtype=np.float32), dpred)
    run.written("euclidean", boxes, loss, dpred)


def branch_launches(run, N, C, H):
    """The kernels of the nets with branches (NiN, GoogLeNet): channel concatenation of
    three inputs, max-pooling 3x3/1 with padding 1 (Inception's pool branch) and windowed
    average pooling 3x3/2 in Caffe's ceil mode (a clipped last window)."""
    from kernels import avgpool, concat, pool
    xs = [run.rand(N, c, H, H) for c in (1, C, 2)]
    y, dxs = run.out(N, C + 3, H, H), [run.out(N, c, H, H) for c in (1, C, 2)]
    concat.forward(xs, y)
    concat.backward(run.rand(N, C + 3, H, H), dxs)
    run.written("concat", y, *dxs)
    x = run.rand(N, C, H, H)
    py, pdx = run.out(N, C, H, H), run.out(N, C, H, H)
    pool.forward(x, py, 3, 1, pad=1)
    pool.backward(x, run.rand(N, C, H, H), pdx, 3, 1, pad=1)
    run.written("pool 3x3/1 pad 1", py, pdx)
    P = avgpool.window_output_size(H, H, 3, 2, ceil_mode=True)[0]
    ay, adx = run.out(N, C, P, P), run.out(N, C, H, H)
    avgpool.window_forward(x, ay, 3, 2)
    avgpool.window_backward(run.rand(N, C, P, P), adx, 3, 2)
    run.written("avgpool 3x3/2 ceil", ay, adx)


def training_step(run, device):
    """One SGD step through minivgg.ops: on a GPU VGG A-LRN at 32 px (width 1/8, dropout),
    in the simulator a tiny chain of the same ops at 4 x 4. Returns the loss."""
    from minivgg import ops
    from minivgg.optim import SGD
    from minivgg.tape import Tensor
    N = 2
    if device == "cuda":
        from minivgg.model import VGG
        model = VGG("A-LRN", 10, 0.125, 64, 32, dropout=0.5, init="kaiming", seed=0)
        params, x = model.named_parameters(), Tensor(run.rand(N, 3, 32, 32))
    else:
        shapes = {"c.weight": (4, 3, 3, 3), "c.bias": (4,), "f.weight": (5, 16), "f.bias": (5,)}
        params = {n: Tensor(run.rand(*s, scale=0.3), requires_grad=True)
                  for n, s in shapes.items()}
        p = params

        def model(t):
            h = ops.max_pool2d(ops.lrn(ops.relu(ops.conv2d(t, p["c.weight"], p["c.bias"], 1, 1))))
            return ops.linear(ops.dropout(ops.flatten(h), 0.5, 3), p["f.weight"], p["f.bias"])
        x = Tensor(run.rand(N, 3, 4, 4))
    opt = SGD(dict(params).items(), lr=0.01)
    loss = ops.softmax_cross_entropy(model(x), run.xp.asarray(np.arange(N), dtype=np.int32))
    loss.backward()
    opt.step()
    run.written("training step", loss.data)
    return float(loss.data[0])


def kernels_listed():
    """{kernel function name: its dispatcher} of every kernel in a PTX_SIGNATURES list."""
    import importlib
    import pkgutil

    import kernels
    out = {}
    for info in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"kernels.{info.name}")
        for kernel, _ in getattr(module, "PTX_SIGNATURES", []):
            out[(getattr(kernel, "py_func", None) or kernel).__name__] = kernel
    return out


def driver_resources(listed):
    """Registers and shared memory per kernel as the driver compiled it here (the static
    table in benchmarks/RESULTS.md predicts them from ptxas)."""
    lines = []
    for name, kernel in sorted(listed.items()):
        try:
            regs = sorted(set(kernel.get_regs_per_thread().values()))
            smem = sorted(set(kernel.get_shared_mem_per_block().values()))
            lines.append(f"  {name}: {regs} registers, {smem} bytes shared memory")
        except Exception as e:  # an attribute this numba-cuda lacks: say so, go on
            lines.append(f"  {name}: not read ({type(e).__name__})")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "sim"], default="cuda")
    args = p.parse_args(argv)
    from minivgg import backend
    backend.set_device(args.device)
    from kernels.common import recording
    N, C, H, K, I, O = SIZES[args.device]
    run = Run(backend.xp(), np.random.default_rng(0))
    with recording() as launches:
        conv_launches(run, N, C, H, K)
        linear_launches(run, N, I, O)
        elementwise_launches(run, N, C + 1, H)
        classic_launches(run, N, C + 1, H)
        branch_launches(run, N, C + 1, H)
        loss = training_step(run, args.device)
    listed = kernels_listed()
    missing = sorted(set(listed) - {launch.kernel for launch in launches})
    if args.device == "cuda":
        backend.xp().cuda.get_current_stream().synchronize()
        print("kernel resources as the driver compiled them:", *driver_resources(listed),
              sep="\n")
    for what, names in (("outputs left unwritten (NaN)", run.unwritten),
                        ("kernels never launched", missing)):
        if names:
            print(f"sanitize_run: FAILED: {what}: {', '.join(names)}")
    if run.unwritten or missing:
        return 1
    print(f"sanitize_run: OK: {len(launches)} launches of {len(listed)} kernels (every one "
          f"listed in kernels/), training step loss {loss:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
