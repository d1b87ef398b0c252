"""The NumPy reference of the convolution (see the package docstring for the math): the
oracle every kernel is tested against, float64-capable. Groups run as G ungrouped convs,
one per group, side by side: the plainest statement of what `groups` means."""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def output_size(H, W, R, S, stride, pad):
    """(P, Q) of a conv of an H x W input with an R x S filter; ValueError if empty."""
    if stride < 1 or pad < 0:
        raise ValueError(f"conv needs stride >= 1 and pad >= 0, got stride {stride}, pad {pad}")
    P = (H + 2 * pad - R) // stride + 1
    Q = (W + 2 * pad - S) // stride + 1
    if P < 1 or Q < 1:
        raise ValueError(f"conv filter {R}x{S} (stride {stride}, pad {pad}) does not fit "
                         f"the {H}x{W} input: output would be {P}x{Q}")
    return P, Q


def check_groups(C, w_shape, groups, x_name="conv x", w_name="conv w"):
    """Raise ValueError unless a (K, Cg, R, S) weight fits C input channels in `groups`
    groups: C = groups * Cg and K a multiple of groups (PyTorch's rule)."""
    K, Cg = w_shape[:2]
    if groups < 1 or K % groups:
        raise ValueError(f"conv groups must be >= 1 and divide the {K} filters of {w_name} "
                         f"{tuple(w_shape)}, got groups {groups}")
    if Cg * groups != C:
        raise ValueError(f"{w_name} has shape {tuple(w_shape)}: {Cg} input channels per "
                         f"group x {groups} group(s), but {x_name} has {C} input channels")


def group_slices(C, K, groups):
    """[(input channels, filters)] of each group, as slices: C/G channels, K/G filters."""
    Cg, Kg = C // groups, K // groups
    return [(slice(g * Cg, (g + 1) * Cg), slice(g * Kg, (g + 1) * Kg)) for g in range(groups)]


# ----------------------------------------------------------------------------------------
# NumPy reference (the oracle, and what the cpu device trains with)

def _im2col(x, R, S, stride, pad):
    """The unrolled input of the whole batch, transposed: cols (C*R*S, N*P*Q) with
    cols[(c,r,s), (n,p,q)] = x_padded[n, c, p*stride + r, q*stride + s].

    One matrix for the batch (not one per image) makes each GEMM below a single large
    BLAS call; that, and reusing cols from forward in backward, is 2x faster on CPU."""
    N, C = x.shape[:2]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    windows = sliding_window_view(xp, (R, S), axis=(2, 3))  # (N, C, H+2pad-R+1, ..., R, S)
    windows = windows[:, :, ::stride, ::stride]              # every stride-th one: P x Q
    P, Q = windows.shape[2:4]
    cols = np.ascontiguousarray(windows.transpose(1, 4, 5, 0, 2, 3))  # (C, R, S, N, P, Q)
    return cols.reshape(C * R * S, N * P * Q)


def forward_ref_cols(x, w, b, stride=1, pad=0, groups=1):
    """(y, cols): forward_ref's output and the unrolled input, which backward_ref reuses
    (with groups, a list of each group's)."""
    check_groups(x.shape[1], w.shape, groups)
    if groups > 1:
        parts = [forward_ref_cols(x[:, cs], w[ks], b[ks], stride, pad)
                 for cs, ks in group_slices(x.shape[1], w.shape[0], groups)]
        return np.concatenate([y for y, _ in parts], axis=1), [cols for _, cols in parts]
    N, _, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = output_size(H, W, R, S, stride, pad)
    cols = _im2col(x, R, S, stride, pad)
    y = w.reshape(K, -1) @ cols                       # the GEMM: (K, CRS) @ (CRS, NPQ)
    y += b.reshape(K, 1)
    y = y.reshape(K, N, P, Q).transpose(1, 0, 2, 3)   # (N, K, P, Q)
    return np.ascontiguousarray(y, dtype=x.dtype), cols


def forward_ref(x, w, b, stride=1, pad=0, groups=1):
    """y = conv(x, w) + b, in x's dtype. x (N,C,H,W), w (K,C/groups,R,S), b (K,) -> (N,K,P,Q)."""
    return forward_ref_cols(x, w, b, stride, pad, groups)[0]


def backward_ref(x, w, dy, stride=1, pad=0, need_dx=True, cols=None, groups=1):
    """(dx, dw, db) of forward_ref, in x's dtype; dx is None unless need_dx.
    cols: forward_ref_cols's unrolled x, if at hand (else it is built again)."""
    check_groups(x.shape[1], w.shape, groups)
    if groups > 1:
        parts = [backward_ref(x[:, cs], w[ks], dy[:, ks], stride, pad, need_dx,
                              None if cols is None else cols[g])
                 for g, (cs, ks) in enumerate(group_slices(x.shape[1], w.shape[0], groups))]
        dx = np.concatenate([p[0] for p in parts], axis=1) if need_dx else None
        return dx, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    P, Q = dy.shape[2:]
    dyt = np.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(K, N * P * Q)
    db = dyt.sum(axis=1).astype(x.dtype, copy=False)
    if cols is None:
        cols = _im2col(x, R, S, stride, pad)
    dw = (dyt @ cols.T).reshape(w.shape).astype(x.dtype, copy=False)  # (K, NPQ) @ (NPQ, CRS)
    if not need_dx:
        return None, dw, db
    dcols = (w.reshape(K, -1).T @ dyt).reshape(C, R, S, N, P, Q)  # dL/dcols = w^T @ dy
    # col2im: tap (r, s) of output (p, q) read padded pixel (p*stride + r, q*stride + s),
    # so add each tap's (C, N, P, Q) slice back there. A loop over R*S taps, not pixels.
    dxp = np.zeros((C, N, H + 2 * pad, W + 2 * pad), dtype=dcols.dtype)
    for r in range(R):
        for s in range(S):
            dxp[:, :, r:r + stride * (P - 1) + 1:stride, s:s + stride * (Q - 1) + 1:stride] \
                += dcols[:, r, s]
    dx = dxp[:, :, pad:pad + H, pad:pad + W].transpose(1, 0, 2, 3)  # back to (N, C, H, W)
    return np.ascontiguousarray(dx, dtype=x.dtype), dw, db


