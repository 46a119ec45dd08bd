"""``--stage``: send a small study's case files and model files to the Dask workers, for workers
that share no filesystem with the client.

The client packs the inputs into one tar archive (:func:`pack`); a Dask worker plugin
(:class:`StageFiles`) unpacks it into each worker's local directory when it is registered and on
every worker that joins later (batch jobs start late). On the worker, :func:`localize` maps a
client path to its local copy. Studies keep the client's paths everywhere else (stored rows,
fingerprints), so a staged study's numbers and resume behaviour equal an unstaged one's.

Dask's own ``Client.upload_file`` is made for Python modules (it imports ``.py``/``.zip``/``.egg``
files and keeps only base names), hence this small plugin instead.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..errors import MedadvError

#: the most --stage sends (through the scheduler, to every worker)
STAGE_LIMIT = 1 << 30
STAGE_DIR = "medadv-stage"


def _size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def pack(groups: Sequence[Sequence[str]], limit: int = STAGE_LIMIT) -> dict:
    """Pack files and folders for the workers. Each group (e.g. a TorchScript file and its JSON
    sidecar) lands in one folder, so files that find each other by name still do.

    Returns ``{"key", "data" (tar bytes), "map" {client path: path inside the stage}}``.
    """
    entries = [(Path(p), i) for i, g in enumerate(groups) for p in g if Path(p).exists()]
    total = sum(_size(p) for p, _ in entries)
    if total > limit:
        raise MedadvError(f"--stage would send {total / 2**20:.0f} MB to every worker (limit {limit / 2**20:.0f} MB): "
                          "put the data on a shared filesystem instead")
    buf = io.BytesIO()
    mapping = {}
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p, i in entries:
            arc = f"{i}/{p.name}"
            tar.add(str(p), arcname=arc)
            mapping[str(p)] = arc
    data = buf.getvalue()
    return {"key": hashlib.sha256(data).hexdigest()[:16], "data": data, "map": mapping}


class StageFiles:
    """Dask worker plugin: unpack a :func:`pack` archive into the worker's local directory (once
    per worker, atomically, also on workers that join later)."""

    def __init__(self, key: str, data: bytes):
        self.key = key
        self.data = data
        self.name = f"medadv-stage-{key}"

    def setup(self, worker):
        dest = stage_root(worker.local_directory, self.key)
        if dest.is_dir():
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.key}.", dir=dest.parent))
        with tarfile.open(fileobj=io.BytesIO(self.data), mode="r") as tar:
            tar.extractall(tmp, filter="data")
        try:
            os.replace(tmp, dest)
        except OSError:  # another process of the same worker got there first
            shutil.rmtree(tmp, ignore_errors=True)


def stage_root(local_directory: str, key: str) -> Path:
    return Path(local_directory) / STAGE_DIR / key


def register(client, staged: dict) -> None:
    """Send the archive to every worker, present and future."""
    from distributed.diagnostics.plugin import WorkerPlugin  # deferred: heavy

    plugin = type("MedadvStageFiles", (StageFiles, WorkerPlugin), {})(staged["key"], staged["data"])
    client.register_plugin(plugin, name=plugin.name)


def localize(path: str, stage: dict | None) -> str:
    """On a worker: the local copy of client path ``path`` (unchanged without a stage, or for a
    path that was not staged)."""
    if not stage:
        return path
    from distributed import get_worker  # deferred: only staged studies run this, on a worker

    root = stage_root(get_worker().local_directory, stage["key"])
    for orig, arc in stage["map"].items():
        if path == orig:
            return str(root / arc)
        if path.startswith(orig.rstrip("/") + "/"):
            return str(root / arc) + path[len(orig.rstrip("/")):]
    return path
