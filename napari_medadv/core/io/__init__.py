"""Reading and writing medical images: NIfTI, BraTS case folders, DICOM (series and single
files), PNG/JPEG/TIFF radiographs.

Never imports napari, qtpy or magicgui. Conventions:

* arrays are ``float32``, channels first, in the file's voxel order (never resampled);
* :class:`Geometry` maps array indices to RAS+ millimetres (DICOM LPS is converted);
* every bad input raises :class:`~napari_medadv.core.errors.InputFileError` naming the file.

Example
-------
>>> from napari_medadv.core.io import read_image, write_image
>>> img = read_image("BraTS20_Training_001/")            # doctest: +SKIP
>>> img.array.shape, img.channel_names                    # doctest: +SKIP
((4, 240, 240, 155), ['t1', 't1ce', 't2', 'flair'])
>>> write_image(img.array + delta, "adv.nii.gz", like=img)  # doctest: +SKIP
"""

from .api import (
    DEFAULT_DESCRIPTION,
    read_image,
    read_labels,
    write_image,
    write_labels,
)
from .geometry import LPS_TO_RAS, Geometry
from .nifti import BRATS_CHANNELS, BRATS_LABELS
from .types import KINDS, ImageData

__all__ = [
    "BRATS_CHANNELS",
    "BRATS_LABELS",
    "DEFAULT_DESCRIPTION",
    "KINDS",
    "LPS_TO_RAS",
    "Geometry",
    "ImageData",
    "read_image",
    "read_labels",
    "write_image",
    "write_labels",
]
