"""Channel concatenation: output shapes by hand, a loop oracle, the reference backward
against finite differences, kernels against the reference (one input, several of different
widths, an input with no channels), PyTorch's torch.cat forward and backward."""
import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from helpers import dev, directional_check, empty, host, kernel_settings, split_on_every_axis
from kernels import concat
from kernels.common import recording


@st.composite
def cases(draw):
    """(N, [C_i], H, W): one to three inputs of 0 to 3 channels, at least one channel in
    all; maps from 1x1 up to 5x5, odd sizes included."""
    N, H, W = draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    channels = draw(st.lists(st.integers(0, 3), min_size=1, max_size=3).filter(sum))
    return N, channels, H, W


# Edges drawn every run: one input (y is x), Inception's shape in small (three inputs of
# different widths, an odd map), an input with no channels between two others, one pixel.
EDGES = [(1, [3], 2, 3), (2, [1, 3, 2], 3, 5), (1, [2, 0, 1], 2, 3), (2, [1, 1], 1, 1)]


def edges(test):
    for case in EDGES:
        test = example(case, 0)(test)
    return test


def loop_concat(xs):
    """The oracle: every input channel copied, one pixel at a time, to the next channel
    of y."""
    N, _, H, W = xs[0].shape
    y = np.full((N, sum(x.shape[1] for x in xs), H, W), np.nan)
    k = 0  # the next channel of y
    for x in xs:
        for c in range(x.shape[1]):
            for n in range(N):
                for h in range(H):
                    for w in range(W):
                        y[n, k, h, w] = x[n, c, h, w]
            k += 1
    return y


@pytest.mark.parametrize("shapes, want", [
    ([(2, 3, 4, 5)], (2, 3, 4, 5)),                                     # one input: itself
    ([(1, 64, 28, 28), (1, 128, 28, 28), (1, 32, 28, 28), (1, 32, 28, 28)],
     (1, 256, 28, 28)),                                                 # GoogLeNet's 3a
    ([(2, 1, 3, 3), (2, 0, 3, 3), (2, 2, 3, 3)], (2, 3, 3, 3)),         # no channels: adds 0
])
def test_output_shape_by_hand(shapes, want):
    assert concat.output_shape(shapes) == want


@pytest.mark.parametrize("shapes, bad", [
    ([(2, 3, 4, 5), (1, 3, 4, 5)], r"\(1, 3, 4, 5\)"),  # N
    ([(2, 3, 4, 5), (2, 1, 3, 5)], r"\(2, 1, 3, 5\)"),  # H
    ([(2, 3, 4, 5), (2, 1, 4, 6)], r"\(2, 1, 4, 6\)"),  # W
    ([(2, 3, 4, 5), (2, 3, 4)], r"\(2, 3, 4\)"),        # not 4-D
])
def test_output_shape_rejects_inputs_that_disagree_on_n_h_w(shapes, bad):
    with pytest.raises(ValueError, match=f"agree on N, H, W.*{bad}"):
        concat.output_shape(shapes)


def test_output_shape_rejects_no_inputs():
    with pytest.raises(ValueError, match="at least one input"):
        concat.output_shape([])


def test_forward_matches_loop_oracle():
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((2, c, 3, 4)) for c in (2, 1, 3)]
    np.testing.assert_array_equal(concat.forward_ref(xs), loop_concat(xs))


def test_reference_backward_returns_copies_not_views_of_dy():
    dy = np.random.default_rng(1).standard_normal((2, 6, 3, 4))
    want = [dy[:, :2].copy(), dy[:, 2:3].copy(), dy[:, 3:].copy()]
    dxs = concat.backward_ref(dy, [2, 1, 3])
    for dx in dxs:
        assert not np.shares_memory(dx, dy)
        assert dx.flags.c_contiguous
    dy[...] = 0  # the gradients must not change with the buffer they came from
    for i, (dx, w) in enumerate(zip(dxs, want)):
        np.testing.assert_array_equal(dx, w, err_msg=f"dx[{i}]")


@edges
@given(cases(), st.integers(0, 2**32 - 1))
def test_reference_gradient(case, seed):
    N, channels, H, W = case
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((N, c, H, W)) for c in channels]
    directional_check(lambda *xs: concat.forward_ref(list(xs)),
                      lambda *args: concat.backward_ref(args[-1], channels),
                      xs, wrt=list(range(len(xs))), rng=rng)


def check_kernels(N, channels, H, W, seed, **launch):
    """A copy is exact: the kernels must give the reference bit for bit."""
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((N, c, H, W)).astype(np.float32) for c in channels]
    y = empty((N, sum(channels), H, W))
    concat.forward([dev(x) for x in xs], y, **launch)
    np.testing.assert_array_equal(host(y), concat.forward_ref(xs), "forward")
    dy = rng.standard_normal((N, sum(channels), H, W)).astype(np.float32)
    dxs = [empty(x.shape) for x in xs]
    concat.backward(dev(dy), dxs, **launch)
    for i, (dx, want) in enumerate(zip(dxs, concat.backward_ref(dy, channels))):
        np.testing.assert_array_equal(host(dx), want, f"backward dx[{i}]")


@kernel_settings
@edges
@given(cases(), st.integers(0, 2**32 - 1))
def test_kernels_match_reference(case, seed):
    check_kernels(*case, seed)


def test_kernels_over_several_blocks():
    """Blocks of 32 threads, one launch per input: x_i of 70, 140 and 210 elements take 3,
    5 and 7 blocks, the last partial. A kernel that took its index from threadIdx alone
    would leave all but each input's first 32 elements unwritten (NaN)."""
    with split_on_every_axis():
        check_kernels(2, [1, 2, 3], 5, 7, 3, threads=32)


def test_an_input_with_no_channels_is_not_launched():
    """A 0-channel input adds nothing to y and gets an empty dx; launching it would be a
    grid of 0 blocks, which CUDA rejects."""
    with recording() as launches:
        check_kernels(1, [2, 0, 1], 2, 3, 5)
    assert [launch.kernel for launch in launches] == \
        ["concat_forward_v1"] * 2 + ["concat_backward_v1"] * 2


def test_launchers_reject_bad_arguments():
    xs = [dev(np.zeros((2, 2, 3, 3))), dev(np.zeros((2, 3, 3, 3)))]
    with pytest.raises(ValueError, match=r"concat y has shape \(2, 4, 3, 3\).*expected "
                                         r"\(2, 5, 3, 3\)"):
        concat.forward(xs, empty((2, 4, 3, 3)))
    with pytest.raises(ValueError, match=r"agree on N, H, W.*\(2, 3, 3, 4\)"):
        concat.forward([xs[0], dev(np.zeros((2, 3, 3, 4)))], empty((2, 5, 3, 3)))
    with pytest.raises(ValueError, match=r"concat dy has shape \(2, 6, 3, 3\).*expected "
                                         r"\(2, 5, 3, 3\)"):
        concat.backward(dev(np.zeros((2, 6, 3, 3))), [empty((2, 2, 3, 3)), empty((2, 3, 3, 3))])
    with pytest.raises(ValueError, match=r"agree on N, H, W.*\(1, 3, 3, 3\)"):
        concat.backward(dev(np.zeros((2, 5, 3, 3))), [empty((2, 2, 3, 3)), empty((1, 3, 3, 3))])
    with pytest.raises(ValueError, match=r"concat x\[1\] must be float32"):
        concat.forward([xs[0], dev(np.zeros((2, 3, 3, 3)), np.float64)], empty((2, 5, 3, 3)))
    with pytest.raises(ValueError, match=r"concat dx\[0\] must have 4 dimensions"):
        concat.backward(dev(np.zeros((2, 5, 3, 3))), [empty((2, 2, 9)), empty((2, 3, 3, 3))])
    with pytest.raises(ValueError, match=r"concat y must be C-contiguous"):
        concat.forward(xs, empty((2, 10, 3, 3))[:, ::2])


def test_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((2, c, 3, 4)) for c in (1, 3, 0, 2)]
    dy = rng.standard_normal((2, 6, 3, 4))
    ts = [torch.tensor(x, requires_grad=True) for x in xs]
    y = torch.cat(ts, dim=1)
    y.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(concat.forward_ref(xs), y.detach().numpy())
    for i, (dx, t) in enumerate(zip(concat.backward_ref(dy, [1, 3, 0, 2]), ts)):
        np.testing.assert_array_equal(dx, t.grad.numpy(), f"dx[{i}]")
