"""Temporary: builtin:shapes moved to `edgeclip.data.shapes`; removed once export's probes read it there."""

from edgeclip.data.shapes import ShapesDataset

__all__ = ["ShapesDataset"]
