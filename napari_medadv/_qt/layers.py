"""napari layers <-> :mod:`napari_medadv.core` images and results (no Qt widgets here).

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
  ``"<case> segmentation (motion)"``, ``"<case> diff (motion)"`` (see :func:`result_tag`).
  When a result is shown while another family's layers are on screen, the two swap
  visibility (the newest result is what the readouts describe; the other is a click away).
"""

from __future__ import annotations

import dataclasses
import warnings
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

    from napari_medadv.core.pipeline import AttackOutcome

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


# ----------------------------------------------------------------------------- results -> layers


_DEFERRED: dict[int, dict[str, tuple]] = {}  # id(viewer) -> layer name -> (data, properties)


def _same(a, b) -> bool:
    try:
        return bool(np.array_equal(np.asarray(a, dtype=float), np.asarray(b, dtype=float)))
    except (TypeError, ValueError):
        return False


def _update_props(lyr, kwargs: dict) -> None:
    for k, v in kwargs.items():
        if k == "name":
            continue
        if k == "colormap":
            cur = getattr(lyr, "colormap", None)
            if isinstance(v, str) and getattr(cur, "name", None) == v:
                continue
            if not isinstance(v, str) and type(cur) is type(v):
                continue  # re-runs use the same colours
        elif k in ("scale", "translate", "contrast_limits") and _same(getattr(lyr, k), v):
            continue
        elif k == "affine" and _same(lyr.affine.affine_matrix, v):
            continue
        elif k in ("opacity", "blending") and getattr(lyr, k) == v:
            continue
        try:
            setattr(lyr, k, v)
        except (AttributeError, ValueError, TypeError):
            pass  # read-only on this layer type (e.g. 'size' after creation)


def _set_layer(viewer, name: str, kind: str, data, *, defer_hidden: bool = False, **kwargs):
    """Update the layer called ``name`` in place (data + changed properties) or add it.

    ``defer_hidden``: a hidden layer only records the new data, applied when it is shown or at
    :func:`flush_deferred` (live ε keeps each update to the layers on screen)."""
    if name in viewer.layers and viewer.layers[name].__class__.__name__.lower() == kind:
        lyr = viewer.layers[name]
        pending = _DEFERRED.setdefault(id(viewer), {})
        if defer_hidden and not lyr.visible and kind != "points":
            if name not in pending:
                lyr.events.visible.connect(_flush_on_show)
            pending[name] = (data, kwargs)
            return lyr
        pending.pop(name, None)
        data = data() if callable(data) else data
        if data is not lyr.data:
            lyr.data = data
        _update_props(lyr, kwargs)
        return lyr
    if name in viewer.layers:
        viewer.layers.remove(name)
    adder = getattr(viewer, f"add_{kind}")
    return adder(data() if callable(data) else data, name=name, **kwargs)


def _flush_on_show(event) -> None:
    lyr = event.source
    if not lyr.visible:
        return
    for pending in _DEFERRED.values():
        if lyr.name in pending and pending[lyr.name][0] is not None:
            data, kwargs = pending.pop(lyr.name)
            lyr.data = data() if callable(data) else data
            _update_props(lyr, kwargs)


def flush_deferred(viewer: napari.Viewer) -> int:
    """Apply the data recorded for hidden layers during live ε; returns how many were updated."""
    pending = _DEFERRED.pop(id(viewer), {})
    n = 0
    for name, (data, kwargs) in pending.items():
        if name in viewer.layers:
            lyr = viewer.layers[name]
            lyr.data = data() if callable(data) else data
            _update_props(lyr, kwargs)
            n += 1
    return n


def snapshot_results(viewer: napari.Viewer, source: Source) -> dict:
    """What a result could change on screen for ``source``: every layer's visibility and, for its
    derived layers, their data and metadata (references, not copies: results replace arrays,
    they never write into them) — :func:`restore_results` puts it back (a cancelled run that
    showed its steps)."""
    snap = {"visible": {lyr.name: lyr.visible for lyr in viewer.layers}, "data": {}}
    for lyr in viewer.layers:
        m = lyr.metadata.get(META, {})
        if m.get("case") == source.case and m.get("derived"):
            snap["data"][lyr.name] = (lyr.data, dict(lyr.metadata))
    return snap


def restore_results(viewer: napari.Viewer, snap: dict) -> None:
    """Undo what results shown since :func:`snapshot_results` did: layers they added are removed,
    the others get their data, metadata and visibility back (pending hidden-layer data dropped)."""
    pending = _DEFERRED.get(id(viewer), {})
    for lyr in list(viewer.layers):
        if lyr.name not in snap["visible"]:
            pending.pop(lyr.name, None)
            viewer.layers.remove(lyr)
    for name, (data, meta) in snap["data"].items():
        if name in viewer.layers:
            pending.pop(name, None)
            lyr = viewer.layers[name]
            if lyr.data is not data:
                lyr.data = data
            lyr.metadata = meta
    for name, vis in snap["visible"].items():
        if name in viewer.layers and viewer.layers[name].visible != vis:
            viewer.layers[name].visible = vis


def is_artifact(attack: str) -> bool:
    """True for registry entries that simulate an MR artifact (a severity, no ε)."""
    # deferred: the reader and the sample-data hooks import this module to open files, and the
    # attack registry imports torch (opening an image in napari stays free of it)
    from napari_medadv.core.attacks import ATTACKS

    spec = ATTACKS.get(attack)
    return spec is not None and spec.kind == "artifact"


def result_tag(attack: str) -> str:
    """What a result's layers are called after: ``"adversarial"`` for attacks, the artifact's
    registry name (``"motion"``) for MR artifacts."""
    return attack if is_artifact(attack) else "adversarial"


def result_layer_names(source: Source, attack: str) -> dict:
    """Layer names of one result: ``image``/``perturbation`` (lists, one per channel),
    ``segmentation``, ``diff`` (see the module docstring)."""
    tag = result_tag(attack)
    suffix = "" if tag == "adversarial" else f" ({tag})"
    n = len(source.channel_layers)
    return {"image": [source.result_name(tag, c) for c in range(n)],
            "perturbation": [source.result_name("perturbation" + suffix, c) for c in range(n)],
            "segmentation": source.result_name(f"segmentation ({tag})"),
            "diff": source.result_name("diff" + suffix)}


def result_metadata(source: Source, outcome: AttackOutcome, role: str, live: bool) -> dict:
    tag = result_tag(outcome.attack)
    meta = {"case": source.case, "role": role, "derived": True, "attack": outcome.attack, "result": tag,
            "eps": float(outcome.result.eps), "model": outcome.model.spec, "live": live,
            "params": outcome.params, "seed": outcome.seed,
            "note": "derived by napari-medadv: adversarially perturbed, NOT the original"}
    if tag != "adversarial":
        sev = float(outcome.result.extra.get("severity", outcome.params.get("severity", 0.0)))
        meta.pop("eps")
        meta["severity"] = sev
        meta["note"] = (f"derived by napari-medadv: simulated MR artifact ({outcome.attack} severity={sev:g}), "
                        "NOT the original")
    return {META: meta, IMAGE_META: source.image}


def _slot(meta: dict):
    """Which on-screen place a derived layer takes, across result families (None: not swapped)."""
    role = meta.get("role", "")
    if role in ("adversarial", "artifact", "perturbation"):
        return (role if role == "perturbation" else "image", meta.get("channel_index"))
    if role.startswith("segmentation (") and role != "segmentation (clean)":
        return ("segmentation", None)
    if role == "diff":
        return ("diff", None)
    return None


def _swap_out_other_results(viewer, source: Source, tag: str) -> set:
    """Hide the visible layers of the case's *other* result families; return their slots, which
    this result's layers then take on screen."""
    slots = set()
    for lyr in viewer.layers:
        m = lyr.metadata.get(META, {})
        if m.get("case") == source.case and m.get("derived") and m.get("result", tag) != tag and lyr.visible:
            slot = _slot(m)
            if slot is not None:
                lyr.visible = False
                slots.add(slot)
    return slots


def show_outcome(viewer: napari.Viewer, source: Source, outcome: AttackOutcome, *, live: bool = False,
                 visible_channel: int | None = None) -> dict[str, Any]:
    """Put an attack's images on the layers of ``source`` (names derived from it), in place."""
    gen = iter_show_outcome(viewer, source, outcome, live=live, visible_channel=visible_channel)
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value


def iter_show_outcome(viewer: napari.Viewer, source: Source, outcome: AttackOutcome, *, live: bool = False,
                      visible_channel: int | None = None):
    """:func:`show_outcome` one layer at a time (yields after each), so a caller can give the Qt
    event loop a turn between layers (adding a dozen 3-D layers at once stalls it)."""
    image = source.image
    common = source.layer_kwargs()  # derived layers: exactly the source layer's transform
    tag = result_tag(outcome.attack)
    names = result_layer_names(source, outcome.attack)
    ranges = _channel_ranges(source)
    if visible_channel is None:
        cnames = image.channel_names
        visible_channel = cnames.index("flair") if "flair" in cnames else 0
    s = _Showing(viewer, source, outcome, live, tag, names, common, _swap_out_other_results(viewer, source, tag))
    for c in range(image.n_channels):
        yield from _show_channel(s, c, ranges[c], visible_channel)
    if outcome.seg_clean is not None:
        yield from _show_segmentations(s)
    yield from _show_perturbed_pixels(s)
    return s.layers


@dataclass
class _Showing:
    """What the steps of :func:`iter_show_outcome` share: one result going onto the layers."""

    viewer: napari.Viewer
    source: Source
    outcome: AttackOutcome
    live: bool
    tag: str  # result_tag(outcome.attack)
    names: dict  # result_layer_names(source, outcome.attack)
    common: dict  # source.layer_kwargs(): every derived layer gets the source layer's transform
    swapped: set  # slots this result takes over from another result family's layers
    layers: dict = field(default_factory=dict)  # name -> layer, as they are set

    def meta(self, role: str, **extra) -> dict:
        meta = result_metadata(self.source, self.outcome, role, self.live)
        meta[META].update(extra)
        return meta


def _channel_ranges(source: Source) -> list[float]:
    """Per-channel intensity range, once per source (live ε shows results on it a lot)."""
    ranges = source.extra.get("ranges")
    if ranges is None:
        flat = source.image.array.reshape(source.image.n_channels, -1)
        ranges = source.extra["ranges"] = [float(r) or 1.0 for r in flat.max(1) - flat.min(1)]
    return ranges


def _show_channel(s: _Showing, c: int, rng: float, visible_channel: int):
    """Channel ``c``'s result image, then its perturbation (yields each layer's name)."""
    viewer, source, outcome = s.viewer, s.source, s.outcome
    image, adv, common = source.image, outcome.adversarial, s.common
    show = source.to_display  # core arrays are in stored order; layers in display order
    src_name = source.channel_layers[c]
    src_layer = viewer.layers[src_name] if src_name in viewer.layers else None
    limits = tuple(src_layer.contrast_limits) if src_layer is not None else display_limits(image.array[c])
    name = s.names["image"][c]
    existed = name in viewer.layers
    meta = s.meta("adversarial" if s.tag == "adversarial" else "artifact", channel_index=c)
    lyr = _set_layer(viewer, name, "image", show(adv[c]), contrast_limits=limits, colormap="gray",
                     metadata=meta, defer_hidden=s.live, **common)
    if ("image", c) in s.swapped:
        lyr.visible = True
    elif not existed:
        lyr.visible = c == visible_channel
        if src_layer is not None and c == visible_channel:
            src_layer.visible = False  # the adversarial replaces it on screen; toggle to compare
    s.layers[name] = lyr
    yield name
    eps = float(outcome.result.eps or 0.0) if s.tag == "adversarial" else 0.0  # artifacts: no ε budget
    if eps > 0:  # full colour at ±ε: the budget, not the (clamped) peak
        lim = eps * rng
    else:
        lim = float(np.abs(adv[c] - image.array[c]).max()) or 1e-6
    pname = s.names["perturbation"][c]
    existed = pname in viewer.layers
    # display_gain: the perturbation is shown × this vs the image contrast
    meta = s.meta("perturbation", channel_index=c, display_gain=rng / (2 * lim))
    lyr = _set_layer(viewer, pname, "image", lambda: show(adv[c] - image.array[c]), contrast_limits=(-lim, lim),
                     colormap=perturbation_colormap(), blending="additive", metadata=meta,
                     defer_hidden=s.live, **common)
    if ("perturbation", c) in s.swapped:
        lyr.visible = True
    elif not existed:  # off at first: dense perturbations (FGSM: ±ε everywhere) hide the anatomy
        lyr.visible = False
    s.layers[pname] = lyr
    yield pname


def _show_segmentations(s: _Showing):
    """The clean and the perturbed segmentation, then their diff (yields each layer's name)."""
    viewer, source, outcome = s.viewer, s.source, s.outcome
    common, show = s.common, source.to_display
    values = _segmentation_values(outcome)
    cmap = brats_colormap(values) if set(values) <= set(BRATS_LABELS) else None
    extra = {"colormap": cmap} if cmap is not None else {}
    for name, role, seg, vis in (
            (source.result_name("segmentation (clean)"), "segmentation (clean)", outcome.seg_clean, False),
            (s.names["segmentation"], f"segmentation ({s.tag})", outcome.seg_adv, True)):
        existed = name in viewer.layers
        lyr = _set_layer(viewer, name, "labels", show(seg), opacity=0.55, defer_hidden=s.live,
                         metadata=s.meta(role), **extra, **common)
        if role != "segmentation (clean)" and ("segmentation", None) in s.swapped:
            lyr.visible = True
        elif not existed:
            lyr.visible = vis
        s.layers[name] = lyr
        yield name

    def diff():
        return show(diff_map(outcome.seg_clean, outcome.seg_adv))

    name = s.names["diff"]
    existed = name in viewer.layers
    lyr = _set_layer(viewer, name, "labels", diff, colormap=diff_colormap(), opacity=0.8, defer_hidden=s.live,
                     metadata=s.meta("diff"), **common)
    if not existed:
        lyr.visible = False
        lyr.features = {"index": [0, 1, 2, 3], "change": ["unchanged", *DIFF_VALUES.values()]}
    if ("diff", None) in s.swapped:
        lyr.visible = True
    s.layers[name] = lyr
    yield name


def _show_perturbed_pixels(s: _Showing):
    """DGDE: markers on the few perturbed voxels; another attack removes stale ones."""
    viewer, source, outcome = s.viewer, s.source, s.outcome
    pts_name = source.result_name("perturbed pixels")
    if outcome.attack == "dgde":
        # voxel indices in the layers' (display) order, drawn with the same transform
        changed = np.any(outcome.adversarial != source.image.array, axis=0)
        coords = source.frame.coords_to_display(np.argwhere(changed)).astype(float)
        size = 3 * float(np.mean(source.frame.spacing))
        # 3-D: show the few perturbed voxels on every slice, or they are hard to find. napari 0.9
        # deprecates out_of_slice_display for thick slicing, which has no per-layer equivalent.
        extra = {"out_of_slice_display": True} if coords.shape[1] == 3 else {}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*out_of_slice_display.*", category=FutureWarning)
            lyr = _set_layer(viewer, pts_name, "points", coords, size=size, face_color="transparent",
                             border_color="red", border_width=0.15, **extra,
                             metadata=s.meta("perturbed pixels"), **s.common)
        s.layers[pts_name] = lyr
        yield pts_name
    elif pts_name in viewer.layers and s.tag == "adversarial":
        viewer.layers.remove(pts_name)  # a newer non-DGDE attack: the pixel markers no longer apply


def _segmentation_values(outcome: AttackOutcome) -> list[int]:
    """The label values the segmentation layers may hold: those the model can output (its output
    kind and declaration fix them), not a pass over the volumes on the GUI thread (counting the
    values present in both maps cost 150 ms of each live frame at BraTS size)."""
    from napari_medadv.core.pipeline import label_values  # deferred: opening images stays free of torch

    return sorted(set(label_values(outcome)) | {0})


def diff_map(clean: np.ndarray, adv: np.ndarray) -> np.ndarray:
    """1 = voxel gained (background → label), 2 = lost (label → background), 3 = changed class."""
    out = np.zeros(clean.shape, dtype=np.uint8)
    out[(clean == 0) & (adv != 0)] = 1
    out[(clean != 0) & (adv == 0)] = 2
    out[(clean != 0) & (adv != 0) & (clean != adv)] = 3
    return out


def show_clean_prediction(viewer: napari.Viewer, source: Source, model, seg: np.ndarray):
    values = sorted(set(model.info.label_values or []) | set(np.unique(seg).tolist()))
    extra = {"colormap": brats_colormap(values)} if set(values) <= set(BRATS_LABELS) else {}
    meta = {META: {"case": source.case, "role": "segmentation (clean)", "derived": True, "model": model.spec},
            IMAGE_META: source.image}
    return _set_layer(viewer, source.result_name("segmentation (clean)"), "labels", source.to_display(seg),
                      opacity=0.55, metadata=meta, **source.layer_kwargs(), **extra)


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
