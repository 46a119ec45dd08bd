"""napari layers <-> :mod:`napari_medadv.core` images (no Qt widgets here); results go onto layers
in :mod:`.results`.

Conventions (the reader sets them, the docks read them, the writer uses them):

* every layer read by this plugin carries ``metadata["medadv"]`` (a plain dict: case name,
  channel, role, whether it is derived) and ``metadata["medadv_image"]`` (the
  :class:`~napari_medadv.core.io.ImageData` it came from: geometry and file metadata);
* a multi-channel MR case is one image layer per contrast (``"glioma_001 flair"``) plus the
  ground-truth labels (``"glioma_001 labels"``); an attack started from any contrast perturbs
  all of them;
* results are named after the source layer and replaced in place on re-runs:
  ``"… adversarial"``, ``"… perturbation"``, ``"<case> segmentation (clean)"``,
  ``"<case> segmentation (adversarial)"``, ``"<case> diff"``, ``"<case> perturbed pixels"``;
* an MR artifact (registry entries that are :class:`~napari_medadv.core.attacks.MRArtifact`)
  is not adversarial: its layers carry the artifact's name instead, so they sit beside an
  attack's rather than over them: ``"… motion"``, ``"… perturbation (motion)"``,
  ``"<case> segmentation (motion)"``, ``"<case> diff (motion)"`` (see :func:`.results.result_tag`).
  When a result is shown while another family's layers are on screen, the two swap
  visibility (the newest result is what the readouts describe; the other is a click away).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_medadv.core.brats import BRATS_LABELS
from napari_medadv.core.errors import MedadvError
from napari_medadv.core.io import Geometry, ImageData
from napari_medadv.core.orientation import DisplayFrame, as_affine4

if TYPE_CHECKING:
    import napari

META = "medadv"
IMAGE_META = "medadv_image"
BRATS_COLORS = {1: (0.85, 0.15, 0.15, 1.0), 2: (0.2, 0.75, 0.3, 1.0), 4: (1.0, 0.85, 0.1, 1.0)}
BRATS_NAMES = {1: "necrotic core (NCR)", 2: "edema (ED)", 4: "enhancing tumour (ET)"}
DIFF_VALUES = {1: "gained", 2: "lost", 3: "changed class"}
DIFF_COLORS = {1: (0.1, 0.8, 1.0, 1.0), 2: (1.0, 0.2, 0.8, 1.0), 3: (1.0, 0.55, 0.0, 1.0)}
#: diverging colormap for signed perturbations: blue (negative) - black (0) - red (positive);
#: shown with additive blending so zero adds nothing to the image under it
PERTURBATION_COLORS = [[0.25, 0.55, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0], [1.0, 0.3, 0.15, 1.0]]


def brats_colormap(values=(1, 2, 4)):
    from napari.utils.colormaps import DirectLabelColormap

    colors: dict = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    fallback = [(0.6, 0.4, 1.0, 1.0), (0.3, 0.9, 0.9, 1.0), (1.0, 0.6, 0.3, 1.0)]
    for i, v in enumerate(sorted(int(v) for v in values if int(v) != 0)):
        colors[v] = BRATS_COLORS.get(v, fallback[i % len(fallback)])
    return DirectLabelColormap(color_dict=colors)


def diff_colormap():
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 0: (0, 0, 0, 0), **DIFF_COLORS})


def perturbation_colormap():
    from napari.utils.colormaps import Colormap

    return Colormap(PERTURBATION_COLORS, name="medadv perturbation", display_name="perturbation (−/0/+)")


def display_limits(channel: np.ndarray) -> tuple[float, float]:
    """Contrast limits from the 0.5-99.5 % percentiles of the non-zero voxels (MR background
    is 0 after skull stripping; radiographs have few exact zeros)."""
    a = np.asarray(channel, dtype=np.float32)
    nz = a[a != 0]
    sample = nz if nz.size > 0.05 * a.size else a.ravel()
    if sample.size > 400_000:
        sample = sample[:: sample.size // 400_000 + 1]
    lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    if not hi > lo:
        lo, hi = float(a.min()), float(a.max()) if float(a.max()) > float(a.min()) else float(a.min()) + 1.0
    return min(lo, 0.0) if lo > 0 and nz.size < a.size else lo, hi


def case_name(image: ImageData) -> str:
    src = Path(image.source)
    name = src.name
    for suffix in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def layer_data_for_image(image: ImageData, name: str | None = None,
                         visible_channel: str | None = None) -> list[tuple]:
    """napari layer-data tuples: one image layer per channel (+ the labels, if any).

    Volumes are shown in the patient frame (napari world = RAS+ mm): each layer's data is the
    stored array as a transposed view and its ``scale``/``affine`` carry the file's geometry
    (see :mod:`napari_medadv.core.orientation`); 2-D images stay in their image plane."""
    frame = DisplayFrame.of(image.geometry)
    geo = frame.napari_kwargs()
    case = name or case_name(image)
    n = image.n_channels
    if visible_channel is None:
        visible_channel = "flair" if "flair" in image.channel_names else image.channel_names[0]
    out = []
    for c, ch in enumerate(image.channel_names):
        layer_name = f"{case} {ch}" if n > 1 else case
        meta = {META: {"case": case, "channel": ch, "channel_index": c, "n_channels": n, "role": "image",
                       "derived": False, "source": str(image.source), "kind": image.kind},
                IMAGE_META: image}
        out.append((frame.to_display(image.array[c]), {
            "name": layer_name, **geo,
            "contrast_limits": display_limits(image.array[c]), "colormap": "gray",
            "visible": ch == visible_channel, "metadata": meta,
            "rgb": False,  # one channel per layer: a 3- or 4-slice series is a volume, never RGB(A)
        }, "image"))
    if image.labels is not None:
        values = np.unique(image.labels).tolist()
        brats = set(values) <= set(BRATS_LABELS)
        out.append((frame.to_display(image.labels), {
            "name": f"{case} labels", **geo, "opacity": 0.9,
            "metadata": {META: {"case": case, "role": "ground truth", "derived": False,
                                "source": str(image.source)}, IMAGE_META: image},
            **({"colormap": brats_colormap(values)} if brats else {}),
        }, "labels"))
    return out


# ----------------------------------------------------------------------------- layers -> image


@dataclass
class Source:
    """What an attack starts from: the core image (stored voxel order), the layers/names its
    results go to and the display frame they share with the source layer."""

    image: ImageData
    case: str
    channel_layers: list[str]  # layer names, in channel order
    frame: DisplayFrame
    extra: dict = field(default_factory=dict)

    def layer_kwargs(self) -> dict:
        """``scale``/``translate``/``affine`` of the source layer, for every derived layer."""
        return self.frame.napari_kwargs()

    def to_display(self, array):
        """A stored-order array (spatial axes last) as layer data."""
        return self.frame.to_display(array)

    def result_name(self, what: str, channel: int | None = None) -> str:
        if channel is not None:
            return f"{self.channel_layers[channel]} {what}"
        return f"{self.case} {what}"


def source_from_layer(viewer: napari.Viewer, layer) -> Source:
    """The full (all contrasts) image behind an image layer, built from the layers' current data."""
    if layer is None:
        raise MedadvError("no image layer: open an image (File ▸ Open Sample ▸ napari-medadv) first")
    if getattr(layer, "rgb", False):
        raise MedadvError(f"{layer.name}: RGB layers are not medical images; open the file with napari-medadv")
    meta = layer.metadata.get(META, {})
    base: ImageData | None = layer.metadata.get(IMAGE_META)
    if meta.get("role") not in (None, "image"):
        raise MedadvError(f"{layer.name} is a {meta.get('role')} layer; pick the original image to attack")
    if base is not None and meta.get("role") == "image":
        case = meta["case"]
        by_index: dict[int, Any] = {}
        for lyr in viewer.layers:
            m = lyr.metadata.get(META, {})
            if m.get("case") == case and m.get("role") == "image" and lyr.metadata.get(IMAGE_META) is base:
                by_index[m["channel_index"]] = lyr
        missing = [base.channel_names[i] for i in range(base.n_channels) if i not in by_index]
        if missing:
            raise MedadvError(f"{case}: the layer(s) for {', '.join(missing)} were removed; "
                              "re-open the case to attack it")
        layers = [by_index[i] for i in range(base.n_channels)]
        frame = DisplayFrame.of(base.geometry)
        image = dataclasses.replace(base, array=_stacked(case, frame, base, layers), labels=None)
        return Source(image, case, [lyr.name for lyr in layers], frame)
    data = np.asarray(layer.data, dtype=np.float32)
    if data.ndim not in (2, 3):
        raise MedadvError(f"{layer.name}: expected a 2-D image or a 3-D volume, got shape {data.shape}")
    matrix = layer_matrix(layer)  # the layer's whole data -> world transform, flips and all
    geometry = Geometry(as_affine4(matrix), shape=data.shape)
    kind = "nifti" if data.ndim == 3 else "tiff"
    image = ImageData(data[None], geometry, ["image"], Path(f"{layer.name}"), kind,
                      meta={"notes": [f"built from the napari layer {layer.name!r}"]})
    return Source(image, layer.name, [layer.name], DisplayFrame.identity(matrix, patient=data.ndim == 3))


_STACKED: OrderedDict = OrderedDict()  # case -> (the layers' data objects, their stacked copy); 2 newest


def _stacked(case: str, frame: DisplayFrame, base: ImageData, layers) -> np.ndarray:
    """The contrast layers' data stacked in stored order, reused while the layers hold the same
    arrays: every Run and live-ε preparation builds a Source, and stacking four BraTS-size
    contrasts is a 150 MB copy on the GUI thread (about 0.1-0.2 s)."""
    datas = [lyr.data for lyr in layers]
    hit = _STACKED.get(case)
    if hit is not None and len(hit[0]) == len(datas) and all(a is b for a, b in zip(hit[0], datas)):
        _STACKED.move_to_end(case)
        return hit[1]
    arrays = [frame.to_stored(np.asarray(d, dtype=np.float32)) for d in datas]
    if any(a.shape != base.spatial_shape for a in arrays):
        raise MedadvError(f"{case}: a contrast layer changed shape; re-open the case")
    stacked = np.stack(arrays)  # shared between runs: the engine copies before it writes (tested)
    _STACKED[case] = (datas, stacked)
    while len(_STACKED) > 2:
        _STACKED.popitem(last=False)
    return stacked


def layer_matrix(layer) -> np.ndarray:
    """A layer's data index -> world matrix ((n+1)×(n+1)): its ``affine`` composed with its
    ``scale``, ``translate``, ``rotate`` and ``shear``."""
    from napari.utils.transforms import Affine

    physical = Affine(scale=layer.scale, translate=layer.translate, rotate=layer.rotate, shear=layer.shear)
    return np.asarray(layer.affine.affine_matrix, dtype=np.float64) @ physical.affine_matrix


def layer_on_grid(layer, source: Source, what: str = "layer") -> np.ndarray:
    """A Labels/Image layer drawn over the source (display order) as an array in the source
    image's stored voxel order; raises when it is not on the source's grid."""
    data = np.asarray(layer.data)
    shape = source.image.spatial_shape
    if data.shape == source.frame.display_shape(shape):
        return np.ascontiguousarray(source.frame.to_stored(data))
    raise MedadvError(f"{what} {layer.name}: shape {data.shape} does not match the image "
                      f"{source.frame.display_shape(shape)}")


def labels_for(viewer: napari.Viewer, source: Source):
    """The ground-truth Labels layer of the source's case (reader convention), or None."""
    return labels_for_case(viewer, source.case)


def labels_for_case(viewer: napari.Viewer, case: str):
    """The ground-truth Labels layer of ``case`` (reader convention), or None."""
    for lyr in viewer.layers:
        m = lyr.metadata.get(META, {})
        if m.get("case") == case and m.get("role") == "ground truth":
            return lyr
    return None


def case_of_layer(layer) -> str:
    """The case an image layer belongs to, from its metadata (no data touched): the reader's case
    name, else the layer's name (what :func:`source_from_layer` calls it)."""
    return layer.metadata.get(META, {}).get("case", layer.name)


def mask_on_grid(layer, source: Source, reference_layer) -> np.ndarray:
    """A Labels or Shapes layer as a boolean mask on the source image's grid (stored order)."""
    shape = source.frame.display_shape(source.image.spatial_shape)  # the layers' (display) order
    if layer.__class__.__name__ == "Labels":
        return layer_on_grid(layer, source, "region") != 0
    if layer.__class__.__name__ == "Shapes":
        from napari.layers import Shapes

        if len(layer.data) == 0:
            raise MedadvError(f"{layer.name}: draw a shape first")
        moved = []
        for verts in layer.data:
            world = np.array([layer.data_to_world(v) for v in verts])
            if world.shape[1] != len(shape):
                raise MedadvError(f"{layer.name}: {world.shape[1]}-D shapes cannot mask a {len(shape)}-D image; "
                                  "add the Shapes layer while the image is open")
            moved.append(np.array([reference_layer.world_to_data(w) for w in world])[:, -len(shape):])
        tmp = Shapes(moved, shape_type=list(layer.shape_type), ndim=len(shape))
        mask = tmp.to_labels(labels_shape=shape) != 0
        if len(shape) == 3:
            # shapes drawn on one slice: extrude through the volume along the axis they are flat in
            for d in range(3):
                coords = np.concatenate([m[:, d] for m in moved])
                if np.ptp(coords) < 1e-6:
                    plane = np.take(mask, int(np.clip(round(coords[0]), 0, shape[d] - 1)), axis=d)
                    mask = np.repeat(np.expand_dims(plane, d), shape[d], axis=d)
                    break
        return np.ascontiguousarray(source.frame.to_stored(mask))
    raise MedadvError(f"{layer.name}: a region must be a Labels or Shapes layer")


def context_from_choices(viewer: napari.Viewer, choices) -> tuple:
    """(source, labels array, roi, target) for the Attack dock's choices (:class:`.session.Choices`);
    raises MedadvError with what to pick."""
    if choices.image is None or choices.image not in viewer.layers:
        raise MedadvError("pick an image in the Attack dock (open one with File ▸ Open Sample ▸ napari-medadv)")
    src = source_from_layer(viewer, viewer.layers[choices.image])
    labels = None
    if choices.labels is not None and choices.labels in viewer.layers:
        labels = layer_on_grid(viewer.layers[choices.labels], src, "ground truth").astype(np.int32, copy=False)
    if choices.roi == "auto":
        roi = "auto"
    elif choices.roi is None or choices.roi not in viewer.layers:
        roi = None
    else:
        roi = mask_on_grid(viewer.layers[choices.roi], src, viewer.layers[src.channel_layers[0]])
        if not roi.any():
            raise MedadvError(f"region {choices.roi} is empty: paint or draw where the perturbation may go")
    target = None
    if choices.target is not None:
        kind, _, val = choices.target.partition(":")
        if kind == "value":
            target = int(val)
        elif kind == "mask":
            if val not in viewer.layers:
                raise MedadvError(f"target mask {val} was removed")
            target = layer_on_grid(viewer.layers[val], src, "target mask").astype(np.int32)
        else:
            target = val
    return src, labels, roi, target
