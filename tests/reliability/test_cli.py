"""Every command, wrong arguments (exit 2 + usage) and bad files (typed exit code + `Error: ...`),
never a traceback. The default run drives the CLI in-process (click's CliRunner, milliseconds per
case); the slow run repeats the whole matrix in subprocesses, exactly as a user runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edgeclip.cli import COMMANDS, cli
from tests.conftest import run_cli

USAGE, ERROR = "Usage:", "Error:"

# (command line with {files} placeholders, exit code, text stderr must contain)
MATRIX: list[tuple[str, int, str]] = [
    # wrong arguments
    ("trian", 2, "No such command"),
    ("train --steps many", 2, USAGE),
    ("train --bogus", 2, USAGE),
    ("train --precision int3", 2, USAGE),
    ("import", 2, USAGE),
    ("import {garbage_pt}", 2, "--out"),
    ("export", 2, USAGE),
    ("export {bad_ckpt}", 2, "--out"),
    ("export {bad_ckpt} --out {new} --calib-size 1", 2, USAGE),
    ("classify", 2, USAGE),
    ("classify {bad_bundle}", 2, "IMAGES"),
    ("classify {bad_bundle} x.png --top-k 0", 2, USAGE),
    ("embed", 2, USAGE),
    ("embed {bad_bundle}", 2, "--out"),
    ("embed {bad_bundle} --out {new}/e.npy", 2, "either --images or --text"),
    ("labels", 2, USAGE),
    ("labels {bad_bundle} --name x", 2, "--classes"),
    ("labels {bad_bundle} --classes {classes}", 2, "--name"),
    ("inspect", 2, USAGE),
    ("inspect {bad_bundle} --bogus", 2, USAGE),
    ("inspect {bad_bundle} {bad_bundle} {bad_bundle}", 2, "give one bundle, or two"),
    ("keys generate", 2, "--out"),
    ("keys generate --bogus", 2, USAGE),
    ("sign", 2, USAGE),
    ("sign {bad_bundle}", 2, "--key"),
    ("install", 2, USAGE),
    ("install {bad_bundle}", 2, "--into"),
    ("rollback", 2, USAGE),
    ("bench", 2, USAGE),
    ("bench {bad_bundle} --warmup -1", 2, USAGE),
    ("bench {bad_bundle} --baseline tensorflow", 2, USAGE),
    ("quickstart --steps 0", 2, USAGE),
    ("quickstart --bogus", 2, USAGE),
    # bad files
    ("train --resume latest --out {empty}", 1, "no checkpoint under"),
    ("train --init {bad_ckpt} --out {new}", 1, "config.json is invalid"),
    ("train --data {garbage_pt} --steps 1 --out {new}", 1, ERROR),
    ("import {garbage_pt} --out {new}", 1, "refused by weights-only loading"),
    ("import {missing} --out {new}", 1, "weights not found"),
    ("export {missing} --out {new}", 1, "checkpoint not found"),
    ("export {bad_ckpt} --out {new}", 1, "config.json is invalid"),
    ("classify {missing} x.png", 1, "bundle not found"),
    ("classify {bad_bundle} x.png", 1, "not valid JSON"),
    ("embed {bad_bundle} --text hi --out {new}/e.npy", 1, "not valid JSON"),
    ("labels {bad_bundle} --classes {missing} --name x", 2, "classes file not found"),
    ("labels {bad_bundle} --classes {classes} --name x", 1, "not valid JSON"),
    ("inspect {bad_bundle}", 1, "not valid JSON"),
    ("inspect {huge_bundle}", 1, "larger than"),
    ("inspect {empty}", 1, "manifest.json is missing"),
    ("keys generate --out {garbage_pt}", 1, "is not a folder"),
    ("sign {bad_bundle} --key {garbage_pt}", 1, "not a PEM private key"),
    ("sign {bad_bundle} --key {missing}", 1, "private key file not found"),
    ("install {bad_bundle} --into {new}", 1, "not valid JSON"),
    ("install {missing} --into {new}", 1, "bundle not found"),
    ("rollback {empty}", 1, "not an install folder"),
    ("bench {missing} --baseline none", 1, "bundle not found"),
    ("bench {bad_bundle} --baseline none --compare {garbage_pt}", 1, "cannot read bench report"),
    ("quickstart --out {bad_bundle}", 2, "not a quickstart directory"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from edgeclip.bundle import MAX_MANIFEST_BYTES

    root = tmp_path_factory.mktemp("cli")
    (root / "bad.edgeclip").mkdir()
    (root / "bad.edgeclip/manifest.json").write_text("{oops")
    (root / "huge.edgeclip").mkdir()
    with open(root / "huge.edgeclip/manifest.json", "wb") as f:
        f.truncate(MAX_MANIFEST_BYTES + 1)
    (root / "ckpt").mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (root / "ckpt" / name).write_text("not what it should be")
    (root / "garbage.pt").write_bytes(b"\x80\x04garbage")
    (root / "classes.txt").write_text("cat\ndog\n")
    (root / "empty").mkdir()
    return {"bad_bundle": str(root / "bad.edgeclip"), "huge_bundle": str(root / "huge.edgeclip"),
            "bad_ckpt": str(root / "ckpt"), "garbage_pt": str(root / "garbage.pt"),
            "classes": str(root / "classes.txt"), "empty": str(root / "empty"), "missing": str(root / "missing"),
            "new": str(root / "new")}


def _ids() -> list[str]:
    return [f"{i:02d}-{line.split()[0]}" for i, (line, _, _) in enumerate(MATRIX)]


def test_matrix_covers_every_command() -> None:
    used = {line.split()[0] for line, _, _ in MATRIX}
    assert set(COMMANDS) <= used
    for name in COMMANDS:
        mine = [(code, needle) for line, code, needle in MATRIX if line.split()[0] == name]
        assert any(needle == USAGE for _, needle in mine), f"{name}: no wrong-argument case"
        assert any(code == 1 or needle not in (USAGE, "--out") for code, needle in mine), f"{name}: no bad file"


@pytest.mark.parametrize("case", range(len(MATRIX)), ids=_ids())
def test_cli_matrix_in_process(case: int, files: dict[str, str], record_property: Any) -> None:
    line, code, needle = MATRIX[case]
    args = line.format(**files).split()
    result = CliRunner().invoke(cli, args, prog_name="edgeclip")
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    record_property("inputs", 1)
    record_property("crashes", int(crashed))
    assert not crashed, f"{type(result.exception).__name__}: {result.exception}"
    assert result.exit_code == code, (result.exit_code, result.output)
    assert needle in result.output and "Traceback" not in result.output, result.output
    assert not Path(files["new"]).exists() or line.startswith("train")


@pytest.mark.slow
@pytest.mark.parametrize("case", range(len(MATRIX)), ids=_ids())
def test_cli_matrix_subprocess(case: int, files: dict[str, str], record_property: Any) -> None:
    line, code, needle = MATRIX[case]
    proc = run_cli(*line.format(**files).split())
    record_property("inputs", 0)  # the in-process matrix already counted this case: a repetition
    record_property("calls", 1)
    record_property("crashes", int("Traceback" in proc.stderr))
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert needle in proc.stderr and "Traceback" not in proc.stderr + proc.stdout, proc.stderr


def test_cli_smoke_subprocess(files: dict[str, str]) -> None:
    """Two real subprocesses in the default run: one usage error, one bad file."""
    proc = run_cli("classify", "--top-k", "0", files["bad_bundle"], "x.png")
    assert proc.returncode == 2 and USAGE in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("inspect", files["bad_bundle"])
    assert proc.returncode == 1 and proc.stderr.startswith(ERROR) and "Traceback" not in proc.stderr
