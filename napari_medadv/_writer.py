"""npe2 writers: image and labels layers via :mod:`napari_medadv.core.io` (NIfTI, derived DICOM,
PNG/TIFF), keeping the geometry and file metadata of the image the layer came from.

A layer derived by this plugin (``… adversarial`` etc.) is always written as *derived* (NIfTI
description / DICOM ImageType DERIVED, new UIDs); an unchanged original layer is written as is.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np


def _like(data: np.ndarray, meta: dict, channels: int = 1):
    """The ImageData to borrow geometry and file metadata from, for ``data`` (one channel)."""
    from napari_medadv.core.io import Geometry, ImageData

    md = meta.get("metadata") or {}
    base = md.get("medadv_image")
    info = md.get("medadv", {})
    if base is not None and tuple(base.spatial_shape) == tuple(data.shape):
        c = int(info.get("channel_index", 0))  # contrast layers and their adversarial/perturbation
        ch = base.channel_names[min(c, base.n_channels - 1)]
        return dataclasses.replace(base, array=base.array[c:c + 1], channel_names=[ch], labels=None), info
    scale = meta.get("scale") or [1.0] * data.ndim
    translate = meta.get("translate") or [0.0] * data.ndim
    if data.ndim not in (2, 3):
        raise ValueError(f"napari-medadv writes 2-D images or 3-D volumes, not shape {data.shape}")
    geometry = Geometry.from_spacing(scale, translate, shape=data.shape)
    return ImageData(np.asarray(data, np.float32)[None], geometry, ["image"],
                     Path(meta.get("name") or "layer"), "nifti" if data.ndim == 3 else "tiff"), info


def write_image(path: str, data, meta: dict) -> list[str]:
    from napari_medadv.core.io import write_image as core_write

    data = np.asarray(data)
    if meta.get("rgb"):
        raise ValueError("napari-medadv writes grayscale medical images, not RGB")
    like, info = _like(data, meta)
    derived = bool(info.get("derived", True))
    if not derived and not np.array_equal(np.asarray(data, np.float32), like.array[0]):
        derived = True  # edited pixels are no longer the original
    desc = info.get("note") or ("napari-medadv: " + str(meta.get("name", "image")))
    if derived and info.get("attack") and "severity" in info:  # a simulated MR artifact, not an attack
        desc = (f"{info.get('role', 'derived')} ({info['attack']}, severity={info['severity']:g}) - napari-medadv; "
                "NOT the original")
    elif derived and info.get("attack"):
        desc = f"{info.get('role', 'derived')} ({info['attack']}, eps={info.get('eps', 0):g}) - napari-medadv; NOT the original"
    return [str(core_write(data, path, like=like, description=desc, derived=derived))]


def write_labels(path: str, data, meta: dict) -> list[str]:
    from napari_medadv.core.io import write_labels as core_write

    data = np.asarray(data)
    like, _ = _like(data, meta)
    return [str(core_write(data, path, like=like))]
