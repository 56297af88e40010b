"""Whether embeddings computed with one bundle stay valid with another (a model update): compared by
the `embedding_space` each artifact records, which precision variants of one tower share."""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgeclip.bundle import Artifact, Manifest

SAME, SAME_SPACE_OTHER_ARTIFACT, NEW_SPACE, UNKNOWN = "same", "same-space-different-precision", "new-space", "unknown"


@dataclass(frozen=True)
class SpaceVerdict:
    """OLD's artifact against NEW's: can embeddings stored with `old` be compared with `new`'s?"""

    encoder: str
    old: str  # artifact key
    new: str
    verdict: str  # SAME | SAME_SPACE_OTHER_ARTIFACT | NEW_SPACE | UNKNOWN
    cosine_at_least: float | None = None  # between the two, bounded from their validation (same space only)

    @property
    def reindex(self) -> bool:
        return self.verdict in (NEW_SPACE, UNKNOWN)

    def describe(self) -> str:
        head = f"{self.encoder}: {self.old} -> {self.new}: "
        if self.verdict == SAME:
            return head + "same space, same artifact: stored embeddings stay valid"
        if self.verdict == SAME_SPACE_OTHER_ARTIFACT:
            cos = ("cosine between them unknown (no validation numbers)" if self.cosine_at_least is None
                   else f"cosine between them >= {self.cosine_at_least:.5f} (from validation against fp32)")
            what = "different precision" if self.old != self.new else "same precision, rebuilt artifact"
            return head + f"same space, {what}: stored embeddings stay comparable; {cos}"
        if self.verdict == NEW_SPACE:
            return head + "new space: re-index (stored embeddings are not comparable with the new model's)"
        return head + "unknown: a bundle does not record its embedding space (older edgeclip): re-index to be safe"

    def to_dict(self) -> dict[str, object]:
        return {"encoder": self.encoder, "old": self.old, "new": self.new, "verdict": self.verdict,
                "cosine_at_least": self.cosine_at_least, "reindex": self.reindex}


def reference_cosine(a: Artifact) -> float | None:
    """The artifact's worst cosine against the fp32 torch reference: held-out inputs for INT8
    (what it is judged on), the probes otherwise; None when it was only spec-checked."""
    v = a.validation
    return v.heldout.cosine_min if v.heldout is not None else v.cosine_min


def cosine_bound(a: Artifact, b: Artifact) -> float | None:
    """A lower bound on cos(a(x), b(x)): on the unit sphere the angle between a(x) and b(x) is at most
    the sum of each one's angle to the reference (triangle inequality for angles)."""
    ca, cb = reference_cosine(a), reference_cosine(b)
    if ca is None or cb is None:
        return None
    angle = math.acos(min(1.0, max(-1.0, ca))) + math.acos(min(1.0, max(-1.0, cb)))
    return math.cos(min(angle, math.pi))


def compare(old: Manifest, new: Manifest) -> list[SpaceVerdict]:
    """A verdict for each pair of OLD's and NEW's artifacts of one encoder: stored embeddings came
    from whichever OLD artifact a device ran, and NEW's device may pick any of NEW's."""
    return [_verdict(a, b) for a in old.artifacts for b in new.find(a.encoder)]


def _verdict(a: Artifact, b: Artifact) -> SpaceVerdict:
    if a.embedding_space is None or b.embedding_space is None:
        return SpaceVerdict(a.encoder, a.key, b.key, UNKNOWN)
    if a.embedding_space != b.embedding_space:
        return SpaceVerdict(a.encoder, a.key, b.key, NEW_SPACE)
    if a.key == b.key and a.files == b.files:  # the very same artifact files
        return SpaceVerdict(a.encoder, a.key, b.key, SAME)
    return SpaceVerdict(a.encoder, a.key, b.key, SAME_SPACE_OTHER_ARTIFACT, cosine_bound(a, b))
