"""edgeclip: CLIP from training to the edge.

This module stays import-light on purpose: importing `edgeclip` (or `edgeclip.runtime`)
must never pull in torch or an inference SDK.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
