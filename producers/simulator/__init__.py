"""The astreg AMI simulator: N fake Asterisk 22 nodes speaking byte-exact AMI over TCP.

Used by tests, demos and load tests (``astreg simulate``; Python: ``Simulator(SimConfig(...))``).
Imports nothing from the rest of ``producers/``.
"""

from .config import SimConfig
from .core import Simulator

__all__ = ["Simulator", "SimConfig"]
