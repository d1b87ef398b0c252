"""minivgg: VGG (Simonyan & Zisserman, ICLR 2015) with every layer an explicit Numba CUDA kernel.

Importing the package is cheap and touches no device: the device is chosen on first use
from $MINIVGG_DEVICE (cuda | sim | cpu | auto) or by minivgg.backend.set_device().
"""
import os as _os

__version__ = "0.1.0"

# The simulator must be switched on before numba.cuda is first imported, so honour
# MINIVGG_DEVICE=sim as early as possible (a wrong name is reported on first use, not here).
if _os.environ.get("MINIVGG_DEVICE", "").strip().lower() == "sim":
    from minivgg import backend as _backend
    _backend.set_device("sim")
