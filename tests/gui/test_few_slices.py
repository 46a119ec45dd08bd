"""A series of 3 or 4 slices is a volume: its layers are never taken for RGB(A) images."""

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.mark.parametrize("n_slices", [3, 4])
def test_three_or_four_slices_open_as_a_volume(make_napari_viewer, n_slices):
    from napari_medadv._qt.layers import layer_data_for_image
    from napari_medadv.core.io import Geometry, ImageData

    img = ImageData(np.random.default_rng(0).random((1, n_slices, 16, 16), dtype=np.float32), Geometry(np.eye(4)),
                    ["image"], "synthetic", "dicom-series")
    viewer = make_napari_viewer()
    for data, kw, kind in layer_data_for_image(img, name="s"):
        layer = getattr(viewer, f"add_{kind}")(data, **kw)
    assert not layer.rgb and layer.ndim == 3 and viewer.dims.nsteps[0] == n_slices
