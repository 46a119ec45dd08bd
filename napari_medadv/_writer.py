"""npe2 writers: image and labels layers via :mod:`napari_medadv.core.io` (NIfTI, derived DICOM,
PNG/TIFF), keeping the geometry and file metadata of the image the layer came from.

Files are written in the source's *own* voxel order and affine, whatever the display: a volume
layer's data is the stored array transposed for display (see
:mod:`napari_medadv.core.orientation`), and is transposed back here. A layer that did not come
from this plugin is written with its whole data -> world transform (``affine`` composed with
``scale``/``translate``/``rotate``/``shear``) as the NIfTI affine.

A layer derived by this plugin (``… adversarial`` etc.) is always written as *derived* (NIfTI
description / DICOM ImageType DERIVED, new UIDs); an unchanged original layer is written as is.
A labels layer on a DICOM image saved as ``.dcm`` becomes a DICOM SEG that references it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from napari_medadv.core.io import Geometry, ImageData
from napari_medadv.core.io import write_image as core_write_image
from napari_medadv.core.io import write_labels as core_write_labels
from napari_medadv.core.orientation import DisplayFrame, as_affine4


def _like(data: np.ndarray, meta: dict, channels: int = 1):
    """``(like, info, data)``: the ImageData to borrow geometry and file metadata from, the
    layer's medadv metadata, and ``data`` (one channel) in ``like``'s stored voxel order."""
    md = meta.get("metadata") or {}
    base = md.get("medadv_image")
    info = md.get("medadv", {})
    if base is not None:
        stored = DisplayFrame.of(base.geometry).to_stored(data)
        if tuple(base.spatial_shape) == tuple(stored.shape):
            c = int(info.get("channel_index", 0))  # contrast layers and their adversarial/perturbation
            ch = base.channel_names[min(c, base.n_channels - 1)]
            like = dataclasses.replace(base, array=base.array[c:c + 1], channel_names=[ch], labels=None)
            return like, info, np.ascontiguousarray(stored)
    if data.ndim not in (2, 3):
        raise ValueError(f"napari-medadv writes 2-D images or 3-D volumes, not shape {data.shape}")
    geometry = Geometry(as_affine4(_layer_matrix(meta, data.ndim)), shape=data.shape)
    return ImageData(np.asarray(data, np.float32)[None], geometry, ["image"],
                     Path(meta.get("name") or "layer"), "nifti" if data.ndim == 3 else "tiff"), info, data


def _layer_matrix(meta: dict, ndim: int) -> np.ndarray:
    """The layer's data -> world matrix from the writer's ``meta`` (napari's layer state)."""
    from napari.utils.transforms import Affine

    def get(key, default):
        value = meta.get(key)
        return default if value is None else value

    physical = Affine(scale=get("scale", [1.0] * ndim), translate=get("translate", [0.0] * ndim),
                      rotate=meta.get("rotate"), shear=meta.get("shear"), ndim=ndim)
    affine = meta.get("affine")
    world = np.eye(ndim + 1) if affine is None else np.asarray(getattr(affine, "affine_matrix", affine), float)
    return world @ physical.affine_matrix


def write_image(path: str, data, meta: dict) -> list[str]:
    data = np.asarray(data)
    if meta.get("rgb"):
        raise ValueError("napari-medadv writes grayscale medical images, not RGB")
    like, info, data = _like(data, meta)
    derived = bool(info.get("derived", True))
    if not derived and not np.array_equal(np.asarray(data, np.float32), like.array[0]):
        derived = True  # edited pixels are no longer the original
    desc = info.get("note") or ("napari-medadv: " + str(meta.get("name", "image")))
    if derived and info.get("attack") and "severity" in info:  # a simulated MR artifact, not an attack
        desc = (f"{info.get('role', 'derived')} ({info['attack']}, severity={info['severity']:g}) - napari-medadv; "
                "NOT the original")
    elif derived and info.get("attack"):
        desc = f"{info.get('role', 'derived')} ({info['attack']}, eps={info.get('eps', 0):g}) - napari-medadv; NOT the original"
    return [str(core_write_image(data, path, like=like, description=desc, derived=derived))]


def write_labels(path: str, data, meta: dict) -> list[str]:
    """NIfTI/PNG/TIFF; ``.dcm``: a DICOM SEG referencing the DICOM image the layer lies on
    (:func:`napari_medadv.core.pacs.write_layer_seg`)."""
    data = np.asarray(data)
    like, info, data = _like(data, meta)
    if str(path).lower().endswith(".dcm"):
        if like.kind not in ("dicom", "dicom-series"):
            raise ValueError(f"{path}: a DICOM SEG needs a labels layer on an image read from DICOM; "
                             f"{meta.get('name', 'this layer')} is not")
        from napari_medadv.core.pacs import write_layer_seg  # deferred: the pipeline's imports (torch)

        return [str(write_layer_seg(data, path, like, info))]
    return [str(core_write_labels(data, path, like=like))]
