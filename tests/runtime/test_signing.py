"""Trust-policy and key-file rules: an explicit empty policy is refused (it is
not "no policy"), the environment policy is read when no keys are passed, and a key pair is never
overwritten (a lost private key cannot sign updates); a signature file is size-checked before it
is parsed, even when its content would verify; an installed version is never signed in place."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from edgeclip.bundle import Bundle
from edgeclip.errors import BadSignatureError, ConfigError, InstallError
from edgeclip.runtime.install import install
from edgeclip.runtime.signing import (
    ENV,
    MAX_SIGNATURE_BYTES,
    generate_keys,
    sign_bundle,
    trust_policy,
    verify_signature,
)

pytest.importorskip("cryptography")


def test_an_empty_key_list_is_refused_not_taken_as_no_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(ConfigError, match="empty") as e:
        trust_policy([])
    assert e.value.fix
    assert trust_policy(None) is None  # no policy at all: nothing is checked


def test_the_environment_policy_applies_when_no_keys_are_passed(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    a, b = tmp_path / "a.pub", tmp_path / "b.pub"
    monkeypatch.setenv(ENV, f"{a}{os.pathsep}{os.pathsep}{b}")
    assert trust_policy(None) == [a, b]
    assert trust_policy([str(b)]) == [b]  # passed keys replace the device-wide ones
    monkeypatch.setenv(ENV, "")
    assert trust_policy(None) is None


def test_an_existing_key_pair_is_never_overwritten(tmp_path: Path) -> None:
    priv, pub, kid = generate_keys(tmp_path / "k")
    before = priv.read_bytes(), pub.read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_keys(tmp_path / "k")
    pub.unlink()  # half a pair left: still refused, the private key kept
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_keys(tmp_path / "k")
    assert priv.read_bytes() == before[0] and len(kid) == 16


def test_an_oversized_signature_file_is_refused_before_it_is_parsed(tiny_bundle: Path, tmp_path: Path) -> None:
    priv, pub, kid = generate_keys(tmp_path / "k")
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "b.edgeclip"))
    sign_bundle(bundle, priv)
    assert verify_signature(Bundle.open(bundle), [pub]) == kid
    sig = bundle / "manifest.sig"
    sig.write_bytes(sig.read_bytes() + b" " * MAX_SIGNATURE_BYTES)  # still valid JSON, still verifies
    with pytest.raises(BadSignatureError, match="larger than"):
        verify_signature(Bundle.open(bundle), [pub])


def test_an_installed_version_is_not_signed_in_place(tiny_bundle: Path, tmp_path: Path) -> None:
    priv, _, _ = generate_keys(tmp_path / "k")
    into = tmp_path / "models"
    into.mkdir()
    done = install(Path(shutil.copytree(tiny_bundle, tmp_path / "b.edgeclip")), into, "cam")
    live = into / "cam" / "versions" / done.version
    before = sorted(p.name for p in live.iterdir())
    for path in (into / "cam", live):  # the install folder, or the version it resolves to
        with pytest.raises(InstallError, match="installed version") as e:
            sign_bundle(path, priv)
        assert "before installing" in (e.value.fix or "")
    assert sorted(p.name for p in live.iterdir()) == before  # no manifest.sig written into the live version
