"""One process of a test job: `mpiexec -n R python tests/_mpi_worker.py [options] -- ARGS`
runs `python -m minivgg.train ARGS` (or `--evaluate`: minivgg.evaluate) as that process,
with what tests/test_distributed.py needs to watch it:

    --watch-writes DIR   on ranks other than 0, any write, rename or removal under DIR
                         raises (and so ends the job with one line: the test sees it)
    --digest FILE        after training, rank 0 writes every rank's SHA-256 of its weights,
                         velocities and dropout counters to FILE (they must be equal)
    --fail RANK:STEP     RANK raises RuntimeError in step STEP (1-based, counted over the run)
    --nan RANK:STEP      RANK's loss is NaN in step STEP
    --report-mpi FILE    write to FILE whether mpi4py was imported (the one-process run
                         must not import it)
    --perturb            ranks other than 0 double their initial weights and velocities
                         just before rank 0's are broadcast (which must undo it)
"""
import argparse
import hashlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def rank_of_environment():
    from minivgg import distributed
    return distributed.launched()[1]


def watch_writes(folder, rank):
    """An audit hook that refuses every change under `folder` (rank 0 alone writes)."""
    folder = os.path.abspath(folder)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def inside(path):
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, (str, os.PathLike)):
            return False  # a file descriptor
        return os.path.abspath(path).startswith(folder + os.sep) or \
            os.path.abspath(path) == folder

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                (isinstance(flags, int) and flags & write_flags)
        elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.chmod",
                       "os.truncate", "os.link", "os.symlink"):
            path, writes = args[0], True
            if event == "os.rename" and not inside(path):
                path = args[1]
        else:
            return
        if writes and inside(path):
            raise PermissionError(f"rank {rank} changed {path} ({event}): rank 0 alone writes")
    sys.addaudithook(hook)


def at_step(spec):
    rank, step = (int(v) for v in spec.split(":"))
    return rank, step


def inject(args, rank):
    """Patch the trainer: a failure or a NaN loss on one rank, at one step."""
    from minivgg import trainer as trainer_mod
    original = trainer_mod.Trainer._forward_backward

    def forward_backward(self, x, targets, first):
        step = self.step + 1  # the step being taken
        if args.fail and at_step(args.fail) == (rank, step):
            raise RuntimeError(f"injected failure at step {step}")
        loss = original(self, x, targets, first)
        if args.nan and at_step(args.nan) == (rank, step) and loss is not None:
            loss.data[...] = float("nan")
        return loss
    trainer_mod.Trainer._forward_backward = forward_backward


def record_digests(path):
    """After run(): every rank's digest of its state, gathered; rank 0 writes them."""
    import numpy as np
    from minivgg import backend, nn
    from minivgg import trainer as trainer_mod
    original = trainer_mod.Trainer.run

    def run(self):
        status = original(self)
        h = hashlib.sha256()
        for a in [p.data for p in self.model.parameters()] + list(self.opt.velocity.values()):
            h.update(np.ascontiguousarray(backend.to_host(a)).tobytes())
        for _, m in self.model.named_modules():
            if isinstance(m, nn.Dropout):
                h.update(f"{m.seed},{m.calls};".encode())
        digests = self.world.allgather(h.hexdigest())
        if self.world.is_root:
            with open(path, "w") as f:
                json.dump(digests, f)
        return status
    trainer_mod.Trainer.run = run


def perturb_before_broadcast(rank):
    from minivgg import distributed
    original = distributed.MPIWorld.broadcast_state

    def broadcast_state(self, model, optimizer):
        if rank != 0:
            for p in model.parameters():
                p.data *= 2
            for v in optimizer.velocity.values():
                v += 1
        return original(self, model, optimizer)
    distributed.MPIWorld.broadcast_state = broadcast_state


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--watch-writes")
    p.add_argument("--digest")
    p.add_argument("--fail")
    p.add_argument("--nan")
    p.add_argument("--report-mpi")
    p.add_argument("--perturb", action="store_true")
    p.add_argument("--evaluate", action="store_true")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    args = p.parse_args()
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    rank = rank_of_environment()
    if args.watch_writes and rank != 0:
        watch_writes(args.watch_writes, rank)
    if args.fail or args.nan:
        inject(args, rank)
    if args.digest:
        record_digests(args.digest)
    if args.perturb:
        perturb_before_broadcast(rank)
    from minivgg.errors import run_cli
    if args.evaluate:
        from minivgg.evaluate import main as command
    else:
        from minivgg.train import main as command
    try:
        status = run_cli(command, rest)
    finally:
        if args.report_mpi:
            with open(args.report_mpi, "w") as f:
                json.dump({"mpi4py": "mpi4py" in sys.modules}, f)
    return status


if __name__ == "__main__":
    sys.exit(main())
