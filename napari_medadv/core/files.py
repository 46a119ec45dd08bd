"""One helper per job for the workflows' own files (results, records, weights, tables):
atomic writes, JSON encoding and the package versions a record carries.

Image files go through :mod:`napari_medadv.core.io` (which also writes atomically, with errors
naming the file as an input problem); everything else a workflow writes goes through here.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

#: packages every record lists (a study adds its own with ``extra``)
CORE_PACKAGES = ("napari-medadv", "torch", "monai", "numpy", "scipy", "nibabel", "pydicom", "highdicom")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp)`` with a temporary name in ``path``'s folder, then rename it onto ``path``.

    A reader never sees a half-written file and a failure leaves ``path`` as it was. The file
    gets the usual permissions (``mkstemp`` creates 0600). Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def json_default(v):
    """``json.dumps(default=...)`` for what results hold: numpy scalars/arrays, tensors, paths,
    sets. Anything else raises ``TypeError`` naming its type (never a silent ``repr``)."""
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (set, frozenset)):
        return sorted(v)
    if type(v).__module__.startswith("torch") and hasattr(v, "tolist"):
        return v.detach().cpu().tolist()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def to_json(data, indent: int | None = 1) -> str:
    return json.dumps(data, indent=indent, default=json_default) + "\n"


def write_json(path: str | Path, data) -> Path:
    """``data`` as JSON (:func:`json_default` for numpy/torch values), written atomically."""
    text = to_json(data)
    return atomic_write(path, lambda f: Path(f).write_text(text))


def package_versions(extra: Iterable[str] = ()) -> dict:
    """Python and package versions for a record (``None`` for a package that is not installed)."""
    out = {"python": platform.python_version()}
    for pkg in (*CORE_PACKAGES, *extra):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out
