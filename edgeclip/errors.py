"""Typed errors. Each user-facing error says what went wrong and how to fix it.

The CLI catches `EdgeclipError`, prints `Error: <message>` (plus the fix) and exits with
`exit_code`, never a traceback. `assert` is kept for internal invariants only.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EdgeclipError(Exception):
    """Base class of every error a user can cause."""

    exit_code: int = 1

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return self.message if not self.fix else f"{self.message}\n  fix: {self.fix}"


class ConfigError(EdgeclipError):
    """An invalid model, training or export configuration."""

    exit_code = 2


class UnknownNameError(ConfigError):
    """A name (model, target, backend, label set) that is not registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.4)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        super().__init__(
            f"unknown {kind} '{name}'{hint}",
            fix=f"choose one of: {', '.join(known)}" if known else None,
        )
        self.name = name
        self.known = known


class MissingDependencyError(EdgeclipError):
    """An optional package is needed for this operation but not installed."""

    exit_code = 3


class PlatformError(ConfigError):
    """An operation this machine cannot run whatever is installed (e.g. Core ML off Apple devices)."""


class CheckpointError(EdgeclipError):
    """A checkpoint that cannot be read, or whose weights do not fit its config."""


class BundleError(EdgeclipError):
    """A bundle that is missing, malformed, tampered with or of an unknown version."""


class ReportError(EdgeclipError):
    """A bench report file (`bench --compare`'s baseline) that cannot be read or is not one."""


class ImageError(EdgeclipError):
    """One image could not be decoded or preprocessed; other images are unaffected."""


class DataError(EdgeclipError):
    """A training or calibration data source that cannot be read or is empty."""


class TrainingError(EdgeclipError):
    """A training run that cannot continue (e.g. too many non-finite steps in a row)."""


class ExportError(EdgeclipError):
    """An export that failed, including an artifact that failed validation."""


class ValidationError(ExportError):
    """An exported artifact disagrees with the torch reference beyond tolerance."""


class SignatureError(BundleError):
    """A bundle that a trust policy refuses: unsigned, wrongly signed, or signed by an untrusted key."""


class UnsignedBundleError(SignatureError):
    """A trust policy is set, but the bundle has no manifest.sig."""


class BadSignatureError(SignatureError):
    """manifest.sig does not verify over manifest.json's exact bytes (changed after signing, or forged)."""


class UntrustedKeyError(SignatureError):
    """The bundle is signed, but by a key the trust policy does not list."""


class EmbeddingSpaceError(BundleError):
    """Embeddings (a label set) computed in one embedding space, used against another."""


class InstallError(EdgeclipError):
    """An install or rollback that cannot proceed; the live version is left as it was."""


class KeyFileError(EdgeclipError):
    """A signing or trusted key file that is missing, or is not an Ed25519 PEM key."""
