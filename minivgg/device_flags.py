"""The device flags every command that runs a net shares: --device is each command's own;
--threads and --blas-threads (the cpu device's threads) and the one "device: ..." line
the command prints come from here, so `minivgg.train`, `localise`, `evaluate`, `predict`,
`features extract` and `visualise` set the cpu device up the same way.

    add_thread_arguments(parser)   --threads, --blas-threads
    start_device(args)             set args.device (and on cpu its threads); print the line

The cpu device's allocator setting (host_memory.py) comes with backend.set_device."""
from minivgg import backend
from minivgg.errors import UserError


def add_thread_arguments(p):
    """--threads and --blas-threads: the cpu device's threads (start_device sets them)."""
    p.add_argument("--threads", type=int, default=1,
                   help="cpu device: threads the compiled loops run on "
                        "(kernels/threads.py; 0: one a core); above 1, NumPy's BLAS runs "
                        "one thread a call, and some sums (dw, some layers' forward) are "
                        "added in another order, which rounds differently")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="cpu device, --threads 1: threads of NumPy's BLAS (0: leave as they "
                        "are). One by default: the loading threads need the other cores, "
                        "and idle BLAS threads spin on them (needs threadpoolctl)")


def limit_blas_threads(n):
    """Limit NumPy's BLAS to n threads for the rest of the process; a line saying so.

    On the 2-core machine, loaded, one epoch of the default run went from 170-270 to
    900-970 images/s with one BLAS thread instead of two: OpenBLAS's threads spin while
    they wait for work, on the cores the loader's threads (and everything else) need."""
    if n <= 0:
        return "BLAS threads as they are"
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return "BLAS threads not limited (threadpoolctl is not installed)"
    threadpool_limits(limits=n, user_api="blas")  # kept: the process lives for the run
    return f"{n} BLAS thread{'s' if n > 1 else ''}"


def cpu_threads(threads, blas_threads):
    """The cpu device's threads: its compiled loops on `threads` (kernels/threads.py; BLAS
    then one thread a call), or, at 1, NumPy's BLAS at `blas_threads`; a line saying so."""
    if threads == 1:
        return limit_blas_threads(blas_threads)
    from kernels import threads as cpu
    n = cpu.set_threads(threads)
    return f"{n} thread{'s' if n > 1 else ''} for the convs' loops, 1 BLAS thread a call"


def start_device(args):
    """Set args.device; on the cpu device also its threads (args.threads, args.blas_threads:
    add_thread_arguments). Prints "device: NAME (why)[; threads]". Returns the Device."""
    if args.threads < 0:
        raise UserError(f"--threads must be at least 0 (0: one a core), got {args.threads}")
    dev = backend.set_device(args.device)
    cpu = (f"; {cpu_threads(args.threads, args.blas_threads)}" if not dev.runs_kernels
           else "")
    print(f"device: {dev.name} ({dev.reason}){cpu}")
    return dev
