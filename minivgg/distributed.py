"""Data-parallel training on several devices, as in paper sect. 3.3, through MPI.

Sect. 3.3: "Multi-GPU training exploits data parallelism, and is carried out by splitting
each batch of training images into several GPU batches, processed in parallel on each GPU.
After the GPU batch gradients are computed, they are averaged to obtain the gradient of
the full batch. Gradient computation is synchronous across the GPUs, so the result is
exactly the same as when training on a single GPU."

One process per device, started by an MPI launcher (mpirun, mpiexec, srun). Every step:

    slice      rank r of R takes samples shard_range(B, r, R) of the global batch of B
               (data/loader.py: the first B % R ranks take one more);
    local      forward and backward on its slice: the gradient g_r of its slice's mean loss;
    all-reduce one collective over ONE flat buffer holding every gradient, each scaled by
               n_r / B first: sum_r (n_r / B) g_r is the gradient of the whole batch's mean
               loss, for uneven slices too;
    update     every rank applies the same SGD step to the same weights.

The same weights as one process, because nothing random depends on the rank: the epoch's
order comes from (seed, epoch), each sample's crop, scale, flip and colour shift from
(seed, epoch, dataset index) (data/loader.py), and dropout masks from (seed, call, global
element index) -- each rank passes the index of its slice's first sample (nn.Dropout's
first_sample, kernels/dropout.py's offset). What differs is only the order in which float32
numbers are added: the batch's per-sample contributions are summed in R pieces and then
across ranks. tests/test_distributed.py runs 2 and 3 processes against one: after four
steps the weights agree to ~1e-6 of their size. (Over a long run that difference grows as
any rounding difference does in training -- as one weight changed by one ulp in a single
process grows too: the same gradient at every step, not the same bits after an epoch.)

Transports: MPI's Allreduce on NumPy buffers (devices cpu and sim); on cuda NCCL through
CuPy (one GPU per process, picked by the local rank; the NCCL id is broadcast over MPI; the
all-reduce is queued on CuPy's current stream, where the kernels run, so no host round
trip). Rank 0 alone prints and writes files. An exception on any rank ends the whole job
(MPI Abort) with one line and a non-zero exit status instead of leaving the others waiting
in a collective.

Without an MPI launcher, init() returns World(): one process, no mpi4py import, and the
training loop behaves exactly as it does without this module.
"""
import contextlib
import os
import shutil
import subprocess
import sys
import time
import traceback

import numpy as np

from minivgg import backend
from minivgg.data.loader import shard_range
from minivgg.errors import UserError

MODES = ("auto", "mpi", "none")

# What the launchers put in each process's environment: (size, rank, local rank). Open MPI;
# MPICH's and Intel MPI's Hydra; MVAPICH; Slurm's srun (SLURM_STEP_NUM_TASKS is set by
# srun only, not in the batch script around it).
LAUNCHER_ENV = [("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"),
                ("PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID"),
                ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_LOCAL_RANK"),
                ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "SLURM_LOCALID")]

# A failing rank other than 0 waits this long before it prints its line and aborts: when
# every rank fails alike (a bad flag, a missing file), rank 0's abort ends the others
# first, and the user reads one line, not R.
ABORT_GRACE_S = 0.5
# After its line, a failing rank waits this long before MPI Abort: the launcher forwards
# each rank's stderr through a pipe, and an abort that comes at once can tear the job down
# before the line has been read out of it (seen once in CI: the job ended, with no line).
DRAIN_S = 0.3


def launched():
    """(size, rank, local rank) from the launcher's environment; (1, 0, 0) without one.
    The local rank is None when the launcher does not say it."""
    for size, rank, local in LAUNCHER_ENV:
        if size in os.environ:
            try:
                local_rank = os.environ.get(local)
                return (int(os.environ[size]), int(os.environ.get(rank, 0)),
                        None if local_rank is None else int(local_rank))
            except ValueError:
                continue
    return 1, 0, 0


def add_argument(parser):
    """The --distributed flag of the commands that can run on several processes."""
    parser.add_argument(
        "--distributed", choices=MODES, default="auto",
        help="data parallelism over MPI processes (sect. 3.3; start with mpirun -n R, "
             "mpiexec or srun): auto = when an MPI launcher started several processes; "
             "mpi = always (mpi4py required); none = one process, whatever the launcher")


def init(mode="auto", gpu=True):
    """The World this process is part of. mode: auto | mpi | none (see add_argument).

    gpu: the run may use a GPU; each process is then shown only its own, the local
    rank's (CUDA_VISIBLE_DEVICES), before anything initialises CUDA."""
    size, _, local = launched()
    if mode == "none" or (mode == "auto" and size <= 1):
        return World()
    if gpu and local is not None:  # before MPI_Init, which may itself touch a GPU
        pin_gpu(local)
    try:
        from mpi4py import MPI
    except ImportError:
        raise UserError(f"started by an MPI launcher ({size} processes) but mpi4py is not "
                        "installed: pip install -e '.[mpi]' (or --distributed none)") from None
    world = MPIWorld(MPI.COMM_WORLD)
    if gpu and local is None:  # the launcher did not say: MPI's count of this node's ranks
        pin_gpu(world.local_rank)
    return world


def pin_gpu(local_rank):
    """One GPU per process (sect. 3.3: a GPU batch per GPU): the local rank's.

    Left alone when the launcher already gave this process a single GPU (Slurm's
    --gpus-per-task=1); a list of several is narrowed to its local_rank-th entry."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(local_rank)
        return
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if len(ids) <= 1:
        return
    if local_rank >= len(ids):
        raise UserError(f"{local_rank + 1} or more processes on this node but "
                        f"CUDA_VISIBLE_DEVICES={visible} lists {len(ids)} GPUs: start one "
                        "process per GPU")
    os.environ["CUDA_VISIBLE_DEVICES"] = ids[local_rank]


def mpiexec_command(n):
    """[mpiexec, its flags, -n, n]: the launcher beside this Python (the [mpi] extra's) or on
    PATH, for the benchmark and the tests that start jobs themselves. Open MPI needs
    --oversubscribe for more processes than cores, and --allow-run-as-root as root;
    MPICH's Hydra needs neither. A UserError says why there is none."""
    try:
        import importlib.util
        if importlib.util.find_spec("mpi4py") is None:
            raise ImportError
    except ImportError:
        raise UserError("mpi4py is not installed: pip install -e '.[mpi]'") from None
    here = os.path.dirname(sys.executable)
    exe = shutil.which("mpiexec", path=here + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        raise UserError("no mpiexec found: pip install -e '.[mpi]' (or load your MPI)")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    flags = []
    if "Open MPI" in version or "OpenRTE" in version or "prte" in version.lower():
        flags = ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return [exe, *flags, "-n", str(int(n))]


class World:
    """One process: every collective is the identity. The interface the trainer, the
    loader and evaluate use, whether or not MPI is there."""

    size, rank, local_rank = 1, 0, 0

    @property
    def is_root(self):
        return self.rank == 0

    def describe(self):
        return "one process"

    def shard(self, n):
        """[start, stop) of this process's share of n items (images to evaluate)."""
        return shard_range(n, self.rank, self.size)

    def use_device(self, dev):
        """After backend.set_device: set up the transport for dev's arrays."""

    def average_gradients(self, params, weight):
        """Replace each parameter's .grad with the whole batch's gradient (see MPIWorld)."""

    def broadcast_state(self, model, optimizer):
        """Give every rank rank 0's weights and momentum buffers."""

    def allgather(self, obj):
        return [obj]

    def bcast(self, obj):
        return obj

    def sum(self, values):
        """{name: number}: each value summed over the ranks (host numbers; synchronises)."""
        return {k: backend.scalar(v) for k, v in values.items()}

    def any(self, flag):
        return bool(flag)

    def gather_rows(self, rows):
        """Rank 0: every rank's rows, in rank order; elsewhere None."""
        return rows

    def check_same(self, what, value):
        """A UserError unless every rank holds the same value."""

    def barrier(self):
        pass

    @contextlib.contextmanager
    def guard(self):
        """Exceptions pass through: run_cli reports them as it always has."""
        yield


class MPIWorld(World):
    """R processes of an MPI job (mpi4py's COMM_WORLD)."""

    def __init__(self, comm):
        self.comm, self.size, self.rank = comm, comm.Get_size(), comm.Get_rank()
        from mpi4py import MPI
        self.MPI = MPI
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)  # the processes on this machine
        self.local_rank = node.Get_rank()
        node.Free()
        self._transport, self._buffer = None, None
        if self.rank != 0:  # rank 0 alone prints (errors still reach stderr)
            sys.stdout = open(os.devnull, "w")

    def describe(self):
        library = " ".join(self.MPI.Get_library_version().split("\n")[0].split())
        how = self._transport.name if self._transport else "MPI"
        return f"{self.size} processes ({library}); gradients all-reduced by {how}"

    # ---- set-up ---------------------------------------------------------------------------
    def use_device(self, dev):
        self.check_same("device", dev.name)
        self._transport = _Nccl(self.comm) if dev.name == "cuda" else _HostMPI(self.comm,
                                                                               self.MPI)

    def broadcast_state(self, model, optimizer):
        """Rank 0's weights and velocities to every rank, through the host (once, at set-up:
        after initialisation, --resume or --init-from)."""
        arrays = [p.data for p in model.parameters()] + list(optimizer.velocity.values())
        for a in arrays:
            host = np.ascontiguousarray(backend.to_host(a, copy=True))
            self.comm.Bcast(host, root=0)
            if self.rank != 0:
                backend.copy_into(a, host)

    # ---- every step -----------------------------------------------------------------------
    def average_gradients(self, params, weight):
        """params: the trainable Parameters, in the same order on every rank; weight: this
        rank's share of the batch, n_r / B. Packs weight * grad of every parameter into one
        flat buffer (zeros for a rank whose slice was empty), all-reduces it once, and
        leaves each .grad a view of its part: the gradient of the whole batch's mean loss.
        No host synchronisation (on cuda the all-reduce is queued on the kernels' stream).
        """
        buf = self._flat_buffer(params)
        at = 0
        for p in params:
            n = int(p.data.size)
            if p.grad is None:
                buf[at:at + n] = 0
            else:
                buf[at:at + n] = p.grad.reshape(-1)
            at += n
        if weight != 1:
            buf *= np.float32(weight)
        self._transport.allreduce(buf)
        at = 0
        for p in params:
            n = int(p.data.size)
            p.grad = buf[at:at + n].reshape(p.data.shape)
            at += n

    def _flat_buffer(self, params):
        total = sum(int(p.data.size) for p in params)
        if self._buffer is None or self._buffer.size != total:
            self._buffer = backend.xp().empty(total, dtype=np.float32)
        return self._buffer

    # ---- logging points and set-up: small host collectives --------------------------------
    def allgather(self, obj):
        return self.comm.allgather(obj)

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def sum(self, values):
        mine = {k: backend.scalar(v) for k, v in values.items()}
        everyone = self.comm.allgather(mine)
        return {k: sum(e[k] for e in everyone) for k in mine}

    def any(self, flag):
        return any(self.comm.allgather(bool(flag)))

    def gather_rows(self, rows):
        parts = self.comm.gather(rows, root=0)
        return np.concatenate(parts) if self.rank == 0 else None

    def check_same(self, what, value):
        values = self.comm.allgather(value)
        if any(v != values[0] for v in values):
            differ = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
            raise UserError(f"the processes disagree on the {what} ({differ})")

    def barrier(self):
        self.comm.Barrier()

    # ---- failure --------------------------------------------------------------------------
    @contextlib.contextmanager
    def guard(self):
        """Any exception on this rank ends the whole job: one line, then MPI Abort with the
        status one process would exit with (2 bad input, 130 Ctrl-C, 1 anything else).
        Without this, the other ranks would wait forever in their next collective."""
        try:
            yield
        except SystemExit as e:
            if e.code not in (None, 0):
                self.abort(e.code if isinstance(e.code, int) else 1, str(e.code))
            raise
        except BaseException as e:  # noqa: B036 (Ctrl-C too: the others must not hang)
            self.abort(*_status(e))

    def abort(self, status, line, trace=None):
        if self.rank != 0:
            time.sleep(ABORT_GRACE_S)
            line = f"rank {self.rank} of {self.size}: {line}"
        if trace:
            print(trace, file=sys.stderr, end="")
        sys.stdout.flush()
        print(f"error: {line}", file=sys.stderr, flush=True)
        time.sleep(DRAIN_S)
        self.comm.Abort(status)


def _status(e):
    """(exit status, one line, traceback or None) for an exception that ends a rank."""
    if isinstance(e, UserError):
        return 2, str(e), None
    if isinstance(e, KeyboardInterrupt):
        return 130, "interrupted", None
    # A bug: its traceback too, as one process would show it.
    return 1, f"{type(e).__name__}: {e}", "".join(traceback.format_exception(e))


class _HostMPI:
    """MPI_Allreduce in place on a NumPy buffer (devices cpu and sim)."""

    name = "MPI"

    def __init__(self, comm, MPI):
        self.comm, self.MPI = comm, MPI

    def allreduce(self, buf):
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)


class _Nccl:
    """NCCL's all-reduce on a CuPy buffer, through CuPy (cupy.cuda.nccl).

    Rank 0 makes the NCCL unique id, MPI broadcasts it, every rank joins the communicator
    on its own GPU (pin_gpu). The all-reduce is queued on CuPy's current stream, the
    stream the kernels launch on (kernels/common.py, stream_of): it runs after the backward
    kernels and before the SGD kernels, with no host synchronisation and no copy to the
    host. (Not run on a machine with several GPUs here: ours have at most one.)"""

    name = "NCCL"

    def __init__(self, comm):
        try:
            from cupy.cuda import nccl
        except ImportError as e:
            raise UserError(f"device cuda on several processes needs NCCL in CuPy ({e}): "
                            "pip install nvidia-nccl-cu12 (or -cu13)") from None
        self.nccl = nccl
        uid = nccl.get_unique_id() if comm.Get_rank() == 0 else None
        uid = comm.bcast(uid, root=0)
        self.comm = nccl.NcclCommunicator(comm.Get_size(), uid, comm.Get_rank())

    def allreduce(self, buf):
        import cupy
        stream = cupy.cuda.get_current_stream().ptr
        self.comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self.nccl.NCCL_FLOAT32,
                            self.nccl.NCCL_SUM, stream)
