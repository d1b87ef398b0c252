"""Conv launchers: check, size the grid from the shapes, launch on the array's stream."""
import numpy as np

from kernels.common import blocks_1d, ceil_div, check, check_size, launch
from kernels.conv.reference import check_groups, output_size
from kernels.conv.v1 import (BIAS_THREADS, conv_backward_bias_v1, conv_backward_data_v1,
                             conv_backward_weight_v1, conv_forward_v1, conv_sum_partials_v1)
from kernels.conv.v2 import TILE, conv_backward_data_v2, conv_backward_weight_v2, conv_forward_v2
from kernels.conv.v3 import (BK, BM, BN, THREADS_V3, conv_backward_data_v3,
                             conv_backward_weight_v3, conv_forward_v3)

# Launchers check, size the grid from the shapes and launch on the array's stream. They
# never allocate or synchronise, and they overwrite their outputs. The split gradients
# (backward_weight, backward_bias) need a workspace for their partial sums: its shape
# comes from *_workspace(), the caller allocates it (minivgg/ops.py does).

THREADS = 128  # v1 block size
MAX_GRID_YZ = 65535  # CUDA's limit on gridDim.y and gridDim.z (x allows 2^31 - 1)


def _sizes(x_name, x_shape, w_name, w, stride, pad, groups):
    """(N, C, H, W, K, R, S, P, Q) after checking w (K, C/groups, R, S) against the
    (N, C, H, W) shape and the groups."""
    check(w_name, w, ndim=4)
    N, C, H, W = x_shape
    K, Cg, R, S = w.shape
    if Cg == 0:  # the kernels divide by it (G = C / Cg)
        raise ValueError(f"{w_name} has shape {tuple(w.shape)}: no input channels")
    check_groups(C, w.shape, groups, f"{x_name} {tuple(x_shape)}", w_name)
    P, Q = output_size(H, W, R, S, stride, pad)
    return N, C, H, W, K, R, S, P, Q


def _check_int32(*arrays):
    for a in arrays:
        check_size("conv array", a)


def _pick(kernels, version):
    if version not in kernels:
        raise ValueError(f"conv has versions {sorted(kernels)} for this pass, not {version!r}")
    return kernels[version]


def _group_tiles(name, what, groups, per_group, tile):
    """Blocks along the grid's y axis: each group's `per_group` rows or columns in tiles."""
    blocks = groups * ceil_div(per_group, tile)
    if blocks > MAX_GRID_YZ:
        raise ValueError(f"{name}: {groups} group(s) of {per_group} {what} need {blocks} "
                         f"blocks along the grid's y axis, more than {MAX_GRID_YZ}")
    return blocks


def _grid_block(name, version, v1_size, rows, cols, groups, threads):
    """(grid, block) of a forward or backward-data launch: v1 one thread per output of
    v1_size; v2 TILE x TILE and v3 BM x BN output tiles over each group's rows x cols GEMM
    (cols per group), the group along the grid's z axis (a 2-D grid for one group)."""
    if version == 1:
        return blocks_1d(name, v1_size, threads), threads
    tile = TILE if version == 2 else BN
    if ceil_div(cols, tile) > MAX_GRID_YZ or groups > MAX_GRID_YZ:
        raise ValueError(f"{name}: {groups} group(s) of {cols} GEMM columns need more than "
                         f"{MAX_GRID_YZ} blocks along the grid's y or z axis")
    grid = (ceil_div(rows, tile), ceil_div(cols, tile)) + ((groups,) if groups > 1 else ())
    return grid, ((TILE, TILE) if version == 2 else THREADS_V3)


def forward(x, w, b, y, stride=1, pad=0, version=2, threads=THREADS, groups=1):
    """y = conv(x, w) + b: x (N,C,H,W), w (K,C/groups,R,S), b (K,), y (N,K,P,Q), all
    float32. `threads`: v1's block size (a test launches small blocks)."""
    check("conv x", x, ndim=4)
    N, C, H, W, K, R, S, P, Q = _sizes("conv x", x.shape, "conv w", w, stride, pad, groups)
    check("conv b", b, shape=(K,))
    check("conv y", y, shape=(N, K, P, Q))
    _check_int32(x, w, y)
    kernel = _pick({1: conv_forward_v1, 2: conv_forward_v2, 3: conv_forward_v3}, version)
    if y.size == 0:
        return
    grid, block = _grid_block("conv forward", version, y.size, N * P * Q, K // groups,
                              groups, threads)
    kg = (np.int32(K // groups),) if version > 1 else ()  # v2, v3: filters per group
    launch(kernel, grid, block, x, w, b, y, np.int32(stride), np.int32(pad), *kg)


def backward_data(dy, w, dx, stride=1, pad=0, version=2, threads=THREADS, groups=1):
    """dx = dL/dx from dy (N,K,P,Q) and w (K,C/groups,R,S) into dx (N,C,H,W)."""
    check("conv dx", dx, ndim=4)
    N, C, H, W, K, R, S, P, Q = _sizes("conv dx", dx.shape, "conv w", w, stride, pad, groups)
    check("conv dy", dy, shape=(N, K, P, Q))
    _check_int32(dx, w, dy)
    kernel = _pick({1: conv_backward_data_v1, 2: conv_backward_data_v2,
                    3: conv_backward_data_v3}, version)
    if dx.size == 0:
        return
    grid, block = _grid_block("conv backward_data", version, dx.size, N * H * W, C // groups,
                              groups, threads)
    kg = (np.int32(K // groups),) if version > 1 else ()  # v2, v3: filters per group
    launch(kernel, grid, block, dy, w, dx, np.int32(stride), np.int32(pad), *kg)


# Split-K for the weight gradient (v2 and v3). The early VGG layers have a tiny dw (64 x 27
# for conv1_1) and a huge reduction (N*224*224 pixels), so without a split a handful of
# blocks would do all the work (8 for v2, 1 for v3). The launcher cuts the reduction into
# chunks, one per grid z, aiming at SPLITK_BLOCKS[version] blocks in all -- two waves of
# the blocks an H200/H100 SM holds at once (132 SMs; 5 of v2's 42-48-register 256-thread
# blocks, 3 of v3's 80-register ones: `python -m minivgg.bench static`), the second wave
# evening out blocks that finish late -- without going over it (a dw of more tiles than
# that is not split), and never chunks shorter than SPLITK_MIN_CHUNK pixels, so each
# block's loop is long enough to pay for its start-up and its partial tile. Late layers
# already fill the GPU and get one chunk. Each chunk writes its partial tile to a
# workspace (chunks, K, C, R, S) and conv_sum_partials_v1 adds the chunks in a fixed
# order: the result is the same bit for bit on every run (atomic adds into dw would not
# be: their order, and so their rounding, changes from run to run). The workspace is at
# most SPLITK_BLOCKS[v] tiles: 1320 x 16 x 16 (v2) or 792 x 64 x 64 (v3) floats, 1.4
# or 13 MB. A launcher does not ask the GPU its SM count (that would tie the split, hence
# the rounding of dw, to the device).
SPLITK_BLOCKS = {2: 2 * 5 * 132, 3: 2 * 3 * 132}
SPLITK_STEP = {2: TILE, 3: BK}  # a chunk is whole reduction steps of the kernel
SPLITK_MIN_CHUNK = 256


def split_k(L, tiles, splits=None, version=3):
    """(splits, chunk): how many chunks of the length-L reduction the version-2 or -3
    weight-gradient kernel runs for a dw of `tiles` output tiles, and their length (a
    multiple of the kernel's reduction step; the last chunk may be shorter). `splits`
    asks for a number of chunks (what we get can be less, since chunks are whole steps);
    None picks it as explained above."""
    step = SPLITK_STEP[version]
    if splits is None:
        splits = max(1, min(ceil_div(L, SPLITK_MIN_CHUNK), SPLITK_BLOCKS[version] // tiles))
    if splits < 1:
        raise ValueError(f"conv split_k must be >= 1, got {splits}")
    chunk = max(step, ceil_div(ceil_div(L, min(splits, MAX_GRID_YZ)), step) * step)
    return max(1, ceil_div(L, chunk)), chunk


def _weight_grid(N, Cg, K, R, S, P, Q, groups, version, split_k_chunks):
    """(grid, block, chunk) of a v2/v3 weight-gradient launch of a (K, Cg, R, S) dw:
    each group's Kg x Cg*R*S GEMM in tiles, the groups' row tiles side by side along the
    grid's y axis; grid z = the chunks."""
    tile = TILE if version == 2 else BM
    cols = ceil_div(Cg * R * S, tile)
    rows = _group_tiles("conv backward_weight", "filters", groups, K // groups, tile)
    chunks, chunk = split_k(N * P * Q, cols * rows, split_k_chunks, version)
    block = (TILE, TILE) if version == 2 else THREADS_V3
    return (cols, rows, chunks), block, chunk


def backward_weight_workspace(x_shape, w_shape, stride=1, pad=0, version=2,
                              split_k_chunks=None):
    """The shape (chunks, K, Cg, R, S) of the partial sums backward_weight needs for these
    shapes, or None when it runs in one chunk (v1 never splits). The groups are
    C / Cg, read from the shapes."""
    N, C, H, W = x_shape
    K, Cg, R, S = w_shape
    if version == 1:
        return None
    P, Q = output_size(H, W, R, S, stride, pad)
    groups = C // Cg if Cg else 1
    (_, _, chunks), _, _ = _weight_grid(N, Cg, K, R, S, P, Q, groups, version, split_k_chunks)
    return (chunks, K, Cg, R, S) if chunks > 1 else None


def backward_weight(x, dy, dw, stride=1, pad=0, version=2, split_k_chunks=None,
                    workspace=None, threads=THREADS, groups=1):
    """dw = dL/dw from x (N,C,H,W) and dy (N,K,P,Q) into dw (K,C/groups,R,S).

    split_k_chunks (versions 2 and 3): the number of reduction chunks, None = automatic
    (see split_k). With more than one, `workspace` must be a float32 array of the shape
    backward_weight_workspace() gives. `threads`: v1's block size."""
    check("conv x", x, ndim=4)
    N, C, H, W, K, R, S, P, Q = _sizes("conv x", x.shape, "conv dw", dw, stride, pad, groups)
    check("conv dy", dy, shape=(N, K, P, Q))
    _check_int32(x, dw, dy)
    if version not in (1, 2, 3):
        raise ValueError(f"conv has versions [1, 2, 3] for this pass, not {version!r}")
    if dw.size == 0:
        return
    if version == 1:
        launch(conv_backward_weight_v1, blocks_1d("conv backward_weight", dw.size, threads),
               threads, x, dy, dw, np.int32(stride), np.int32(pad))
        return
    grid, block, chunk = _weight_grid(N, C // groups, K, R, S, P, Q, groups, version,
                                      split_k_chunks)
    kernel = conv_backward_weight_v2 if version == 2 else conv_backward_weight_v3
    args = (np.int32(stride), np.int32(pad), np.int32(chunk), np.int32(K // groups))
    if grid[2] == 1:  # one chunk: a 2-D grid writing dw itself
        launch(kernel, grid[:2], block, x, dy, dw.reshape((1,) + dw.shape), *args)
        return
    check("conv workspace", _required(workspace, "backward_weight"),
          shape=(grid[2],) + dw.shape)
    _check_int32(workspace)
    launch(kernel, grid, block, x, dy, workspace, *args)
    _sum_partials(workspace.reshape(grid[2], dw.size), dw.reshape(dw.size), threads)


def _required(workspace, name):
    if workspace is None:
        raise ValueError(f"conv {name} runs in several chunks here and needs a workspace "
                         f"(see {name}_workspace)")
    return workspace


def _sum_partials(partial, out, threads):
    launch(conv_sum_partials_v1, blocks_1d("conv sum_partials", out.size, threads), threads,
           partial, out)


# The bias gradient splits the batch into chunks of images, one per grid y, aiming at
# BIAS_BLOCKS blocks in all (two waves of the 10 resident 128-thread blocks an SM holds,
# on 132 SMs), and adds the chunks' partial sums in order as backward_weight does.
BIAS_BLOCKS = 2 * 10 * 132


def bias_chunks(N, K):
    """(chunks, images per chunk) of the bias gradient for a batch of N, K channels."""
    chunks = max(1, min(N, BIAS_BLOCKS // max(K, 1), MAX_GRID_YZ))
    images = max(1, ceil_div(N, chunks))
    return max(1, ceil_div(N, images)), images


def backward_bias_workspace(dy_shape):
    """The shape (chunks, K) of the partial sums backward_bias needs, or None."""
    N, K = dy_shape[:2]
    chunks, _ = bias_chunks(N, K)
    return (chunks, K) if chunks > 1 else None


def backward_bias(dy, db, workspace=None, threads=THREADS):
    """db[k] = sum of dy[:, k] over batch and pixels: dy (N,K,P,Q), db (K,). With several
    chunks of images, `workspace` is a float32 array of backward_bias_workspace()'s shape.
    `threads`: the block size of the second pass that adds the chunks."""
    check("conv dy", dy, ndim=4)
    N, K, P, Q = dy.shape
    check("conv db", db, shape=(K,))
    _check_int32(dy)
    if K == 0:
        return
    chunks, images = bias_chunks(N, K)
    out = db.reshape(1, K)
    if chunks > 1:
        out = _required(workspace, "backward_bias")
        check("conv bias workspace", out, shape=(chunks, K))
    grid = (K, chunks) if chunks > 1 else K
    launch(conv_backward_bias_v1, grid, BIAS_THREADS, dy.reshape(N, K, P * Q), out,
           np.int32(images))
    if chunks > 1:
        _sum_partials(out, db, threads)
