"""Hostile signatures and key files under a trust policy: each is refused with a typed error
(SignatureError for the bundle's manifest.sig, KeyFileError for a trusted key file), never a crash,
and never accepted. Install under the policy puts nothing in place."""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgeclip.bundle import Bundle
from edgeclip.errors import EdgeclipError, KeyFileError, SignatureError

pytest.importorskip("cryptography")

from edgeclip.runtime.install import install
from edgeclip.runtime.signing import generate_keys, sign_bundle, verify_signature

Edit = Callable[[Path, dict[str, Any]], None]  # (bundle root, the good signature's fields)


def sig(fn: Callable[[dict[str, Any]], Any]) -> Edit:
    def edit(root: Path, good: dict[str, Any]) -> None:
        (root / "manifest.sig").write_text(json.dumps(fn(dict(good))))
    return edit


def raw(data: bytes) -> Edit:
    def edit(root: Path, good: dict[str, Any]) -> None:
        (root / "manifest.sig").write_bytes(data)
    return edit


def _as_dir(root: Path, good: dict[str, Any]) -> None:
    (root / "manifest.sig").unlink()
    (root / "manifest.sig").mkdir()


def _linked(root: Path, good: dict[str, Any]) -> None:
    target = root.parent / "elsewhere.sig"
    shutil.move(root / "manifest.sig", target)
    os.symlink(target, root / "manifest.sig")


SIGNATURE_CASES: dict[str, Edit] = {
    "empty file": raw(b""),
    "not json": raw(b"{oops"),
    "not utf-8": raw(b"\xff\xfe\x00garbage"),
    "deep nesting": raw(b"[" * 100_000 + b"]" * 100_000),
    "too large": raw(b" " * (1 << 20)),
    "json list": sig(lambda g: [g]),
    "json null": sig(lambda g: None),
    "no key_id": sig(lambda g: {k: v for k, v in g.items() if k != "key_id"}),
    "key_id a number": sig(lambda g: {**g, "key_id": 7}),
    "signature a list": sig(lambda g: {**g, "signature": [1, 2]}),
    "other algorithm": sig(lambda g: {**g, "algorithm": "rsa-pss"}),
    "other format": sig(lambda g: {**g, "format": "minisign"}),
    "not base64": sig(lambda g: {**g, "signature": "%%%not base64%%%"}),
    "truncated signature": sig(lambda g: {**g, "signature": g["signature"][:20]}),
    "empty signature": sig(lambda g: {**g, "signature": ""}),
    "zero signature": sig(lambda g: {**g, "signature": base64.b64encode(bytes(64)).decode()}),
    "signature of 1 MB": sig(lambda g: {**g, "signature": base64.b64encode(bytes(40_000)).decode()}),
    "flipped bit": sig(lambda g: {**g, "signature": base64.b64encode(
        bytes([base64.b64decode(g["signature"])[0] ^ 1]) + base64.b64decode(g["signature"])[1:]).decode()}),
    "unknown key id": sig(lambda g: {**g, "key_id": "0" * 16}),
    "a directory": _as_dir,
    "a symlink": _linked,
    "removed": lambda root, good: (root / "manifest.sig").unlink(),
}

KEY_CASES: dict[str, bytes] = {
    "empty": b"",
    "garbage": b"\x00\x01garbage",
    "truncated pem": b"-----BEGIN PUBLIC KEY-----\nMCow\n-----END PUBLIC KEY-----\n",
    "not utf-8": b"\xff" * 64,
}


@pytest.fixture(scope="module")
def signed(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("signed")
    priv, pub, _ = generate_keys(root / "keys")
    bundle = Path(shutil.copytree(tiny_bundle, root / "b.edgeclip"))
    sign_bundle(bundle, priv)
    return bundle, pub


def _copy(signed: tuple[Path, Path], tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    bundle = Path(shutil.copytree(signed[0], tmp_path / "b.edgeclip", symlinks=True))
    return bundle, json.loads((bundle / "manifest.sig").read_text())


@pytest.mark.parametrize("case", list(SIGNATURE_CASES))
def test_hostile_signature_is_refused(case: str, signed: tuple[Path, Path], tmp_path: Path,
                                      record_property: Any) -> None:
    bundle, good = _copy(signed, tmp_path)
    SIGNATURE_CASES[case](bundle, good)
    record_property("inputs", 1)
    try:
        verify_signature(Bundle.open(bundle), [signed[1]])
        accepted, error = True, None
    except EdgeclipError as e:
        accepted, error = False, e
    except Exception as e:
        record_property("crashes", 1)
        raise AssertionError(f"untyped {type(e).__name__}: {e}") from e
    record_property("crashes", 0)
    assert not accepted and isinstance(error, SignatureError), (case, error)
    assert error.fix, case
    with pytest.raises(SignatureError):
        install(bundle, tmp_path / "models", "cam", trusted_keys=[signed[1]])
    assert not (tmp_path / "models/cam/current").exists() and not list((tmp_path / "models/cam/versions").iterdir())


@pytest.mark.parametrize("case", list(KEY_CASES))
def test_hostile_trusted_key_file_is_refused(case: str, signed: tuple[Path, Path], tmp_path: Path,
                                             record_property: Any) -> None:
    key = tmp_path / "trusted.pub"
    key.write_bytes(KEY_CASES[case])
    record_property("inputs", 1)
    with pytest.raises(KeyFileError):
        verify_signature(Bundle.open(signed[0]), [key])
    record_property("crashes", 0)


def test_private_key_as_trusted_key_is_refused(signed: tuple[Path, Path], record_property: Any) -> None:
    record_property("inputs", 1)
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        verify_signature(Bundle.open(signed[0]), [signed[1].with_suffix(".key")])
    assert verify_signature(Bundle.open(signed[0]), [signed[1]])  # the pristine copy verifies
