"""Tensor and the autograd tape: micrograd (Karpathy's engine.py), for arrays.

Every op in ops.py makes its output Tensor with `Tensor(data, parents, op)` and then sets
`out._backward` to a closure, written right under the forward, that reads `out.grad` and
*adds* into each parent's `.grad` (a tensor used twice gets both contributions).
`loss.backward()` orders the graph topologically and calls the closures in reverse.

Arrays are NumPy or CuPy, whatever the current device uses; the tape only checks that a
gradient lives where its tensor does (backend.is_device_array).
"""
import contextlib

from minivgg import backend

_recording = True


@contextlib.contextmanager
def no_grad():
    """Evaluate without recording: outputs have no parents and no backward."""
    global _recording
    before, _recording = _recording, False
    try:
        yield
    finally:
        _recording = before


def is_recording():
    return _recording


class Tensor:
    """An array with a gradient slot and, when made by an op, the op's backward closure."""

    def __init__(self, data, parents=(), op="", requires_grad=False):
        self.data = data
        self.grad = None
        self.op = op
        # (a list, not a generator, for any(): 0.3 us less on every op's output)
        track = _recording and (requires_grad or any([p.requires_grad for p in parents]))
        self.requires_grad = track
        self._parents = tuple(parents) if track else ()
        self._backward = lambda: None

    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)

    def __repr__(self):
        return f"Tensor(shape={tuple(self.shape)}, op={self.op or 'leaf'!r})"

    def accumulate(self, g, op="", owned=False):
        """grad += g, checking g's shape and device: a wrong one is a bug in `op`'s backward.

        owned=True says g is a fresh buffer nobody else holds, so the first gradient can
        be kept as it is instead of copied.
        """
        if not self.requires_grad:
            return
        if g.shape != self.data.shape:
            raise ValueError(f"{op or 'backward'}: gradient of shape {tuple(g.shape)} "
                             f"for a tensor of shape {tuple(self.data.shape)}")
        if backend.is_device_array(g) != backend.is_device_array(self.data):
            raise ValueError(f"{op or 'backward'}: gradient on the {backend.location(g)} for a "
                             f"tensor on the {backend.location(self.data)}")
        if self.grad is None:
            self.grad = g if owned else g.copy()
        else:
            self.grad += g

    def zero_grad(self):
        self.grad = None

    def backward(self, grad=None):
        """Backpropagate from this tensor (a one-element loss unless `grad` is given)."""
        order, seen = [], set()

        def visit(t):  # depth-first: a tensor goes after everything it depends on
            if id(t) not in seen:
                seen.add(id(t))
                for p in t._parents:
                    visit(p)
                order.append(t)

        visit(self)
        if grad is None:
            if self.data.size != 1:
                raise ValueError(f"backward() needs a gradient for a tensor of shape "
                                 f"{tuple(self.shape)}; only one-element losses are implicit")
            grad = backend.array_module(self.data).ones_like(self.data)
        self.accumulate(grad, "backward()")
        for t in reversed(order):
            if t.requires_grad:  # an op's output that needs no gradient has none to pass on
                t._backward()
        for t in order:  # free the graph, as PyTorch does by default (see _spent)
            if t._parents:
                t._parents, t._backward = (), _spent
        order.clear()  # `visit` refers to itself, so its cell (and `order`) outlive the call


def _spent():
    """The backward of a tensor whose graph was already backpropagated and freed.

    Each op's closure refers to its own output, so a graph is a reference cycle: without
    this, a finished step's activations (GPU memory) wait for Python's cycle collector."""
    raise RuntimeError("backward() through a graph that was already backpropagated; "
                       "run the forward pass again")
