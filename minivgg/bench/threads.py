"""Thread counts on the CPU: set them for NumPy's BLAS and PyTorch together, and say which
libraries ran with how many (threadpoolctl reads them from the loaded libraries)."""
import contextlib
import re


def threadpoolctl():
    """The threadpoolctl module, or None when it is not installed."""
    try:
        import threadpoolctl as tpc
        return tpc
    except ImportError:
        return None


@contextlib.contextmanager
def limited(n, torch):
    """n threads on each side, then restored: the cpu device's (kernels/threads.py: its
    compiled loops on n threads, NumPy's BLAS one thread a call, so that no idle BLAS
    thread spins on the cores PyTorch's threads need), the OpenMP runtimes' and PyTorch's
    intra-op pool. n None: leave everything as it is (threadpoolctl missing)."""
    from kernels import threads as cpu
    tpc = threadpoolctl()
    if n is None or tpc is None:
        yield
        return
    before = torch.get_num_threads() if torch is not None else None
    ours_before = cpu.threads()
    # (set_threads limits BLAS to 1 for good; the context here puts it back afterwards)
    with tpc.threadpool_limits(limits=n, user_api="openmp"), \
            tpc.threadpool_limits(limits=1, user_api="blas"):
        cpu.set_threads(n)
        if torch is not None:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            cpu.set_threads(ours_before)
            if torch is not None:
                torch.set_num_threads(before)


def ours_side():
    """'2 threads (kernels/threads.py: ...), NumPy OpenBLAS ...: 1 threads a call', read
    now (inside `limited`, the counts it set)."""
    from kernels import threads as cpu
    n = cpu.threads()
    return (f"{n} thread{'s' if n > 1 else ''} (kernels/threads.py: the compiled loops' "
            f"outer loop shared, Numba's {cpu.layer()} threading layer), NumPy "
            f"{numpy_side()} a call")


def numpy_side():
    """'OpenBLAS 0.3.31 (pthreads, SkylakeX kernels): 2 threads', read now (inside
    `limited`, the limit)."""
    tpc = threadpoolctl()
    if tpc is None:
        return "BLAS threads unknown (threadpoolctl not installed)"
    libs = [i for i in tpc.threadpool_info() if i["user_api"] == "blas"
            and "numpy" in i["filepath"].replace("\\", "/")] or \
        [i for i in tpc.threadpool_info() if i["user_api"] == "blas"]
    return "; ".join(_describe(i) for i in libs) or "no BLAS library found by threadpoolctl"


def conv_gemm_side():
    """Which GEMM the cpu device's unrolled convs (filters other than 3x3 and 1x1, strides)
    multiply with here (kernels/gemm.py decides)."""
    from kernels import gemm
    narrower, avx512 = gemm.machine()
    if narrower:
        return ("kernels/gemm.py's compiled loop where the dot products are long (NumPy's "
                "BLAS runs narrower vectors than this CPU has), NumPy's BLAS for the rest")
    if avx512:
        return ("NumPy's BLAS, and kernels/gemm.py's compiled loop for a few very long dot "
                "products (the \"rows\" unrolling's dw)")
    return "NumPy's BLAS"


def _describe(info):
    how = [info.get("threading_layer")]
    if info.get("architecture"):  # which of its kernels OpenBLAS runs on this CPU
        how.append(f"{info['architecture']} kernels")
    how = ", ".join(h for h in how if h)
    name = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS"}.get(info["internal_api"],
                                                                       info["internal_api"])
    return (f"{name} {info.get('version') or ''}".strip()
            + (f" ({how})" if how else "") + f": {info['num_threads']} threads")


# OpenBLAS picks its kernels for the CPU it finds, unless these choose for it: some
# machines set them because older OpenBLAS builds fail on their processors, and a current
# one then runs slower kernels (on an AVX-512 CPU, Haswell's AVX2 ones: about 1.6x slower
# GEMMs at the cpu preset's sizes). The tables say so, since the ratios depend on it.
OPENBLAS_CHOICES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def blas_choice_note(environ):
    """A note naming the OpenBLAS settings in `environ`, or '' when there are none."""
    set_here = [f"{k}={environ[k]}" for k in OPENBLAS_CHOICES if k in environ]
    if not set_here:
        return ""
    return (f"{' and '.join(set_here)} in the environment: OpenBLAS ran the kernels named "
            "above, not the ones it would pick for this CPU; to time those, run the bench "
            f"with {' and '.join(k for k in OPENBLAS_CHOICES if k in environ)} unset")


def torch_side(torch):
    """PyTorch's intra-op threads, its OpenMP runtime (threadpoolctl) and its MKL and
    oneDNN, which are linked into libtorch where threadpoolctl cannot see them."""
    if torch is None:
        return "PyTorch not used"
    info = torch.__config__.parallel_info()
    parts = [f"{torch.get_num_threads()} intra-op threads"]
    mkl = re.search(r"mkl_get_max_threads\(\) : (\d+)", info)
    if torch.backends.mkl.is_available():
        parts.append(f"MKL{' ' + mkl.group(1) + ' threads' if mkl else ''}")
    if torch.backends.mkldnn.is_available():
        parts.append("oneDNN convs")
    tpc = threadpoolctl()
    if tpc is not None:
        omp = [i for i in tpc.threadpool_info() if i["user_api"] == "openmp"
               and "torch" in i["filepath"]]
        parts += [f"{i['prefix']} (OpenMP): {i['num_threads']} threads" for i in omp]
    return ", ".join(parts)
