"""Atomic install with rollback, and label sets added to an install copy-on-write (a new version; the
one that was live stays byte-identical for rollback). The SIGKILL-at-every-step matrix is in
tests/reliability/test_install.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgeclip.bundle import Bundle
from edgeclip.errors import BundleError, InstallError, UnsignedBundleError
from edgeclip.runtime import ZeroShotClassifier
from edgeclip.runtime.install import edit_installed, install, rollback
from tests.bundle.conftest import edit_manifest
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[2]


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


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root, by relative path: to prove a folder was not touched."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


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


def test_labels_on_an_install_make_a_new_version_and_keep_the_live_one_byte_identical(
        bundle_copy: Path, tmp_path: Path) -> None:
    first = install(bundle_copy, tmp_path, "cam")
    folder, before = tmp_path / "cam", tree_bytes(tmp_path / "cam/versions" / first.version)
    (tmp_path / "classes.txt").write_text("moon\nstar\n")
    done = run_cli("labels", str(folder), "--classes", str(tmp_path / "classes.txt"), "--name", "sky")
    assert done.returncode == 0, done.stderr
    now, prev = os.readlink(folder / "current"), os.readlink(folder / "previous")
    assert prev == f"versions/{first.version}" and now != prev  # a new version, made current
    assert f"new version of {folder} ({now.split('/')[1]}), now current" in done.stdout  # and it says so
    assert tree_bytes(folder / "versions" / first.version) == before  # the old one untouched
    Bundle.open(folder).verify()
    assert ZeroShotClassifier.load(folder, labels="sky").classes == ["moon", "star"]
    clf = ZeroShotClassifier.load(folder, labels=None)  # the Python API takes the same path
    clf.set_labels(["sun", "cloud"])
    clf.save_labels("day")
    assert clf.bundle.root == (folder / "current").resolve() and "day" in clf.bundle.manifest.labels
    assert ZeroShotClassifier.load(folder, labels="day").classes == ["sun", "cloud"]
    assert rollback(folder).version == now.split("/")[1]  # previous: the version with 'sky' only
    assert sorted(Bundle.open(folder).manifest.labels) == ["default", "sky"]
    rollback(folder)  # and forward again
    assert sorted(Bundle.open(folder).manifest.labels) == ["day", "default", "sky"]


def test_labels_on_a_signed_or_moved_install_are_refused(versions: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = versions
    folder = tmp_path / "cam"
    first = install(old, tmp_path, "cam")
    clf = ZeroShotClassifier.load(folder, labels=None)
    install(new, tmp_path, "cam")  # another install replaced what clf was loaded from
    clf.set_labels(["sun", "cloud"])
    with pytest.raises(InstallError, match="current version changed") as e:
        clf.save_labels("day")
    assert "load the install again" in (e.value.fix or "")
    pytest.importorskip("cryptography")
    from edgeclip.runtime.signing import generate_keys, sign_bundle

    priv, _, _ = generate_keys(tmp_path / "keys")
    sign_bundle(old, priv)
    signed = install(old, tmp_path, "cam")
    before = tree_bytes(folder / "versions" / signed.version)
    clf = ZeroShotClassifier.load(folder, labels=None)
    clf.set_labels(["sun", "cloud"])
    with pytest.raises(InstallError, match="would be unsigned") as e:
        clf.save_labels("day")
    assert "edgeclip sign" in (e.value.fix or "")
    assert os.readlink(folder / "current") == f"versions/{signed.version}" != f"versions/{first.version}"
    assert tree_bytes(folder / "versions" / signed.version) == before and leftovers(folder) == []


def test_install_on_a_non_posix_system_is_a_typed_refusal(bundle_copy: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """No non-POSIX machine here: os.name is patched, and a fresh interpreter runs without fcntl (as
    on Windows). Each entry point refuses before touching anything."""
    install(bundle_copy, tmp_path, "cam")
    calls: dict[str, Any] = {"install": lambda: install(bundle_copy, tmp_path / "b", "cam"),
                             "rollback": lambda: rollback(tmp_path / "cam"),
                             "edit": lambda: edit_installed(tmp_path / "cam", lambda b: None)}
    raised: dict[str, BaseException | None] = {}
    with monkeypatch.context() as m:  # restored before anything is asserted
        m.setattr(os, "name", "nt")
        for what, call in calls.items():
            try:
                raised[what] = call()
            except Exception as err:
                raised[what] = err
    for what, got in raised.items():
        assert isinstance(got, InstallError) and "need a POSIX system" in got.message, (what, got)
        assert "ZeroShotClassifier.load(BUNDLE)" in (got.fix or ""), what
    assert not (tmp_path / "b").exists()
    code = ("import sys; sys.modules['fcntl'] = None\nimport edgeclip.runtime\n"
            "from edgeclip.errors import InstallError\nfrom edgeclip.runtime.install import install\n"
            "try: install(sys.argv[1], sys.argv[2])\n"
            "except InstallError as e: print(type(e).__name__, e.message)")
    done = subprocess.run([sys.executable, "-c", code, str(bundle_copy), str(tmp_path / "c")], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.stdout.startswith("InstallError edgeclip install and rollback need a POSIX"), done.stderr
    assert not (tmp_path / "c").exists()
