"""Signed bundles: Ed25519 keys, a detached signature over manifest.json's exact bytes, and the
device's trust policy.

The manifest pins every file by sha256, so a signature over its bytes covers the whole bundle. The
signature is checked over the bytes `Bundle.open` parsed (never a re-serialisation, which could
differ from what was signed, or from what was loaded).

A trust policy is a list of public key files: passed as `trusted_keys`, or set device-wide by the
environment variable EDGECLIP_TRUSTED_KEYS (paths separated by os.pathsep). Without a policy nothing
is checked, and `cryptography` (the `sign` extra) is never imported.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgeclip._deps import require
from edgeclip._io import write_bytes, write_json
from edgeclip.bundle import MANIFEST, SIGNATURE, Bundle, installed_folder
from edgeclip.errors import (
    BadSignatureError,
    BundleError,
    ConfigError,
    InstallError,
    KeyFileError,
    UnsignedBundleError,
    UntrustedKeyError,
)

ENV = "EDGECLIP_TRUSTED_KEYS"
FORMAT = "edgeclip-signature"
ALGORITHM = "ed25519"
PRIVATE_KEY, PUBLIC_KEY = "edgeclip-signing.key", "edgeclip-signing.pub"
MAX_SIGNATURE_BYTES = 64 << 10  # a signature is ~300 bytes; refuse absurd ones before parsing
TrustedKeys = Sequence[str | os.PathLike[str]]


def _crypto() -> Any:
    require("cryptography", extra="sign", purpose="signed bundles")  # only here: a policy or a signer asks
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return serialization, ed25519


def _raw_public(key: Any) -> bytes:
    serialization, _ = _crypto()
    return bytes(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def key_id(public_key: Any) -> str:
    """A short, stable name of a public key: sha256 of its 32 raw bytes, first 16 hex digits."""
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


def generate_keys(out: str | os.PathLike[str]) -> tuple[Path, Path, str]:
    """Write a new Ed25519 key pair into `out` -> (private key, public key, key id). The private key
    file is readable by its owner only; existing keys are never overwritten."""
    serialization, ed25519 = _crypto()
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise KeyFileError(f"{folder} is not a folder", fix="pass --out a new or existing folder")
    priv, pub = folder / PRIVATE_KEY, folder / PUBLIC_KEY
    if priv.exists() or pub.exists():
        raise ConfigError(f"{folder} already holds a key pair; refusing to overwrite it",
                          fix="choose another --out folder (a lost private key cannot sign updates)")
    key = ed25519.Ed25519PrivateKey.generate()
    folder.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    write_bytes(pub, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub, key_id(key.public_key())


def _load_key(path: str | os.PathLike[str], private: bool) -> Any:
    serialization, ed25519 = _crypto()
    kind = "private" if private else "public"
    p = Path(path)
    if not p.is_file():
        raise KeyFileError(f"{kind} key file not found: {p}", fix="make a key pair with `edgeclip keys generate`")
    try:
        data = p.read_bytes()
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except (ValueError, TypeError, OSError) as e:
        raise KeyFileError(f"{p} is not a PEM {kind} key: {e}",
                           fix="pass a file written by `edgeclip keys generate`") from e
    want = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, want):
        raise KeyFileError(f"{p} is not an Ed25519 {kind} key", fix="make a key pair with `edgeclip keys generate`")
    return key


def sign_bundle(bundle: str | os.PathLike[str], private_key: str | os.PathLike[str]) -> str:
    """Write BUNDLE/manifest.sig over the manifest's exact bytes -> the key id. The bundle's files
    are verified first: a signature must never bless a bundle that is already tampered with."""
    key = _load_key(private_key, private=True)
    b = Bundle.open(bundle)
    folder = installed_folder(b.root)
    if folder is not None:  # installed versions are never written into (a reader may be loading it)
        raise InstallError(f"{bundle} is an installed version ({folder}); signing would write into it",
                           fix="sign the bundle before installing it (edgeclip sign BUNDLE --key KEY), then "
                               "edgeclip install the signed bundle")
    b.verify()
    raw = b.manifest_bytes
    assert raw is not None  # set by open
    kid = key_id(key.public_key())
    write_json(b.root / SIGNATURE, {
        "format": FORMAT, "algorithm": ALGORITHM, "key_id": kid,
        "manifest_sha256": hashlib.sha256(raw).hexdigest(),
        "signature": base64.b64encode(key.sign(raw)).decode("ascii"),
    })
    return kid


def trust_policy(trusted_keys: TrustedKeys | None = None) -> list[Path] | None:
    """The public key files to trust: `trusted_keys` if given, else EDGECLIP_TRUSTED_KEYS; None when
    neither sets a policy. An explicit empty list is a policy that trusts nobody, so it is refused."""
    if trusted_keys is None:
        env = os.environ.get(ENV, "")
        trusted_keys = [p for p in env.split(os.pathsep) if p.strip()]
        if not trusted_keys:
            return None
    if isinstance(trusted_keys, (str, os.PathLike)):
        trusted_keys = [trusted_keys]
    if not trusted_keys:
        raise ConfigError("trusted_keys is empty: no bundle could ever load",
                          fix="pass the public key file(s) of the bundle's signer, or None for no policy")
    return [Path(p) for p in trusted_keys]


def read_signature(bundle: Bundle) -> dict[str, Any] | None:
    """The parsed manifest.sig, or None when the bundle has none."""
    path = bundle.root / SIGNATURE
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise BadSignatureError(f"{path} is not a plain file (bundles contain no links)", fix=RESIGN)
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_SIGNATURE_BYTES:
        raise BadSignatureError(f"{path} is larger than {MAX_SIGNATURE_BYTES} bytes; refusing to parse it", fix=RESIGN)
    try:
        sig = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BadSignatureError(f"{path} is not valid JSON: {e}", fix=RESIGN) from e
    fields_ok = isinstance(sig, dict) and all(isinstance(sig.get(k), str) for k in ("key_id", "signature"))
    if not fields_ok or sig.get("format") != FORMAT or sig.get("algorithm") != ALGORITHM:
        raise BadSignatureError(f"{path} is not an edgeclip {ALGORITHM} signature", fix=RESIGN)
    return dict(sig)


RESIGN = "get the bundle again from its publisher, or (as the publisher) sign it: `edgeclip sign BUNDLE --key KEY`"


def verify_signature(bundle: Bundle, trusted_keys: TrustedKeys | None = None) -> str | None:
    """Check the bundle against the trust policy -> the signer's key id; None when no policy is set."""
    policy = trust_policy(trusted_keys)
    if policy is None:
        return None
    sig = read_signature(bundle)
    if sig is None:
        raise UnsignedBundleError(f"{bundle.root} is not signed ({SIGNATURE} is missing), and a trust policy is set",
                                  fix=RESIGN)
    trusted = {key_id(k): k for k in (_load_key(p, private=False) for p in policy)}
    kid = sig["key_id"]
    if kid not in trusted:
        raise UntrustedKeyError(
            f"{bundle.root} is signed by key {kid}, which is not trusted here (trusted: {', '.join(sorted(trusted))})",
            fix=f"install a bundle signed by a trusted key, or add the signer's public key to --trusted-key / {ENV}")
    raw = bundle.manifest_bytes
    if raw is None:
        raise BundleError(f"{bundle.root}: the bundle was not opened from disk, so its signature cannot be checked")
    try:
        trusted[kid].verify(base64.b64decode(sig["signature"], validate=True), raw)
    except (binascii.Error, ValueError, _crypto_invalid()) as e:
        changed = sig.get("manifest_sha256") not in (None, hashlib.sha256(raw).hexdigest())
        why = (f"{MANIFEST} changed after it was signed" if changed
               else "the signature does not verify (forged or corrupt)")
        raise BadSignatureError(f"{bundle.root}: {SIGNATURE} does not match {MANIFEST}: {why}", fix=RESIGN) from e
    return kid


def _crypto_invalid() -> type[Exception]:
    from cryptography.exceptions import InvalidSignature

    return InvalidSignature
