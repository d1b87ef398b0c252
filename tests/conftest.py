"""Test setup: the kernel device, hypothesis profiles.

Kernel tests run the CUDA kernels on `sim` (Numba's simulator, NumPy arrays) unless
MINIVGG_DEVICE=cuda, when they run on the GPU. The simulator has to be switched on before
anything imports numba.cuda, which is why this happens here, at the top of conftest.
"""
import os

if os.environ.get("MINIVGG_DEVICE", "").lower() != "cuda":
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

from hypothesis import HealthCheck, settings  # noqa: E402

# ci: few examples, so the simulator part of the suite stays within minutes on 2 cores.
# dev: more, for a thorough local run (HYPOTHESIS_PROFILE=dev).
settings.register_profile("ci", max_examples=8, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=50, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
