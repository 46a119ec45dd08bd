"""Errors that reach users (CLI: one line, exit code 2; GUI: a notification), and the log file
plus one line that an unexpected failure (a bug) gets instead of a traceback."""

from __future__ import annotations

import os
import tempfile
import time
import traceback
from os import PathLike
from pathlib import Path


class MedadvError(ValueError):
    """Base class for user-facing errors. Subclasses ``ValueError`` so bad arguments
    raise what Python users expect.

    The message speaks of the problem, never of a front end's flags or controls; ``fix`` names
    the remedy as a key (see :data:`FIXES`) that the CLI turns into a flag and the GUI into a
    control.
    """

    def __init__(self, *args, fix: str | None = None):
        super().__init__(*args)
        self.fix = fix


class InputFileError(MedadvError):
    """A file or folder given by the user cannot be used. The message names the file."""

    def __init__(self, path: str | PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ModelError(MedadvError):
    """A model cannot be loaded or does not fit the data (channels, dims, task)."""


#: remedies a core error can point to (``MedadvError.fix``); each front end says how
FIXES = {
    "trust_code": "allow the model's code to run",
    "device_cpu": "run on the CPU",
    "weights": "give the model's weights file",
    "untargeted": "drop the target",
    "channels": "say which image channel feeds each model input",
}


# --------------------------------------------------------------------------- unexpected failures


def log_dir() -> Path:
    """Where error logs go: ``$MEDADV_LOG_DIR``, else ``$XDG_STATE_HOME/napari-medadv/logs``
    (``~/.local/state/napari-medadv/logs``)."""
    env = os.environ.get("MEDADV_LOG_DIR")
    if env:
        return Path(env).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or str(Path("~/.local/state").expanduser())
    return Path(state) / "napari-medadv" / "logs"


def write_error_log(exc: BaseException, header: str) -> Path | None:
    """The traceback of an unexpected failure in a new file under :func:`log_dir` (or the temp
    folder when that is not writable); its path, or None when nothing could be written. The CLI
    and the GUI show one line naming this file."""
    text = header + "\n\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    for folder in (log_dir(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"medadv-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{id(exc) % 10000}.log"
            path.write_text(text)
            return path
        except OSError:
            continue
    return None


def internal_error_line(exc: BaseException, log: Path | None) -> str:
    """``internal error: <type>: <first line of the message> (details: <log>)``."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    where = f" (details: {log})" if log is not None else ""
    return f"internal error: {type(exc).__name__}: {first}{where}"
