"""The isolated environment that runs Rockchip's `rknn-toolkit2` (the .rknn builder and its PC simulator).

The toolkit pins numpy <= 1.26.4, onnx <= 1.18 and torch <= 2.4 and imports torch at import time, so it
cannot share edgeclip's environment. edgeclip creates it once, cached under the user cache, or uses the
interpreter named by `EDGECLIP_RKNN_PYTHON` / `--toolkit-python`. The registry's torch 2.4 wheel fails to
import without CUDA libraries, so torch comes in as the CPU 2.13 wheel without its dependencies (the
toolkit only needs it importable). edgeclip talks to that interpreter through files and JSON (see
rknn_worker.py), never pickle.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import weakref
from pathlib import Path
from typing import IO, Any

import numpy as np

from edgeclip._io import write_json
from edgeclip.errors import EdgeclipError, MissingDependencyError

log = logging.getLogger("edgeclip.rknn")
ENV_VAR = "EDGECLIP_RKNN_PYTHON"
TOOLKIT = "rknn-toolkit2==2.5.0"
# what the toolkit imports, at versions it accepts (its own requirements pull a CUDA torch 2.4)
TOOLKIT_DEPS = ("numpy==1.26.4", "onnx==1.18.0", "onnxruntime<1.23", "protobuf==4.25.4", "scipy", "psutil",
                "ruamel.yaml", "tqdm", "fast-histogram", "opencv-python-headless", "pillow")
TORCH_CPU = ("torch==2.13.*",)
TORCH_DEPS = ("sympy", "networkx", "jinja2", "filelock", "fsspec", "typing_extensions")
# the installation steps: (pip arguments, without dependencies?)
STEPS: tuple[tuple[tuple[str, ...], bool], ...] = (
    ((TOOLKIT,), True), (TOOLKIT_DEPS, False), (TORCH_CPU, True), (TORCH_DEPS, False),
)
READY = "edgeclip-rknn-env.json"  # written last: a half-built environment is never used
INSTALL_TIMEOUT_S = 1800


def default_env_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeclip" / "rknn-toolkit2"


def env_python(env: Path) -> Path:
    return env / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def missing_env_error(detail: str) -> MissingDependencyError:
    return MissingDependencyError(
        f"the RKNN toolkit environment is not available: {detail}",
        fix=f"create it with `python -m edgeclip.runtime.backends.rknn_toolkit` (about two minutes, once), or point "
            f"{ENV_VAR} / --toolkit-python at a Python with {TOOLKIT} installed",
    )


def toolkit_python(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The interpreter that runs rknn-toolkit2: `explicit`, else $EDGECLIP_RKNN_PYTHON, else the cached
    environment. Raises MissingDependencyError (with the command that creates it) when there is none."""
    named = explicit or os.environ.get(ENV_VAR)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise missing_env_error(f"{path} (from {'--toolkit-python' if explicit else ENV_VAR}) does not exist")
        return path
    env = default_env_dir()
    if not is_ready(env):
        raise missing_env_error(f"{env} has not been created (or was made by an older edgeclip)")
    return env_python(env)


def _record() -> dict[str, Any]:
    return {"toolkit": TOOLKIT, "steps": [list(p) for p, _ in STEPS]}


def is_ready(env: Path) -> bool:
    """Finished, by the steps this edgeclip uses (a changed recipe finishes the environment again)."""
    try:
        return bool(json.loads((env / READY).read_text()) == _record())
    except (OSError, ValueError):
        return False


def ensure_toolkit_python(explicit: str | os.PathLike[str] | None = None) -> Path:
    """toolkit_python(), creating the cached environment on first use when none was named."""
    if explicit or os.environ.get(ENV_VAR) or is_ready(default_env_dir()):
        return toolkit_python(explicit)
    log.warning("creating the RKNN toolkit environment in %s (once; about two minutes)", default_env_dir())
    return create_env()


def has_toolkit_env() -> bool:
    try:
        toolkit_python()
    except MissingDependencyError:
        return False
    return True


def create_env(env: Path | None = None, python: str = sys.executable) -> Path:
    """Create (or finish) the toolkit environment at `env`; returns its interpreter. Cached: a finished
    environment is returned at once. Takes about a minute with a warm package cache."""
    env = env or default_env_dir()
    if is_ready(env):
        return env_python(env)
    if not env_python(env).is_file():
        _run([python, "-m", "venv", "--clear", str(env)], "create the venv")
    pip = [str(env_python(env)), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    for packages, no_deps in STEPS:
        _run([*pip, *(["--no-deps"] if no_deps else []), *packages], f"install {' '.join(packages)}")
    _run([str(env_python(env)), "-c", "from rknn.api import RKNN"], "import rknn-toolkit2")
    write_json(env / READY, _record())
    return env_python(env)


def _run(cmd: list[str], what: str) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise missing_env_error(f"could not {what}: {e}") from e
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise missing_env_error(f"could not {what}: {' / '.join(tail)}")


WORKER = Path(__file__).with_name("rknn_worker.py")


class ToolkitWorker:
    """A long-lived rknn_worker.py process in the toolkit environment; arrays go through .npy files."""

    def __init__(self, python: str | os.PathLike[str] | None = None) -> None:
        """`python`: the toolkit interpreter (None: $EDGECLIP_RKNN_PYTHON, else the cached environment)."""
        self.python = Path(python) if python else toolkit_python()
        self.scratch = Path(tempfile.mkdtemp(prefix="edgeclip-rknn-"))
        self.log_path = self.scratch / "toolkit.log"
        self._log = open(self.log_path, "w")  # the toolkit is verbose; kept for error messages
        self._lock = threading.Lock()
        # -I: the worker's folder (which holds edgeclip's rknn.py) and PYTHONPATH stay off its sys.path
        self.proc = subprocess.Popen([str(self.python), "-I", str(WORKER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=self.scratch)
        # the worker and its scratch files go with this object, closed or not
        self._finalizer = weakref.finalize(self, _shutdown, self.proc, self._log, self.scratch)

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        with self._lock:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            try:
                self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
                self.proc.stdin.flush()
                line = self.proc.stdout.readline()
            except OSError:
                line = ""
        if not line:
            raise EdgeclipError(f"the RKNN toolkit worker ({self.python}) exited during '{op}': {self._tail()}",
                                fix=f"check the toolkit environment; its log is {self.log_path}")
        reply: dict[str, Any] = json.loads(line)
        if not reply.pop("ok"):
            raise EdgeclipError(f"rknn-toolkit2 '{op}' failed: {reply['error']}; {self._tail()}",
                                fix=f"the toolkit's full log is {self.log_path}")
        return reply

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Rows of x through the model the last build op left in the simulator -> [N, D] float32."""
        src, dst = self.scratch / "in.npy", self.scratch / "out.npy"
        np.save(src, np.ascontiguousarray(x), allow_pickle=False)
        self.call("infer", inputs=str(src), out=str(dst))
        out: np.ndarray = np.load(dst, allow_pickle=False)
        return out

    def _tail(self) -> str:
        self._log.flush()
        lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        return " / ".join(lines[-3:]) or "(no log)"

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> ToolkitWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shutdown(proc: subprocess.Popen[str], log: IO[str], scratch: Path) -> None:
    if proc.poll() is None:
        if proc.stdin is not None:
            proc.stdin.close()  # end of requests: the worker leaves its loop
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()
    log.close()
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    print(create_env())
