"""Devices: names, auto's choice and reason, one-line errors, the simulator switch."""
import os
import subprocess
import sys

import numpy as np
import pytest

from minivgg import backend


def run_python(code, device=None, args=()):
    env = {k: v for k, v in os.environ.items()
           if k not in ("MINIVGG_DEVICE", "NUMBA_ENABLE_CUDASIM")}
    if device is not None:
        env["MINIVGG_DEVICE"] = device
    return subprocess.run([sys.executable, *(["-c", code] if code else []), *args],
                          capture_output=True, text=True, env=env, timeout=120)


def has_gpu():
    return backend._gpu_status()[0]


@pytest.mark.parametrize("device", ["cpu", "sim"])
def test_import_works_on_each_cpu_device(device):
    proc = run_python("import minivgg, minivgg.backend as b; print(b.device().name)", device)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == device


def test_sim_device_switches_on_the_simulator_before_numba_cuda():
    proc = run_python("import minivgg\nfrom numba import config\nprint(config.ENABLE_CUDASIM)",
                      "sim")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"


def test_sim_after_numba_cuda_without_simulator_is_a_clear_error():
    code = ("import os; os.environ['NUMBA_ENABLE_CUDASIM'] = '0'\n"
            "import numba.cuda\nfrom minivgg import backend\n"
            "try:\n    backend.set_device('sim')\n"
            "except backend.DeviceError as e:\n    print('ERR', e)\n")
    proc = run_python(code)
    assert "ERR numba.cuda was already imported without the CUDA simulator" in proc.stdout


def test_the_simulator_survives_a_compile_after_the_ptx_module_is_imported():
    """Numba reads NUMBA_ENABLE_CUDASIM again at every @njit compile (the cpu device's
    max-pool, ReLU, loss), so importing minivgg.bench.ptx in-process (static.py does, for
    ptxas_path) must leave the setting alone; only running it as a program sets it."""
    code = ("import minivgg.backend as b; b.set_device('sim')\nimport kernels.pool\n"
            "import minivgg.bench.ptx\nfrom numba import njit, config\n"
            "njit(lambda x: x + 1)(1)\n"  # a fresh compile: a lambda is never cached
            "b.set_device('sim'); print(config.ENABLE_CUDASIM)")
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"


@pytest.mark.skipif(has_gpu(), reason="this machine has a usable GPU")
def test_auto_picks_cpu_and_says_why():
    dev = backend.resolve("auto")
    assert dev.name == "cpu" and dev.xp is np
    assert dev.reason.startswith("auto picked cpu: ")
    assert "CuPy" in dev.reason


def test_unknown_device_is_a_one_line_error_and_exit_2():
    proc = run_python(None, args=["-m", "minivgg", "--device", "tpu"])
    assert proc.returncode == 2
    proc = run_python(None, "tpu", args=["-m", "minivgg"])
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: unknown device 'tpu': "
                                   "choose one of auto, cuda, sim, cpu")


@pytest.mark.skipif(has_gpu(), reason="this machine has a usable GPU")
def test_cuda_without_gpu_is_a_one_line_error_and_exit_2():
    proc = run_python(None, args=["-m", "minivgg", "--device", "cuda"])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: device 'cuda' is not available")


def test_info_command_reports_the_device():
    proc = run_python(None, "cpu", args=["-m", "minivgg"])
    assert proc.returncode == 0, proc.stderr
    assert "device: cpu (asked for cpu" in proc.stdout


def test_host_device_round_trip():
    backend.set_device("cpu")
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    d = backend.to_device(a)
    assert d.dtype == np.float32 and d.flags.c_contiguous
    np.testing.assert_array_equal(backend.to_host(d), a)


# -- the no-host-sync promise (issue 12) --------------------------------------------------
SYNC_PROBE = ("from minivgg import backend\nbackend._configure_numba(simulate=False)\n"
              "import numba.cuda\nfrom numba.cuda.core import config\n"
              "print(config.CUDA_ARRAY_INTERFACE_SYNC)")


@pytest.mark.parametrize("first", ["", "import numba\n", "import numba.cuda\n"])
def test_no_sync_per_launch_is_in_force_for_cuda(first):
    """Whatever was imported first, picking cuda leaves numba-cuda's per-launch stream
    sync (NUMBA_CUDA_ARRAY_INTERFACE_SYNC) off as numba-cuda itself reads it."""
    proc = run_python(first + SYNC_PROBE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0"


def test_an_explicit_sync_setting_is_kept():
    env_code = "import os; os.environ['NUMBA_CUDA_ARRAY_INTERFACE_SYNC'] = '1'\n"
    proc = run_python(env_code + SYNC_PROBE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "1"


def test_no_sync_per_launch_is_in_force_in_this_process():
    from helpers import KERNEL_DEVICE  # sim here; the real cuda device in the GPU check
    backend.set_device(KERNEL_DEVICE)
    from numba.cuda.core import config
    assert config.CUDA_ARRAY_INTERFACE_SYNC == 0


def test_numba_cuda_is_one_that_launches_without_host_syncs():
    assert backend.numba_cuda_version() >= backend.MIN_NUMBA_CUDA
    with open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml")) as f:
        assert '"numba-cuda>=0.30"' in f.read()
    assert backend.MIN_NUMBA_CUDA == (0, 30)


def test_an_older_numba_cuda_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(backend, "_gpu_status", lambda: (True, "CuPy found 1 GPU(s): fake"))
    monkeypatch.setattr(backend, "numba_cuda_version", lambda: (0, 28))
    with pytest.raises(backend.DeviceError) as e:
        backend.resolve("cuda")
    assert str(e.value) == ("numba-cuda 0.28 synchronises with the host at every kernel "
                            "launch; install numba-cuda>=0.30 (pip install -U "
                            "'numba-cuda>=0.30')")


@pytest.mark.parametrize("text, want", [("0.30.4", (0, 30)), ("0.31rc1", (0, 31)),
                                        ("1.0", (1, 0)), ("0.9.post1", (0, 9))])
def test_numba_cuda_version_reads_release_numbers(monkeypatch, text, want):
    from importlib import metadata
    monkeypatch.setattr(metadata, "version", lambda name: text)
    assert backend.numba_cuda_version() == want


# The cpu device's allocator setting (host_memory.py). A 48 MiB array is above the most
# glibc's own threshold ever rises to (32 MiB), so without the setting its pages go back to
# the kernel when it is freed (and the next one must fault fresh pages in); with it, they
# stay with the process for the next array.
_KEPT_MIB = """
import sys, numpy as np
from minivgg import backend
if sys.argv[1] != "none":
    backend.set_device(sys.argv[1])
def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
a = np.ones(12 << 20, np.float32)  # 48 MiB, touched
before = resident_mib()
del a
print(resident_mib() - before + 48)
"""


def _mib_kept_after_freeing_48(device):
    proc = run_python(_KEPT_MIB, args=(device,))
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout.split()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="Linux's /proc")
def test_the_cpu_device_keeps_freed_host_memory_for_the_next_step():
    assert _mib_kept_after_freeing_48("none") < 8  # glibc's default: handed back
    assert _mib_kept_after_freeing_48("cpu") > 40


def test_starting_the_cpu_device_from_a_command_leaves_a_users_own_choice(monkeypatch,
                                                                          capsys):
    """Every command starts its device through device_flags.start_device, which must not
    set glibc's allocator behind host_memory's back (minivgg.train once called mallopt a
    second time there, over a MALLOC_*_ variable the user had set)."""
    import argparse
    import ctypes
    from minivgg import device_flags, host_memory
    calls = []

    class Libc:
        def mallopt(self, *args):
            calls.append(args)
            return 1
    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: Libc())
    monkeypatch.setattr(host_memory, "_done", False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    args = argparse.Namespace(device="cpu", threads=1, blas_threads=0)
    assert device_flags.start_device(args).name == "cpu"
    assert calls == []
    assert capsys.readouterr().out.startswith("device: cpu (asked for cpu")


def test_the_allocator_setting_leaves_a_users_own_choice(monkeypatch):
    from minivgg import host_memory
    monkeypatch.setattr(host_memory, "_done", False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert host_memory.keep_freed_memory() is False
