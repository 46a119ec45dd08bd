"""GUI fixtures: small crops of the shipped sample data and the demo models (CPU-light)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_medadv.core.data.paths import sample_data_dir
from napari_medadv.core.io import Geometry, read_image


def crop(image, start, size):
    """A crop of an ImageData with its geometry moved accordingly (same voxel size)."""
    sl = tuple(slice(s, s + n) for s, n in zip(start, size))
    aff = image.geometry.affine.copy()
    shift = np.zeros(4)
    shift[: len(start)] = start
    shift[3] = 1
    aff[:3, 3] = (image.geometry.affine @ shift)[:3]
    geom = Geometry(aff, shape=tuple(size))
    return dataclasses.replace(image, array=np.ascontiguousarray(image.array[(slice(None), *sl)]), geometry=geom,
                               labels=None if image.labels is None else np.ascontiguousarray(image.labels[sl]))


@pytest.fixture(scope="session")
def glioma_small():
    """32 × 32 × 8 voxels around the tumour of glioma_001 (4 contrasts + labels)."""
    img = read_image(sample_data_dir() / "glioma" / "glioma_001")
    idx = np.argwhere(img.labels > 0)
    c = idx.mean(0).astype(int)
    size = (32, 32, 8)
    start = [int(np.clip(c[k] - size[k] // 2, 0, img.spatial_shape[k] - size[k])) for k in range(3)]
    return crop(img, start, size)


@pytest.fixture(scope="session")
def cxr_small():
    from napari_medadv._sample_data import chest_radiograph_path

    return read_image(chest_radiograph_path())  # 256 × 256: the classifier's own size


@pytest.fixture(scope="session")
def unet2d():
    from napari_medadv.core.models import load_model

    return load_model("demo:unet2d", device="cpu")


@pytest.fixture(scope="session")
def cxr_model():
    from napari_medadv.core.models import load_model

    return load_model("demo:cxr", device="cpu")
