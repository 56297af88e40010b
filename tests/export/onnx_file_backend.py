"""A runtime backend for test targets: runs an ONNX file, whatever it is named, with onnxruntime.
The toy target (docs/adding-a-target.md) and the driver's gap checks both register subclasses."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import onnxruntime as ort

from edgeclip.bundle import Artifact
from edgeclip.errors import EdgeclipError
from edgeclip.runtime.backends.base import BackendOptions, input_dtypes


class OnnxFileBackend:
    extra: ClassVar[str] = "onnx"

    @classmethod
    def available(cls) -> bool:
        return True

    @classmethod
    def unavailable(cls) -> EdgeclipError | None:
        return None

    def __init__(self, path: Path, artifact: Artifact, options: BackendOptions = BackendOptions()) -> None:
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.dtypes = input_dtypes(artifact)
        self.outputs = [s.name for s in artifact.outputs]

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: np.ascontiguousarray(v, dtype=self.dtypes[k]) for k, v in inputs.items()}
        return dict(zip(self.outputs, self.session.run(self.outputs, feed), strict=True))
