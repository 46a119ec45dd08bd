"""Fixtures of the core tests that read the shipped data: the glioma_001 case and the demo 3-D
UNet, one of each per test module (a module may change its model's state)."""

import pytest

from napari_medadv.core.data.paths import sample_data_dir
from napari_medadv.core.io import read_image
from napari_medadv.core.models import load_model


@pytest.fixture(scope="module")
def case():
    return read_image(sample_data_dir() / "glioma" / "glioma_001")


@pytest.fixture(scope="module")
def unet3d():
    return load_model("demo:unet3d", device="cpu")
