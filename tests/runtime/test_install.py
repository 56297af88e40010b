"""Install, re-install and rollback refuse what does not verify, by what is on disk at that moment:
the staged copy (not the source), an installed version changed since it was installed, a previous
version that no longer verifies or that the device's trust policy refuses; the install name cannot
leave INTO. The common paths are in tests/bundle/test_install.py; the SIGKILL matrix in
tests/reliability/test_install.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from edgeclip.errors import BundleError, ConfigError, UnsignedBundleError
from edgeclip.runtime.install import install, rollback
from tests.bundle.test_install import leftovers, live, second_version
from tests.conftest import run_cli

MODEL = "image/onnx-fp32/model.onnx"


@pytest.fixture()
def versions(tiny_bundle: Path, tmp_path: Path) -> tuple[Path, Path]:
    old = Path(shutil.copytree(tiny_bundle, tmp_path / "b1.edgeclip"))
    return old, second_version(old, tmp_path / "b2.edgeclip")


def corrupt(path: Path) -> None:
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)


@pytest.mark.parametrize("name", ["../outside", "a/b", "..", ".hidden", "current"])
def test_an_install_name_that_is_not_a_plain_folder_name_is_refused(versions: tuple[Path, Path], tmp_path: Path,
                                                                    name: str) -> None:
    into = tmp_path / "models"
    into.mkdir()
    with pytest.raises(ConfigError, match="install name"):
        install(versions[0], into, name)
    assert list(into.iterdir()) == [] and not (tmp_path / "outside").exists()


def test_what_is_verified_is_the_staged_copy(versions: tuple[Path, Path], tmp_path: Path) -> None:
    """A file damaged after it was copied (disk error, or another process) is caught in staging."""
    old, new = versions
    install(old, tmp_path, "cam")

    def damage_copy(step: str) -> None:
        if step == f"copied {MODEL}":
            (staged,) = (tmp_path / "cam").glob(".staging-*")
            corrupt(staged / MODEL)

    with pytest.raises(BundleError, match="does not match its sha256"):
        install(new, tmp_path, "cam", on_step=damage_copy)
    assert live(tmp_path / "cam") == (old / "manifest.json").read_bytes() and leftovers(tmp_path / "cam") == []


def test_reinstalling_a_kept_version_checks_it_again(versions: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = versions
    first = install(old, tmp_path, "cam")
    install(new, tmp_path, "cam")
    corrupt(tmp_path / "cam/versions" / first.version / MODEL)  # the kept (previous) version changed on disk
    with pytest.raises(BundleError, match="does not match its sha256"):
        install(old, tmp_path, "cam")
    assert live(tmp_path / "cam") == (new / "manifest.json").read_bytes()


def test_rollback_to_a_previous_version_that_no_longer_verifies_is_refused(versions: tuple[Path, Path],
                                                                            tmp_path: Path) -> None:
    old, new = versions
    first = install(old, tmp_path, "cam")
    second = install(new, tmp_path, "cam")
    corrupt(tmp_path / "cam/versions" / first.version / MODEL)
    with pytest.raises(BundleError, match="does not match its sha256"):
        rollback(tmp_path / "cam")
    assert os.readlink(tmp_path / "cam/current") == f"versions/{second.version}"


def test_a_signed_copy_of_an_installed_bundle_is_a_new_version(versions: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    from edgeclip.runtime.signing import generate_keys, sign_bundle

    old, _ = versions
    unsigned = install(old, tmp_path, "cam")
    priv, pub, _ = generate_keys(tmp_path / "keys")
    sign_bundle(old, priv)
    signed = install(old, tmp_path, "cam", trusted_keys=[pub])  # the same manifest, now with manifest.sig
    assert signed.version != unsigned.version and signed.previous == unsigned.version
    assert (tmp_path / "cam/versions" / signed.version / "manifest.sig").is_file()


def test_rollback_honours_the_trust_policy(versions: tuple[Path, Path], tmp_path: Path) -> None:
    """A version installed before the device had a policy is unsigned: rolling back to it under the
    policy would leave a current version that nothing can load."""
    pytest.importorskip("cryptography")
    from edgeclip.runtime.signing import generate_keys, sign_bundle

    old, new = versions
    install(old, tmp_path, "cam")  # no policy yet: unsigned
    priv, pub, _ = generate_keys(tmp_path / "keys")
    sign_bundle(new, priv)
    second = install(new, tmp_path, "cam", trusted_keys=[pub])
    with pytest.raises(UnsignedBundleError):
        rollback(tmp_path / "cam", trusted_keys=[pub])
    assert os.readlink(tmp_path / "cam/current") == f"versions/{second.version}"
    proc = run_cli("rollback", str(tmp_path / "cam"), env={"EDGECLIP_TRUSTED_KEYS": str(pub)})
    assert proc.returncode == 1 and proc.stderr.startswith("Error:") and "not signed" in proc.stderr, proc.stderr
    proc = run_cli("rollback", str(tmp_path / "cam"), "--trusted-key", str(pub))
    assert proc.returncode == 1 and "not signed" in proc.stderr, proc.stderr
    assert os.readlink(tmp_path / "cam/current") == f"versions/{second.version}"
    assert rollback(tmp_path / "cam").previous == second.version  # without a policy it goes back


def test_cli_install_name_is_used_and_a_path_as_name_is_a_bad_argument(versions: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    into = tmp_path / "models"
    proc = run_cli("install", str(versions[0]), "--into", str(into), "--name", "cam")
    assert proc.returncode == 0, proc.stderr
    assert (into / "cam/current/manifest.json").is_file() and sorted(p.name for p in into.iterdir()) == ["cam"]
    proc = run_cli("install", str(versions[0]), "--into", str(into), "--name", "../outside")
    assert proc.returncode == 2 and proc.stderr.startswith("Error:") and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "outside").exists()
