"""The baseline a CuPy user would write: im2col + one matmul (col2im for dx), for any array
module (numpy too, which is how the tests check it against kernels/conv/'s references)."""


def im2col(xp, x, R, S, stride, pad):
    """cols (C*R*S, N*P*Q), cols[(c,r,s), (n,p,q)] = x_padded[n, c, p*stride+r, q*stride+s]."""
    N, C, H, W = x.shape
    P, Q = (H + 2 * pad - R) // stride + 1, (W + 2 * pad - S) // stride + 1
    xpad = xp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    sn, sc, sh, sw = xpad.strides
    view = xp.lib.stride_tricks.as_strided(
        xpad, (C, R, S, N, P, Q), (sc, sh, sw, sn, sh * stride, sw * stride))
    return xp.ascontiguousarray(view).reshape(C * R * S, N * P * Q)


def _rows_of(xp, dy):
    """dy (N, K, P, Q) as the (K, N*P*Q) matrix the GEMMs take."""
    return xp.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(dy.shape[1], -1)


def im2col_forward(xp, x, w, b, stride=1, pad=0):
    """y = w (K, CRS) @ cols (CRS, NPQ) + b, back to (N, K, P, Q)."""
    N, K, (_, _, R, S) = x.shape[0], w.shape[0], w.shape
    cols = im2col(xp, x, R, S, stride, pad)
    y = xp.matmul(w.reshape(K, -1), cols) + b.reshape(K, 1)
    P, Q = (x.shape[2] + 2 * pad - R) // stride + 1, (x.shape[3] + 2 * pad - S) // stride + 1
    return xp.ascontiguousarray(y.reshape(K, N, P, Q).transpose(1, 0, 2, 3))


def im2col_backward_weight(xp, x, dy, R, S, stride=1, pad=0):
    """dw = dy (K, NPQ) @ cols^T (NPQ, CRS), as (K, C, R, S)."""
    K, C = dy.shape[1], x.shape[1]
    return xp.matmul(_rows_of(xp, dy), im2col(xp, x, R, S, stride, pad).T).reshape(K, C, R, S)


def im2col_backward_data(xp, dy, w, H, W, stride=1, pad=0):
    """dcols = w^T (CRS, K) @ dy (K, NPQ), then col2im: each tap's slice added back into dx."""
    N, K, P, Q = dy.shape
    _, C, R, S = w.shape
    dcols = xp.matmul(w.reshape(K, -1).T, _rows_of(xp, dy)).reshape(C, R, S, N, P, Q)
    dxp = xp.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=dy.dtype)
    for r in range(R):
        for s in range(S):
            dxp[:, :, r:r + stride * (P - 1) + 1:stride, s:s + stride * (Q - 1) + 1:stride] \
                += dcols[:, r, s].transpose(1, 0, 2, 3)
    return xp.ascontiguousarray(dxp[:, :, pad:pad + H, pad:pad + W])
