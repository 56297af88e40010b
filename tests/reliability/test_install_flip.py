"""While install and rollback flip `current` back and forth, a reader in another process never
finds it missing or dangling: each flip is one rename onto the link, not remove-then-create.
(A reader that misses a non-atomic window cannot fail this test; one that sees a missing link
always does.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeclip.runtime.install import install, rollback
from tests.bundle.test_install import second_version

READER = """
import os, sys, time
link, stop = sys.argv[1], sys.argv[2]
looks = missing = 0
print("ready", flush=True)
while not os.path.exists(stop):
    looks += 1
    try:
        os.stat(os.path.join(link, "manifest.json"))  # follows current -> versions/<id>
    except FileNotFoundError:
        missing += 1
print(looks, missing, flush=True)
"""


@pytest.mark.skipif(os.name != "posix", reason="install needs POSIX")
def test_a_reader_never_sees_current_missing_during_flips(tiny_bundle: Path, tmp_path: Path) -> None:
    old = Path(shutil.copytree(tiny_bundle, tmp_path / "b1.edgeclip"))
    install(old, tmp_path, "cam")
    install(second_version(old, tmp_path / "b2.edgeclip"), tmp_path, "cam")
    stop = tmp_path / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(tmp_path / "cam/current"), str(stop)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip() == "ready"
        flips, t0 = 0, time.monotonic()
        while flips < 200 and time.monotonic() - t0 < 4:
            rollback(tmp_path / "cam")
            flips += 2  # current and previous each replaced
    finally:
        stop.touch()
        out, _ = reader.communicate(timeout=30)
    looks, missing = (int(v) for v in out.split())
    assert looks > 1000 and flips >= 50, (looks, flips)
    assert missing == 0, f"current was missing {missing} times in {looks} looks over {flips} link flips"
