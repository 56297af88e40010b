"""How a bundle turns cosine similarities into label probabilities (the manifest's scoring rule).

- "softmax" (CLIP): softmax over the labels of logit_scale * cos; the probabilities sum to 1.
- "sigmoid" (SigLIP): sigmoid(logit_scale * cos + logit_bias), independent per label, so an image
  may match several labels or none; that is what the model was trained to output.

Recorded as `scoring` in the manifest's model config; bundles written before it are softmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeclip.errors import BundleError

RULES = ("softmax", "sigmoid")


@dataclass(frozen=True)
class Scoring:
    rule: str
    logit_scale: float  # already exp()'d
    logit_bias: float = 0.0

    def probabilities(self, cos: np.ndarray) -> np.ndarray:
        """[..., C] cosines -> [..., C] probabilities under the rule (float64)."""
        logits = self.logit_scale * cos.astype(np.float64)
        if self.rule == "sigmoid":
            z = logits + self.logit_bias
            return np.exp(-np.logaddexp(0.0, -z))  # sigmoid without overflow for large |z|
        p = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return p / p.sum(axis=-1, keepdims=True)

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, **({"logit_bias": self.logit_bias} if self.rule == "sigmoid" else {})}


def scoring_from_manifest(model_config: dict[str, Any], logit_scale: float) -> Scoring:
    """The rule a manifest records (absent: softmax, the only rule before SigLIP)."""
    d = model_config.get("scoring") or {"rule": "softmax"}
    rule = d.get("rule") if isinstance(d, dict) else None
    if rule not in RULES:
        raise BundleError(f"the bundle's scoring rule {rule!r} is unknown (this edgeclip knows {list(RULES)})",
                          fix="upgrade edgeclip, or re-export the bundle with this version")
    # absent is refused too: 0 in place of SigLIP's trained bias (about -10) would score every label near 1
    bias: Any = d.get("logit_bias") if rule == "sigmoid" else 0.0  # softmax has no bias
    number = isinstance(bias, (int, float)) and not isinstance(bias, bool)
    if rule == "sigmoid" and not (number and np.isfinite(bias)):
        raise BundleError(f"the bundle's sigmoid scoring has no finite logit_bias (got {bias!r})",
                          fix="re-export the bundle")
    return Scoring(str(rule), float(logit_scale), float(bias))
