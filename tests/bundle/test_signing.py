"""Signed bundles: a signed bundle loads under a trust policy; a changed manifest, another key, a
missing signature are each refused with their own typed error."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeclip.bundle import Bundle
from edgeclip.errors import BadSignatureError, KeyFileError, UnsignedBundleError, UntrustedKeyError
from edgeclip.runtime import ZeroShotClassifier
from edgeclip.runtime.signing import ENV, generate_keys, sign_bundle, verify_signature
from tests.bundle.conftest import edit_manifest

pytest.importorskip("cryptography")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, str]]:
    root = tmp_path_factory.mktemp("keys")
    return {name: generate_keys(root / name) for name in ("publisher", "other")}


@pytest.fixture()
def signed(bundle_copy: Path, keys: dict[str, tuple[Path, Path, str]]) -> Path:
    sign_bundle(bundle_copy, keys["publisher"][0])
    return bundle_copy


def test_keys_are_ed25519_pem_and_private_key_is_owner_only(keys: dict[str, tuple[Path, Path, str]]) -> None:
    priv, pub, kid = keys["publisher"]
    assert priv.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert priv.stat().st_mode & 0o077 == 0
    assert len(kid) == 16 and kid != keys["other"][2]


def test_signed_bundle_loads_and_names_its_key(signed: Path, keys: dict[str, tuple[Path, Path, str]]) -> None:
    sig = json.loads((signed / "manifest.sig").read_text())
    assert sig["algorithm"] == "ed25519" and sig["key_id"] == keys["publisher"][2]
    assert sig["manifest_sha256"] == hashlib.sha256((signed / "manifest.json").read_bytes()).hexdigest()
    clf = ZeroShotClassifier.load(signed, trusted_keys=[keys["publisher"][1]])
    assert clf.classes
    # several trusted keys: the one that signed is enough
    assert verify_signature(Bundle.open(signed), [keys["other"][1], keys["publisher"][1]]) == keys["publisher"][2]


def test_changed_manifest_with_rehashed_files_is_refused(signed: Path, keys: dict[str, tuple[Path, Path, str]]) -> None:
    """The attack a sha256 list alone cannot catch: a file changed and its hash rewritten to match."""
    meta = signed / "labels/default.json"
    classes = json.loads(meta.read_text())
    classes["classes"][0] = "cat"
    meta.write_text(json.dumps(classes))
    digest = hashlib.sha256(meta.read_bytes()).hexdigest()
    edit_manifest(signed, lambda m: m["labels"]["default"]["files"].update({"labels/default.json": digest}))
    Bundle.open(signed).verify()  # every file matches the (rewritten) manifest
    with pytest.raises(BadSignatureError, match="manifest.json changed after it was signed"):
        ZeroShotClassifier.load(signed, trusted_keys=[keys["publisher"][1]])


def test_one_byte_of_the_manifest_changed_is_refused(signed: Path, keys: dict[str, tuple[Path, Path, str]]) -> None:
    """Even a change that parses to the same manifest (one space): the signature covers the bytes."""
    raw = (signed / "manifest.json").read_bytes()
    before = Bundle.open(signed).manifest.to_dict()
    (signed / "manifest.json").write_bytes(raw.replace(b'"format": ', b'"format":  ', 1))
    assert Bundle.open(signed).manifest.to_dict() == before
    with pytest.raises(BadSignatureError):
        ZeroShotClassifier.load(signed, trusted_keys=[keys["publisher"][1]])


def test_signature_from_another_key_is_refused(bundle_copy: Path, keys: dict[str, tuple[Path, Path, str]]) -> None:
    sign_bundle(bundle_copy, keys["other"][0])
    with pytest.raises(UntrustedKeyError, match=f"signed by key {keys['other'][2]}, which is not trusted") as e:
        ZeroShotClassifier.load(bundle_copy, trusted_keys=[keys["publisher"][1]])
    assert e.value.fix and "--trusted-key" in e.value.fix
    # the other key's signature, claiming to be the publisher's: the key id is not proof
    sig = json.loads((bundle_copy / "manifest.sig").read_text())
    (bundle_copy / "manifest.sig").write_text(json.dumps({**sig, "key_id": keys["publisher"][2]}))
    with pytest.raises(BadSignatureError, match="does not verify"):
        ZeroShotClassifier.load(bundle_copy, trusted_keys=[keys["publisher"][1]])


def test_missing_signature_under_a_policy_is_refused(bundle_copy: Path, keys: dict[str, tuple[Path, Path, str]],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UnsignedBundleError, match="manifest.sig is missing"):
        ZeroShotClassifier.load(bundle_copy, trusted_keys=[keys["publisher"][1]])
    monkeypatch.setenv(ENV, str(keys["publisher"][1]))  # the device-wide policy
    with pytest.raises(UnsignedBundleError):
        ZeroShotClassifier.load(bundle_copy)
    monkeypatch.delenv(ENV)
    assert ZeroShotClassifier.load(bundle_copy).classes  # no policy: an unsigned bundle loads as before


def test_signing_refuses_a_tampered_bundle_and_bad_keys(bundle_copy: Path, keys: dict[str, tuple[Path, Path, str]],
                                                        tmp_path: Path) -> None:
    f = bundle_copy / "labels/default.npy"
    f.write_bytes(f.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(Exception, match="does not match its sha256"):
        sign_bundle(bundle_copy, keys["publisher"][0])
    assert not (bundle_copy / "manifest.sig").exists()
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        sign_bundle(bundle_copy, keys["publisher"][1])  # the public key
    with pytest.raises(KeyFileError, match="not found"):
        sign_bundle(bundle_copy, tmp_path / "nope.key")


def test_changing_the_manifest_removes_the_stale_signature(signed: Path) -> None:
    b = Bundle.open(signed)
    assert b.save_manifest() is True  # e.g. a label set added: the caller tells the user to sign again
    assert not (signed / "manifest.sig").exists()


def test_no_policy_never_imports_cryptography(signed: Path) -> None:
    code = (f"import sys; from edgeclip.runtime import ZeroShotClassifier; "
            f"ZeroShotClassifier.load({str(signed)!r}); print('cryptography' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
