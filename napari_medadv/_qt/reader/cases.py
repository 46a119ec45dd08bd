"""The cases a reader study can use (open image layers or the shipped samples) and how one is
shown: which contrast, in which display frame, with which window/level.

No Qt widgets here. A case from an open layer keeps that layer's contrast limits and colormap
(the window/level the reader set); a shipped sample gets the limits it would get when opened
(:func:`~napari_medadv._qt.layers.display_limits`), so the trial looks like the case on screen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from napari_medadv.core.io import ImageData
from napari_medadv.core.orientation import DisplayFrame

from ..layers import META, display_limits, source_from_layer

if TYPE_CHECKING:
    import napari

SAMPLE_PREFIX = "sample "


@dataclass
class StudyCase:
    """A case ready for the study: the image the sources perturb and how to show it."""

    name: str
    image: ImageData
    channel: int  # the contrast shown
    frame: DisplayFrame
    contrast_limits: tuple[float, float]
    colormap: str = "gray"

    def display(self, array: np.ndarray) -> np.ndarray:
        """The shown contrast of a ``C *spatial`` array (stored order) as layer data."""
        return np.asarray(self.frame.to_display(array[self.channel]))

    def layer_kwargs(self) -> dict:
        """Geometry, window/level and colormap for a trial layer — nothing else (no name, no
        metadata)."""
        return {**self.frame.napari_kwargs(), "contrast_limits": tuple(self.contrast_limits),
                "colormap": self.colormap}


@dataclass(frozen=True)
class CaseChoice:
    """An entry of the set-up panel's case list; :meth:`load` gives the :class:`StudyCase`."""

    label: str  # what the list shows and the CSV's case column holds
    loader: Callable[[], StudyCase]

    def load(self) -> StudyCase:
        return self.loader()


def layer_cases(viewer: napari.Viewer) -> list[CaseChoice]:
    """One choice per case among the open image layers (a multi-contrast case once, shown in the
    contrast visible now), plus plain image layers that this plugin did not open."""
    out: dict[str, CaseChoice] = {}
    for layer in viewer.layers:
        if layer.__class__.__name__ != "Image" or getattr(layer, "rgb", False):
            continue
        meta = layer.metadata.get(META, {})
        if meta.get("derived") or meta.get("role") not in (None, "image"):
            continue
        case = meta.get("case", layer.name)
        if case in out and not layer.visible:
            continue  # keep the contrast on screen
        out[case] = CaseChoice(case, lambda layer=layer: case_from_layer(viewer, layer))
    return list(out.values())


def case_from_layer(viewer: napari.Viewer, layer) -> StudyCase:
    """The case behind ``layer`` with that layer's contrast, window/level and colormap."""
    src = source_from_layer(viewer, layer)
    channel = src.channel_layers.index(layer.name) if layer.name in src.channel_layers else 0
    lo, hi = (float(v) for v in layer.contrast_limits)
    return StudyCase(src.case, src.image, channel, src.frame, (lo, hi), layer.colormap.name)


def sample_cases() -> list[CaseChoice]:
    """The shipped glioma phantoms (FLAIR shown) and the chest radiograph."""
    from napari_medadv._sample_data import chest_radiograph_path
    from napari_medadv.core.data.paths import sample_data_dir

    folders = sorted(p for p in (sample_data_dir() / "glioma").iterdir() if p.is_dir())
    paths = [*folders, chest_radiograph_path()]
    return [CaseChoice(f"{SAMPLE_PREFIX}{p.name.split('.')[0]}", lambda p=p: case_from_file(p)) for p in paths]


def case_from_file(path, name: str | None = None) -> StudyCase:
    from napari_medadv.core.io import read_image

    image = read_image(path)
    channel = image.channel_names.index("flair") if "flair" in image.channel_names else 0
    label = name or f"{SAMPLE_PREFIX}{image.source.name.split('.')[0]}"
    return StudyCase(label, image, channel, DisplayFrame.of(image.geometry), display_limits(image.array[channel]))
