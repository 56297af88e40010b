"""The device runtime: numpy + Pillow + tokenizers + one inference SDK. Never torch.

    from edgeclip.runtime import ZeroShotClassifier
    clf = ZeroShotClassifier.load("model.edgeclip")
    clf.classify(["cat.jpg"], top_k=3)
"""

from __future__ import annotations

from edgeclip.runtime.backends import list_backends
from edgeclip.runtime.classifier import Classification, ZeroShotClassifier

__all__ = ["Classification", "ZeroShotClassifier", "list_backends"]
