"""Test setup: the kernel device, hypothesis profiles.

Kernel tests run the CUDA kernels on `sim` (Numba's simulator, NumPy arrays) unless
MINIVGG_DEVICE=cuda, when they run on the GPU. The simulator has to be switched on before
anything imports numba.cuda, which is why this happens here, at the top of conftest.

Profiles (HYPOTHESIS_PROFILE, default ci). Reference tests are cheap and take the
profile's max_examples; tests that launch simulated kernels take helpers.KERNEL_EXAMPLES
instead, far fewer (the simulator runs one Python thread per CUDA thread), unless the
kernels run on a real GPU:
    ci        40 examples per reference test, 8 per simulator test, derandomized (CI).
    thorough  300 and 40, random: a long local run.
    gpu       100 per test, shapes that cross conv v3's 64x64 tiles (benchmarks/gpu_check.sh).
    mutation  ci without shrinking (tools/mutation.py): a mutant only needs one failure, and
              shrinking a failure that happens inside simulated kernels takes minutes.
"""
import os
import sys

if os.environ.get("MINIVGG_DEVICE", "").lower() != "cuda":
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    # The simulator runs a block as one Python thread per CUDA thread, and its launching
    # thread polls them in a loop, holding the GIL for Python's whole switch interval
    # (5 ms) each time it gets it: a block's threads then wait 5 ms at each syncthreads.
    # At 0.2 ms a tiny VGG step (test_whole_step.py) takes 26 s instead of 44-48 s.
    sys.setswitchinterval(2e-4)

from hypothesis import HealthCheck, Phase, settings  # noqa: E402

_quiet = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=_quiet)
settings.register_profile("thorough", max_examples=300, deadline=None,
                          suppress_health_check=_quiet)
settings.register_profile("gpu", max_examples=100, deadline=None,
                          suppress_health_check=_quiet)
settings.register_profile("mutation", parent=settings.get_profile("ci"),
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
