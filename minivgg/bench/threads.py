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
    """NumPy's BLAS, the OpenMP runtimes and PyTorch's intra-op pool at n threads, then
    restored. n None: leave everything as it is (threadpoolctl missing)."""
    tpc = threadpoolctl()
    if n is None or tpc is None:
        yield
        return
    before = torch.get_num_threads() if torch is not None else None
    with tpc.threadpool_limits(limits=n):
        if torch is not None:
            torch.set_num_threads(n)
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(before)


def numpy_side():
    """'OpenBLAS 0.3.31 (pthreads): 2 threads', read now (inside `limited`, the limit)."""
    tpc = threadpoolctl()
    if tpc is None:
        return "BLAS threads unknown (threadpoolctl not installed)"
    libs = [i for i in tpc.threadpool_info() if i["user_api"] == "blas"
            and "numpy" in i["filepath"].replace("\\", "/")] or \
        [i for i in tpc.threadpool_info() if i["user_api"] == "blas"]
    return "; ".join(_describe(i) for i in libs) or "no BLAS library found by threadpoolctl"


def _describe(info):
    layer = info.get("threading_layer")
    name = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS"}.get(info["internal_api"],
                                                                       info["internal_api"])
    return (f"{name} {info.get('version') or ''}".strip()
            + (f" ({layer})" if layer else "") + f": {info['num_threads']} threads")


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
