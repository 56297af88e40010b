"""Atomic install with rollback: the live version is always complete and verifiable, whatever step
an install is killed at (SIGKILL, in a real subprocess), and rollback restores the previous one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeclip.bundle import Bundle
from edgeclip.errors import BundleError, InstallError, UnsignedBundleError
from edgeclip.runtime import ZeroShotClassifier
from edgeclip.runtime.install import install, rollback
from tests.bundle.conftest import edit_manifest

REPO = Path(__file__).resolve().parents[2]
KILL_AT = """
import os, signal, sys
from edgeclip.runtime.install import install
src, into, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
done = []
def step(name):
    if len(done) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    done.append(name)
install(src, into, "cam", on_step=step)
"""


def second_version(src: Path, dst: Path) -> Path:
    """A valid bundle with another manifest: the label set's first class renamed, its hash rewritten."""
    shutil.copytree(src, dst)
    meta = dst / "labels/default.json"
    m = json.loads(meta.read_text())
    m["classes"][0] = "disc"
    meta.write_text(json.dumps(m))
    digest = hashlib.sha256(meta.read_bytes()).hexdigest()
    edit_manifest(dst, lambda d: d["labels"]["default"]["files"].update({"labels/default.json": digest}))
    Bundle.open(dst).verify()
    return dst


@pytest.fixture()
def versions(bundle_copy: Path, tmp_path: Path) -> tuple[Path, Path]:
    return bundle_copy, second_version(bundle_copy, tmp_path / "b2.edgeclip")


def live(folder: Path) -> bytes:
    """The live version's manifest bytes, after checking that it opens and every file verifies."""
    b = Bundle.open(folder)
    b.verify()
    assert b.manifest_bytes is not None
    return b.manifest_bytes


def leftovers(folder: Path) -> list[str]:
    """Staging folders and temp links in an install folder (its lock file is no leftover)."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != ".lock"]


def test_install_update_and_rollback(versions: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = versions
    first = install(old, tmp_path / "models", "cam")
    folder = tmp_path / "models/cam"
    assert first.previous is None and os.readlink(folder / "current") == f"versions/{first.version}"
    assert ZeroShotClassifier.load(folder).classes[0] == "circle"  # load follows `current`
    second = install(new, tmp_path / "models", "cam")
    assert (second.previous, ZeroShotClassifier.load(folder).classes[0]) == (first.version, "disc")
    back = rollback(folder)
    assert (back.version, back.previous) == (first.version, second.version)
    assert ZeroShotClassifier.load(folder).classes[0] == "circle"
    assert live(folder) == (old / "manifest.json").read_bytes()
    rollback(folder)  # and forward again
    assert ZeroShotClassifier.load(folder).classes[0] == "disc"
    install(old, tmp_path / "models", "cam")
    third = install(new, tmp_path / "models", "cam")
    assert sorted(p.name for p in (folder / "versions").iterdir()) == sorted({third.version, first.version})


def test_rollback_without_a_previous_version_is_refused(bundle_copy: Path, tmp_path: Path) -> None:
    install(bundle_copy, tmp_path, "cam")
    with pytest.raises(InstallError, match="no previous version"):
        rollback(tmp_path / "cam")
    with pytest.raises(InstallError, match="not an install folder"):
        rollback(tmp_path)


def test_one_install_at_a_time(versions: tuple[Path, Path], tmp_path: Path) -> None:
    import fcntl

    old, new = versions
    install(old, tmp_path, "cam")
    with open(tmp_path / "cam/.lock") as held:  # another process's install, as the kernel sees it
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(InstallError, match="another install or rollback"):
            install(new, tmp_path, "cam")
        with pytest.raises(InstallError, match="another install or rollback"):
            rollback(tmp_path / "cam")
    assert install(new, tmp_path, "cam").previous  # released: it goes ahead


def test_a_tampered_bundle_never_goes_live(versions: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = versions
    install(old, tmp_path, "cam")
    model = new / "image/onnx-fp32/model.onnx"
    model.write_bytes(model.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(BundleError, match="does not match its sha256"):
        install(new, tmp_path, "cam")
    assert live(tmp_path / "cam") == (old / "manifest.json").read_bytes()
    assert leftovers(tmp_path / "cam") == []  # no staging folder left


def test_an_unsigned_bundle_never_goes_live_under_a_policy(versions: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    from edgeclip.runtime.signing import generate_keys, sign_bundle

    old, new = versions
    priv, pub, _ = generate_keys(tmp_path / "keys")
    sign_bundle(old, priv)
    install(old, tmp_path, "cam", trusted_keys=[pub])
    with pytest.raises(UnsignedBundleError):
        install(new, tmp_path, "cam", trusted_keys=[pub])
    assert live(tmp_path / "cam") == (old / "manifest.json").read_bytes()
    assert ZeroShotClassifier.load(tmp_path / "cam", trusted_keys=[pub]).classes[0] == "circle"


def test_sigkill_at_every_step_leaves_a_complete_live_version(versions: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = versions
    start = tmp_path / "start"
    install(old, start, "cam")
    shutil.copytree(start, tmp_path / "dry", symlinks=True)
    steps: list[str] = []
    install(new, tmp_path / "dry", "cam", on_step=steps.append)  # the steps an update takes, in order
    assert steps[-5:] == ["previous link made", "previous link renamed", "current link made",
                          "current link renamed", "pruned"] and len(steps) > 10
    flipped = steps.index("current link renamed")
    old_bytes, new_bytes = (old / "manifest.json").read_bytes(), (new / "manifest.json").read_bytes()
    for k, name in enumerate(steps):  # killed in step k's report, so steps[0..k] have happened
        into = tmp_path / f"k{k}"
        shutil.copytree(start, into, symlinks=True)
        proc = subprocess.run([sys.executable, "-c", KILL_AT, str(new), str(into), str(k)], cwd=REPO,
                              capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.returncode == -9, (k, name, proc.stderr)  # it was killed, at this step
        assert live(into / "cam") == (new_bytes if k >= flipped else old_bytes), (k, name)
        install(new, into, "cam")  # the next install completes and cleans what the crash left
        assert live(into / "cam") == new_bytes
        assert rollback(into / "cam").version and live(into / "cam") == old_bytes, (k, name)
        assert leftovers(into / "cam") == []
        shutil.rmtree(into)
