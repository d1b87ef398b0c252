"""SGD with momentum and weight decay, and the learning-rate schedule of paper sect. 3.1.

The update (Krizhevsky et al. 2012, which sect. 3.1 follows), for every parameter w with
gradient g and velocity v:

    v <- momentum * v - weight_decay * lr * w - lr * g
    w <- w + v

PyTorch's SGD keeps v' = momentum * v' + (g + weight_decay * w) and steps w <- w - lr * v'.
While lr is constant the two give identical weights (v = -lr * v'). They differ only when
lr changes: here the old velocity keeps its old step size, PyTorch rescales it at once.

Weight decay: the paper says only "the L2 penalty multiplier set to 5e-4". Caffe's
reference ImageNet recipe (CaffeNet, after Krizhevsky et al.; the authors' code derives
from Caffe, sect. 3.3) gives biases decay_mult 0, and so do we: decaying a bias pulls a
layer's offset towards zero without limiting the model's capacity, which is what the
penalty is for. `decay_biases=True` decays them too (PyTorch's default).

Both steps run as one fused in-place kernel per parameter (kernels/sgd.py) on cuda/sim,
and as its NumPy reference on cpu.
"""
import numpy as np

from kernels import sgd as sgd_k
from minivgg import backend


class SGD:
    """Momentum SGD over named parameters (name -> Tensor with .data and .grad).

    lr_scale {name: factor}: that parameter learns at lr * factor, the rest at lr. Fine-
    tuning (minivgg.finetune) gives the layers copied from a trained net a smaller rate
    than the new last layer, or 0, which freezes them: never updated, decay included.
    """

    def __init__(self, named_parameters, lr=1e-2, momentum=0.9, weight_decay=5e-4,
                 decay_biases=False, lr_scale=None):
        self.params = dict(named_parameters)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.decay_biases = decay_biases
        self.lr_scale = dict(lr_scale or {})
        xp = backend.xp()
        self.velocity = {n: xp.zeros_like(p.data) for n, p in self.params.items()}

    def _decay(self, name):
        return self.weight_decay if (self.decay_biases or not name.endswith("bias")) else 0.0

    def step(self):
        """Update every parameter that has a gradient, in place."""
        kernels = backend.device().runs_kernels
        for name, p in self.params.items():
            scale = self.lr_scale.get(name, 1.0)
            if p.grad is None or scale == 0:
                continue
            update = sgd_k.step if kernels else sgd_k.step_ref
            update(p.data, p.grad, self.velocity[name], self.lr * scale, self.momentum,
                   self._decay(name))

    def zero_grad(self):
        for p in self.params.values():
            p.grad = None

    def state_dict(self):
        """Velocities as host copies ('velocity.<param name>') and the hyper-parameters.

        Copies on every device (synchronises on cuda): later steps do not change them."""
        state = {f"velocity.{n}": backend.to_host(v, copy=True)
                 for n, v in self.velocity.items()}
        state.update(lr=np.float64(self.lr), momentum=np.float64(self.momentum),
                     weight_decay=np.float64(self.weight_decay))
        return state

    def load_state_dict(self, state):
        """Velocities (host or device arrays) copied in place, and the hyper-parameters."""
        for n, v in self.velocity.items():
            backend.copy_into(v, state[f"velocity.{n}"])
        self.lr = float(state["lr"])
        self.momentum = float(state["momentum"])
        self.weight_decay = float(state["weight_decay"])


class PlateauSchedule:
    """Divide the learning rate by `factor` when validation accuracy stops improving.

    Sect. 3.1: "decreased by a factor of 10 when the validation set accuracy stopped
    improving. In total, the learning rate was decreased 3 times". Improving means beating
    the best accuracy so far by more than `threshold`; after `patience` epochs without it,
    the rate drops and the count restarts. After `max_decreases` drops it stays put, and
    `finished` turns True once it would have dropped again (training may stop).
    """

    def __init__(self, optimizer, factor=0.1, patience=1, max_decreases=3, threshold=1e-4):
        self.optimizer, self.factor, self.patience = optimizer, factor, patience
        self.max_decreases, self.threshold = max_decreases, threshold
        self.best, self.bad_epochs, self.decreases, self.finished = -np.inf, 0, 0, False

    def step(self, val_accuracy):
        """Record one epoch's validation accuracy; returns True when the rate was lowered."""
        if val_accuracy > self.best + self.threshold:
            self.best, self.bad_epochs = val_accuracy, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs < self.patience:
            return False
        self.bad_epochs = 0
        if self.decreases >= self.max_decreases:
            self.finished = True
            return False
        self.optimizer.lr *= self.factor
        self.decreases += 1
        return True

    def state_dict(self):
        return {"best": np.float64(self.best), "bad_epochs": np.int64(self.bad_epochs),
                "decreases": np.int64(self.decreases), "finished": np.bool_(self.finished)}

    def load_state_dict(self, state):
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
        self.decreases = int(state["decreases"])
        self.finished = bool(state["finished"])
