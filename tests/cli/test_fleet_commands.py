"""keys, sign, install, rollback and the trust policy of classify/inspect/embed, as a user runs them:
real subprocesses, exit codes, `Error: ...` without a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgeclip.bundle import Bundle
from edgeclip.data.shapes import ShapesDataset
from tests.cli.test_missing_deps import assert_missing, run_without
from tests.conftest import run_cli

pytest.importorskip("cryptography")


def ok(proc) -> str:  # type: ignore[no-untyped-def]
    assert proc.returncode == 0, proc.stderr
    return str(proc.stdout)


def refused(proc, code: int, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.startswith("Error:") and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    for w in words:
        assert w in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("k")
    for who in ("publisher", "stranger"):
        assert "private:" in ok(run_cli("keys", "generate", "--out", str(root / who)))
    return {"publisher": root / "publisher", "stranger": root / "stranger"}


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("img") / "a.png"
    ShapesDataset("heldout", 1, 32)[0].image.save(path)
    return str(path)


@pytest.fixture()
def bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "b.edgeclip"))


def test_sign_then_classify_inspect_embed_under_a_policy(bundle: Path, keys: dict[str, Path], image: str,
                                                         tmp_path: Path) -> None:
    pub = str(keys["publisher"] / "edgeclip-signing.pub")
    key = str(keys["publisher"] / "edgeclip-signing.key")
    assert "signed with key" in ok(run_cli("sign", str(bundle), "--key", key))
    out = json.loads(ok(run_cli("classify", str(bundle), image, "--json", "--trusted-key", pub)))
    assert out["predictions"] and out["embedding_space"] == Bundle.open(bundle).manifest.embedding_space("image")
    assert "signature: verified" in ok(run_cli("inspect", str(bundle), "--trusted-key", pub))
    assert "not checked" in ok(run_cli("inspect", str(bundle)))
    ok(run_cli("embed", str(bundle), "--text", "a red circle", "--out", str(tmp_path / "t.npy"), "--trusted-key", pub))
    assert json.loads((tmp_path / "t.npy.sources.json").read_text())["embedding_space"] == \
        Bundle.open(bundle).manifest.embedding_space("text")
    # another key's public file, passed as policy; then the device-wide policy by environment
    stranger = str(keys["stranger"] / "edgeclip-signing.pub")
    refused(run_cli("classify", str(bundle), image, "--trusted-key", stranger), 1, "not trusted here")
    refused(run_cli("inspect", str(bundle), env={"EDGECLIP_TRUSTED_KEYS": stranger}), 1, "not trusted here")
    ok(run_cli("classify", str(bundle), image, env={"EDGECLIP_TRUSTED_KEYS": pub}))


def test_unsigned_and_changed_bundles_are_refused(bundle: Path, keys: dict[str, Path], image: str) -> None:
    pub = str(keys["publisher"] / "edgeclip-signing.pub")
    refused(run_cli("classify", str(bundle), image, "--trusted-key", pub), 1, "is not signed", "fix:")
    ok(run_cli("sign", str(bundle), "--key", str(keys["publisher"] / "edgeclip-signing.key")))
    (bundle / "manifest.json").write_bytes((bundle / "manifest.json").read_bytes() + b" ")
    refused(run_cli("classify", str(bundle), image, "--trusted-key", pub), 1, "changed after it was signed")


def test_adding_a_label_set_or_an_artifact_says_the_signature_is_gone(bundle: Path, keys: dict[str, Path],
                                                                     tiny_checkpoint: Path, tmp_path: Path) -> None:
    key = str(keys["publisher"] / "edgeclip-signing.key")
    ok(run_cli("sign", str(bundle), "--key", key))
    (tmp_path / "c.txt").write_text("circle\nsquare\n")
    proc = run_cli("labels", str(bundle), "--classes", str(tmp_path / "c.txt"), "--name", "two")
    assert proc.returncode == 0 and "sign the bundle again" in proc.stderr, proc.stderr
    assert not (bundle / "manifest.sig").exists()
    ok(run_cli("sign", str(bundle), "--key", key))
    proc = run_cli("export", str(tiny_checkpoint), "--target", "onnx", "--encoders", "image", "--out", str(bundle))
    assert proc.returncode == 0 and "sign the bundle again" in proc.stderr, proc.stderr
    assert not (bundle / "manifest.sig").exists()


def test_key_and_sign_mistakes(bundle: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    refused(run_cli("keys", "generate", "--out", str(keys["publisher"])), 2, "refusing to overwrite")
    refused(run_cli("sign", str(bundle), "--key", str(keys["publisher"] / "edgeclip-signing.pub")), 1,
            "not a PEM private key")
    refused(run_cli("sign", str(tmp_path / "nope"), "--key", str(keys["publisher"] / "edgeclip-signing.key")), 1,
            "bundle not found")


def test_install_and_rollback_commands(bundle: Path, keys: dict[str, Path], image: str, tmp_path: Path) -> None:
    pub = str(keys["publisher"] / "edgeclip-signing.pub")
    into = tmp_path / "models"
    refused(run_cli("install", str(bundle), "--into", str(into), "--trusted-key", pub), 1, "is not signed")
    assert not (into / "b" / "current").exists()
    ok(run_cli("sign", str(bundle), "--key", str(keys["publisher"] / "edgeclip-signing.key")))
    first = ok(run_cli("install", str(bundle), "--into", str(into), "--trusted-key", pub))
    assert f"{into / 'b'}: current" in first
    (tmp_path / "c.txt").write_text("circle\nsquare\n")
    ok(run_cli("labels", str(bundle), "--classes", str(tmp_path / "c.txt"), "--name", "two"))  # a new version
    assert "previous" in ok(run_cli("install", str(bundle), "--into", str(into)))  # no policy: unsigned is fine
    assert "two" in Bundle.open(into / "b").manifest.labels
    assert "rolled back" in ok(run_cli("rollback", str(into / "b")))
    assert "two" not in Bundle.open(into / "b").manifest.labels
    ok(run_cli("classify", str(into / "b"), image, "--trusted-key", pub))  # the signed version is live again
    refused(run_cli("rollback", str(tmp_path)), 1, "not an install folder")


def test_signing_without_cryptography_names_the_extra(bundle: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    assert_missing(run_without(["cryptography"], tmp_path, "keys", "generate", "--out", str(tmp_path / "k")),
                   "cryptography", "sign")
    ok(run_cli("sign", str(bundle), "--key", str(keys["publisher"] / "edgeclip-signing.key")))
    pub = str(keys["publisher"] / "edgeclip-signing.pub")
    assert_missing(run_without(["cryptography"], tmp_path, "inspect", str(bundle), "--trusted-key", pub),
                   "cryptography", "sign")
    ok(run_without(["cryptography"], tmp_path, "inspect", str(bundle)))  # no policy: no need for it
