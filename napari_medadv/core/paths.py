"""Where the shipped sample data and demo weights live (editable checkout or installed wheel)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import MedadvError

_PKG = Path(__file__).resolve().parent.parent


def sample_data_dir() -> Path:
    """The ``sample_data`` folder: ``$MEDADV_SAMPLE_DATA``, the copy inside an installed wheel,
    or the repository's folder for an editable install."""
    env = os.environ.get("MEDADV_SAMPLE_DATA")
    candidates = [Path(env)] if env else []
    candidates += [_PKG / "_bundled_sample_data", _PKG.parent / "sample_data"]
    for c in candidates:
        if (c / "PROVENANCE.md").is_file():
            return c
    raise MedadvError(
        "the sample data folder was not found (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); reinstall napari-medadv or set MEDADV_SAMPLE_DATA"
    )


def demo_models_dir() -> Path:
    return sample_data_dir() / "models"


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
    import tempfile
    import time
    import traceback

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
