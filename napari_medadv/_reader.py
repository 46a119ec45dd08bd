"""npe2 reader: everything :func:`napari_medadv.core.io.read_image` reads, as napari layers.

A BraTS case folder becomes one image layer per contrast plus its labels. Volumes land in
napari's world as the RAS+ patient frame (mm), whatever their stored orientation: each layer
gets the file's geometry as ``scale`` + ``affine`` (see :mod:`napari_medadv.core.orientation`);
2-D images stay in their image plane. A file that turns out to be unreadable gives a napari
error notification naming the file and the problem.
"""

from __future__ import annotations

from pathlib import Path

from napari_medadv.core.errors import MedadvError

SUFFIXES = (".nii", ".nii.gz", ".dcm", ".dicom", ".ima", ".png", ".jpg", ".jpeg", ".tif", ".tiff")


def _accepts(path: Path) -> bool:
    name = path.name.lower()
    if path.is_dir():
        return True
    if name.endswith(SUFFIXES):
        return True
    if "." not in name and path.is_file():  # DICOM files often have no suffix: check the magic bytes
        # napari asks this reader about every file ("*" pattern): the readers load only for ours
        from napari_medadv.core.io.dicom import is_dicom_file

        return is_dicom_file(path)
    return False


def napari_get_reader(path):
    """Return :func:`read_layers` when ``path`` (or every path of a list) is ours, else None."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(_accepts(Path(p)) for p in paths):
        return None
    return read_layers


def read_layers(path) -> list[tuple]:
    from napari.utils.notifications import show_error

    # the readers (nibabel, pydicom, imageio) load when a file is read, not when napari asks
    # napari_get_reader about any file it opens
    from napari_medadv._qt.layers import layer_data_for_image
    from napari_medadv.core.io import read_image

    paths = [path] if isinstance(path, (str, Path)) else list(path)
    out: list[tuple] = []
    for p in paths:
        try:
            image = read_image(p)
        except MedadvError as e:
            show_error(f"napari-medadv could not open {p}: {e}")
            continue
        out.extend(layer_data_for_image(image))
    return out
