"""SGD with momentum and weight decay against steps computed by hand; the schedule."""
import numpy as np
import pytest

from minivgg import backend
from minivgg.optim import SGD, PlateauSchedule
from minivgg.tape import Tensor


@pytest.fixture(params=["cpu", "sim"])
def device(request):
    return backend.set_device(request.param)


def param(values):
    return Tensor(backend.to_device(np.array(values)), requires_grad=True)


def test_two_steps_by_hand(device):
    w, b = param([1.0, -2.0]), param([0.5])
    opt = SGD([("layer.weight", w), ("layer.bias", b)], lr=0.1, momentum=0.9,
              weight_decay=0.01)
    w.grad, b.grad = backend.to_device(np.array([0.5, 0.5])), backend.to_device(np.array([1.0]))
    opt.step()
    # v = 0.9*0 - 0.01*0.1*w - 0.1*g = [-0.001 - 0.05, 0.002 - 0.05] = [-0.051, -0.048]
    np.testing.assert_allclose(backend.to_host(w.data), [0.949, -2.048], rtol=1e-6)
    # the bias is not decayed: v = -0.1 * 1.0
    np.testing.assert_allclose(backend.to_host(b.data), [0.4], rtol=1e-6)
    opt.step()  # same gradients
    # v = 0.9*[-0.051, -0.048] - 0.001*[0.949, -2.048] - 0.05 = [-0.096849, -0.091152]
    np.testing.assert_allclose(backend.to_host(w.data), [0.852151, -2.139152], rtol=1e-6)
    # bias: v = 0.9*(-0.1) - 0.1 = -0.19
    np.testing.assert_allclose(backend.to_host(b.data), [0.21], rtol=1e-6)


def test_decay_biases_option(device):
    b = param([1.0])
    opt = SGD([("b.bias", b)], lr=1.0, momentum=0.0, weight_decay=0.5, decay_biases=True)
    b.grad = backend.to_device(np.zeros(1))
    opt.step()
    np.testing.assert_allclose(backend.to_host(b.data), [0.5])


def test_parameters_without_gradient_are_left_alone(device):
    w = param([1.0])
    SGD([("w.weight", w)], lr=1.0).step()
    np.testing.assert_array_equal(backend.to_host(w.data), [1.0])


def test_optimizer_state_round_trip():
    backend.set_device("cpu")
    w = param([1.0, 2.0])
    opt = SGD([("w.weight", w)], lr=0.3)
    w.grad = np.ones(2, np.float32)
    opt.step()
    other = SGD([("w.weight", param([0.0, 0.0]))], lr=1.0)
    other.load_state_dict(opt.state_dict())
    assert other.lr == pytest.approx(0.3)
    np.testing.assert_array_equal(other.velocity["w.weight"], opt.velocity["w.weight"])


def test_schedule_divides_by_ten_three_times_then_finishes():
    backend.set_device("cpu")
    opt = SGD([("w.weight", param([0.0]))], lr=1e-2)
    sched = PlateauSchedule(opt, patience=1)
    history = []
    for acc in [0.1, 0.2, 0.2, 0.3, 0.3, 0.3, 0.4, 0.4]:
        sched.step(acc)
        history.append(opt.lr)
    expected = [1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-5, 1e-5, 1e-5]
    np.testing.assert_allclose(history, expected, rtol=1e-12)
    assert sched.decreases == 3 and sched.finished


def test_schedule_patience():
    backend.set_device("cpu")
    opt = SGD([("w.weight", param([0.0]))], lr=1.0)
    sched = PlateauSchedule(opt, patience=2)
    lowered = [sched.step(a) for a in [0.5, 0.5, 0.5, 0.6, 0.6]]
    assert lowered == [False, False, True, False, False]
    assert opt.lr == pytest.approx(0.1)


def test_state_dict_velocities_are_copies_and_load_writes_in_place(device):
    w = param([1.0, 2.0])
    opt = SGD([("w.weight", w)], lr=0.3)
    w.grad = backend.to_device(np.ones(2))
    opt.step()
    state = opt.state_dict()
    saved = state["velocity.w.weight"].copy()
    opt.step()  # moves the live velocity; the saved state must not follow
    np.testing.assert_array_equal(state["velocity.w.weight"], saved)
    other = SGD([("w.weight", param([0.0, 0.0]))], lr=1.0)
    held = other.velocity["w.weight"]
    other.load_state_dict(state)
    assert other.velocity["w.weight"] is held
    np.testing.assert_array_equal(backend.to_host(held), saved)
