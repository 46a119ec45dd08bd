"""File ▸ Open Sample ▸ napari-medadv: the shipped glioma phantom case and a chest radiograph."""

from __future__ import annotations

import csv

from napari_medadv._qt.layers import layer_data_for_image
from napari_medadv.core.data.paths import sample_data_dir
from napari_medadv.core.io import read_image


def glioma_case() -> list[tuple]:
    """Glioma phantom ``glioma_001``: T1, T1Gd, T2, FLAIR (one layer each) + ground-truth labels."""
    return layer_data_for_image(read_image(sample_data_dir() / "glioma" / "glioma_001"))


def glioma_case_1mm() -> list[tuple]:
    """Glioma phantom at 1 mm (197 x 233 x 189, the MNI template's grid): the realistic case for
    talks; the demo models read it through their declared 2.5 mm spacing."""
    from napari_medadv._qt.layers import layer_data_for_image
    from napari_medadv.core.io import read_image

    return layer_data_for_image(read_image(glioma_1mm_path()))


def glioma_1mm_path():
    from napari_medadv.core.data.paths import sample_data_dir

    return sample_data_dir() / "glioma_1mm" / "glioma_1mm_001"


def chest_radiograph() -> list[tuple]:
    """A held-out chest radiograph phantom with a nodule and an opacity (for the demo classifier)."""
    return layer_data_for_image(read_image(chest_radiograph_path()))


def chest_radiograph_path():
    """The first held-out case that has both findings (labels.csv), as the headless demo uses."""
    folder = sample_data_dir() / "cxr" / "heldout"
    with open(folder / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    best = next((r for r in rows if r.get("nodule") == "1" and r.get("opacity") == "1"), rows[0])
    return folder / best["file"]
