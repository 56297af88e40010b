"""Atomic install with rollback: a device never runs a half-copied or unverified bundle.

An install folder::

    INTO/NAME/
      current  -> versions/<id>     the live version (what `ZeroShotClassifier.load(INTO/NAME)` opens)
      previous -> versions/<id>     kept for `rollback`
      versions/<id>/                complete, verified bundles (<id>: sha256 of manifest + signature, 16 digits)

`install` copies the files the manifest lists into a staging folder, verifies every one of them (and
the signature, under a trust policy) there, renames the folder into versions/, points `previous` at
the live version and then `current` at the new one. Each link is replaced by renaming a new link onto
it, which is atomic: a crash at any point leaves the old version live (or, after the last rename, the
new one), never a mix. What a crash leaves behind (a staging folder, a temp link) is removed by the
next install. One install or rollback runs at a time per folder (a lock file; POSIX, as the links).

Changing an installed version (a label set computed on the device) never writes into it: `edit_installed`
copies it, edits the copy, and installs that as a new version by the same path (copy-on-write), so the
version that was live stays byte-identical as `previous`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgeclip.bundle import CURRENT, MANIFEST, SIGNATURE, VERSIONS, Bundle, installed_folder
from edgeclip.errors import BundleError, ConfigError, InstallError
from edgeclip.runtime.signing import TrustedKeys, read_signature, trust_policy, verify_signature

try:  # flock is POSIX only, as is replacing a symlink atomically: elsewhere every entry point refuses
    import fcntl
except ImportError:
    fcntl = None  # type: ignore[assignment]

PREVIOUS, LOCK = "previous", ".lock"
STAGING_PREFIX, LINK_PREFIX = ".staging-", ".link-"
Step = Callable[[str], None]  # told the name of each step as it completes (progress; crash tests)
Edit = Callable[[Bundle], None]  # changes a staged copy of a bundle (files and manifest) in place


@dataclass(frozen=True)
class Installed:
    folder: Path  # INTO/NAME
    version: str  # now current
    previous: str | None


def install(bundle: str | os.PathLike[str], into: str | os.PathLike[str], name: str | None = None,
            trusted_keys: TrustedKeys | None = None, on_step: Step | None = None) -> Installed:
    """Install BUNDLE as INTO/NAME's current version (NAME: the bundle folder's name without its
    suffix); the version it replaces becomes `previous`."""
    _require_posix()
    source = Bundle.open(bundle)  # refuses paths that escape and symlinks before anything is copied
    name = name if name is not None else Path(bundle).name.split(".")[0]
    _check_name(name)  # the name as given: INTO/'../x' has the plain folder name 'x'
    folder = Path(into) / name
    (folder / VERSIONS).mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        _clean_leftovers(folder)
        return _install(source, folder, trusted_keys, on_step or (lambda _: None))


def _install(source: Bundle, folder: Path, trusted_keys: TrustedKeys | None, step: Step,
             edit: Edit | None = None) -> Installed:
    version = _version(source)
    if edit is not None or not (folder / VERSIONS / version).is_dir():
        version = _stage_version(source, folder, trusted_keys, step, edit)
    else:  # installed before (e.g. re-installing the version rolled back from): check it again
        _check(Bundle.open(folder / VERSIONS / version), trusted_keys)
    old = _target(folder / CURRENT)
    if old is not None and old != version:
        _point(folder, PREVIOUS, old, step)
    _point(folder, CURRENT, version, step)
    _prune(folder)
    step("pruned")
    return Installed(folder, version, _target(folder / PREVIOUS))


def _version(bundle: Bundle) -> str:
    """The manifest's sha256 (16 digits), with its signature's: a signed copy is another version than
    an unsigned one, so installing it never reuses the unsigned copy."""
    assert bundle.manifest_bytes is not None  # set by open
    digest = hashlib.sha256(bundle.manifest_bytes)
    signature = bundle.root / SIGNATURE
    if signature.is_file() and not signature.is_symlink():  # a linked one is refused when staged
        digest.update(signature.read_bytes())
    return digest.hexdigest()[:16]


def _check(bundle: Bundle, trusted_keys: TrustedKeys | None) -> None:
    verify_signature(bundle, trusted_keys)
    bundle.verify()


def _stage_version(source: Bundle, folder: Path, trusted_keys: TrustedKeys | None, step: Step,
                   edit: Edit | None) -> str:
    """Copy `source` into a staging folder, apply `edit` to the copy, verify what is there and rename
    it into versions/; returns its version. Nothing live is touched."""
    staged = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder))
    try:
        _stage(source, staged, step)
        if edit is not None:
            edit(Bundle.open(staged))
            step("edited")
        checked = Bundle.open(staged)  # what was copied, not the source (which could change meanwhile)
        _check(checked, trusted_keys)
        step("verified")
        final = folder / VERSIONS / _version(checked)
        if final.is_dir():  # an edit that changed nothing: that version is already here
            shutil.rmtree(staged)
            return final.name
        staged.rename(final)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)  # refused or failed: the live version was never touched
        raise
    _fsync(final.parent)
    step("moved")
    return final.name


def edit_installed(folder: str | os.PathLike[str], edit: Edit, base: str | None = None,
                   trusted_keys: TrustedKeys | None = None, on_step: Step | None = None) -> Installed:
    """Copy-on-write change of INTO/NAME: stage a copy of the current version, apply `edit` to it,
    verify it and make it current; the version it was made from is kept, unchanged, as `previous`.
    `base`: the version the edit was computed from (refused if another install replaced it since)."""
    _require_posix()
    folder = Path(folder)
    current = _target(folder / CURRENT)
    if current is None:
        raise InstallError(f"{folder} is not an install folder (no '{CURRENT}' link)",
                           fix="pass INTO/NAME as given to `edgeclip install`")
    with _locked(folder):
        _clean_leftovers(folder)
        current = _target(folder / CURRENT)
        if base is not None and current != base:
            raise InstallError(f"{folder}'s current version changed (now {current}, was {base}) while this "
                               "change was computed", fix="load the install again and repeat the change")
        assert current is not None
        source = Bundle.open(folder / VERSIONS / current)
        # the changed manifest is unsigned and a device holds no signing key: a signed install (or one under
        # a trust policy) would stop loading, so the change belongs where the key is
        if read_signature(source) is not None or trust_policy(trusted_keys) is not None:
            raise InstallError(f"{folder} is signed (or under a trust policy); a changed version would be unsigned",
                               fix="make the change where the signing key is (edgeclip labels BUNDLE ...; edgeclip "
                                   "sign BUNDLE --key KEY), then edgeclip install the signed bundle")
        return _install(source, folder, trusted_keys, on_step or (lambda _: None), edit)


def save_bundle_change(bundle: Bundle, edit: Edit) -> Bundle:
    """Apply `edit` to `bundle` and return the bundle that holds it: `bundle` itself when it is a plain
    folder; when it is an installed version, a new version made current by `edit_installed`."""
    folder = installed_folder(bundle.root)
    if folder is None:
        edit(bundle)
        return bundle
    done = edit_installed(folder, edit, base=bundle.root.name)
    return Bundle.open(folder / VERSIONS / done.version)


def rollback(folder: str | os.PathLike[str], trusted_keys: TrustedKeys | None = None) -> Installed:
    """Make INTO/NAME's previous version current again (and the current one previous). The version
    rolled back to is checked as an install checks it, under `trusted_keys` (default: the
    EDGECLIP_TRUSTED_KEYS policy): one installed before the device had a policy would not load."""
    _require_posix()
    folder = Path(folder)
    if _target(folder / CURRENT) is None:
        raise InstallError(f"{folder} is not an install folder (no '{CURRENT}' link)",
                           fix="pass INTO/NAME as given to `edgeclip install`")
    with _locked(folder):
        return _rollback(folder, trusted_keys)


def _require_posix() -> None:
    """The atomic flip (rename onto a symlink) and the lock (flock) need a POSIX system."""
    if os.name != "posix" or fcntl is None:
        raise InstallError("edgeclip install and rollback need a POSIX system (Linux, macOS): they flip a "
                           "symlink atomically and lock with flock",
                           fix="on this system, copy the bundle folder and load it directly "
                               "(ZeroShotClassifier.load(BUNDLE)); install on the Linux or macOS device")


def _rollback(folder: Path, trusted_keys: TrustedKeys | None) -> Installed:
    current, previous = _target(folder / CURRENT), _target(folder / PREVIOUS)
    assert current is not None
    if previous is None or previous == current or not (folder / VERSIONS / previous).is_dir():
        raise InstallError(f"{folder} has no previous version to roll back to",
                           fix="install the version you want with `edgeclip install`")
    _check(Bundle.open(folder / VERSIONS / previous), trusted_keys)
    _point(folder, CURRENT, previous)
    _point(folder, PREVIOUS, current)
    return Installed(folder, previous, current)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold folder/.lock; the kernel releases it when the holder dies, so a crash never leaves it held."""
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InstallError(f"another install or rollback of {folder} is running",
                               fix="wait for it to finish, then try again") from None
        yield
    finally:
        os.close(fd)


def _check_name(name: str) -> None:
    if not name or name.startswith(".") or name in (CURRENT, PREVIOUS, VERSIONS) or os.sep in name:
        raise ConfigError(f"install name {name!r} is not usable", fix="pass --name with a plain folder name")


def _stage(source: Bundle, staged: Path, step: Step) -> None:
    """Copy the manifest (the exact bytes that were parsed), its signature, and every listed file."""
    staged.chmod(0o755)  # mkdtemp makes it private; an installed bundle is an ordinary folder
    step("staging folder made")
    files = [rel for _, rel in source.manifest.paths() if rel not in {a.path for a in source.manifest.artifacts}]
    for rel in dict.fromkeys(files):
        src = source.resolve(rel)
        if not src.is_file():
            raise BundleError(f"bundle file missing: {rel}", fix="copy the bundle whole, or export it again")
        _copy(src, staged / rel)
        step(f"copied {rel}")
    assert source.manifest_bytes is not None
    _write(staged / MANIFEST, source.manifest_bytes)
    if read_signature(source) is not None:  # refuses a linked or malformed one before copying it
        _copy(source.root / SIGNATURE, staged / SIGNATURE)
    _fsync(staged)
    step("staged")


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync(directory: Path) -> None:
    """Make a rename inside `directory` durable (a power cut must not undo it)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _target(link: Path) -> str | None:
    """The version a link names, or None when there is no link."""
    if not link.is_symlink():
        return None
    return Path(os.readlink(link)).name


def _point(folder: Path, link: str, version: str, step: Step = lambda _: None) -> None:
    """Atomically make folder/link -> versions/<version>: a new link under a temp name, renamed onto it."""
    tmp = folder / f"{LINK_PREFIX}{link}-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(f"{VERSIONS}/{version}", tmp)  # relative: the install folder may be moved
    step(f"{link} link made")
    os.replace(tmp, folder / link)
    _fsync(folder)
    step(f"{link} link renamed")


def _clean_leftovers(folder: Path) -> None:
    """Staging folders and temp links an interrupted install left."""
    for p in folder.iterdir():
        if p.name.startswith(LINK_PREFIX):
            p.unlink()
        elif p.name.startswith(STAGING_PREFIX):
            shutil.rmtree(p, ignore_errors=True)


def _prune(folder: Path) -> None:
    """Keep the current and the previous version; remove older ones."""
    keep = {_target(folder / CURRENT), _target(folder / PREVIOUS)}
    for p in (folder / VERSIONS).iterdir():
        if p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)
