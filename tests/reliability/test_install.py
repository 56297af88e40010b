"""Atomic install under SIGKILL: a real subprocess is killed at every step of an update (a new bundle
installed, or a label set added on the device, copy-on-write), and afterwards the live version is
always complete and verifiable, either the old one or the new one, never a mix; the old version's
files are byte-identical; the next update completes and cleans up; rollback restores the old one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgeclip.errors import BundleError
from edgeclip.runtime.install import install, rollback
from tests.bundle.test_install import leftovers, live, second_version, tree_bytes

REPO = Path(__file__).resolve().parents[2]
# kill_at: the number of steps reported before the process SIGKILLs itself (in the next report)
KILL_AT = """
import json, os, signal, sys
from edgeclip.bundle import Bundle
from edgeclip.runtime.install import edit_installed, install
op, src, into, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
done = []
def step(name):
    if len(done) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    done.append(name)
def add_labels(bundle):  # what `edgeclip labels` writes: a label set and the manifest
    emb, meta = bundle.label_set("default")
    bundle.write_label_set("copy", emb, meta)
    bundle.save_manifest()
if op == "install":
    install(src, into, "cam", on_step=step)
else:
    edit_installed(os.path.join(into, "cam"), add_labels, on_step=step)
print(json.dumps(done))
"""


def update(op: str, new: Path, into: Path, kill_at: int = 1 << 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", KILL_AT, op, str(new), str(into), str(kill_at)],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.parametrize("op", ["install", "labels"])
def test_sigkill_at_every_step_leaves_a_complete_live_version(op: str, tiny_bundle: Path, tmp_path: Path,
                                                              record_property: Any) -> None:
    old = Path(shutil.copytree(tiny_bundle, tmp_path / "b1.edgeclip"))
    new = second_version(old, tmp_path / "b2.edgeclip")
    start = tmp_path / "start"
    first = install(old, start, "cam")
    old_files = tree_bytes(start / "cam/versions" / first.version)
    dry = Path(shutil.copytree(start, tmp_path / "dry", symlinks=True))
    ran = update(op, new, dry)
    assert ran.returncode == 0, ran.stderr
    steps: list[str] = json.loads(ran.stdout.strip().splitlines()[-1])  # the steps an update takes, in order
    assert steps[-1] == "pruned" and "current link renamed" in steps and len(steps) > 10, steps
    flipped = steps.index("current link renamed")
    old_bytes, new_bytes = live(start / "cam"), live(dry / "cam")
    assert old_bytes != new_bytes
    kills = broken = 0
    for k, name in enumerate(steps):  # killed in step k's report, so steps[0..k] have happened
        into = Path(shutil.copytree(start, tmp_path / f"k{k}", symlinks=True))
        proc = update(op, new, into, k)
        assert proc.returncode == -9, (k, name, proc.stderr)  # it was killed, at this step
        kills += 1
        expected = new_bytes if k >= flipped else old_bytes
        if not (live_or_none(into / "cam") == expected
                and tree_bytes(into / "cam/versions" / first.version) == old_files):
            broken += 1  # a mix, a live version that does not verify, or the old version changed
            continue
        assert update(op, new, into).returncode == 0  # the next update completes and cleans what the crash left
        assert live(into / "cam") == new_bytes
        assert rollback(into / "cam").version == first.version and live(into / "cam") == old_bytes, (k, name)
        assert leftovers(into / "cam") == []
        shutil.rmtree(into)
    for key, value in {"inputs": len(steps), "kills": kills, "corrupt_files": broken, "crashes": 0}.items():
        record_property(key, value)
    assert broken == 0


def live_or_none(folder: Path) -> bytes | None:
    try:
        return live(folder)
    except BundleError:
        return None
