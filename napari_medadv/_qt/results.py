"""Results -> napari layers: an attack's images, segmentations, diff and DGDE's pixels put onto the
layers named after their source (in place on re-runs), hidden layers kept stale during live ε
until shown, and the snapshot a cancelled run restores. Naming and metadata conventions: see
:mod:`.layers`."""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_medadv.core.brats import BRATS_LABELS

from .compat import keep_selection
from .layers import (
    DIFF_VALUES,
    IMAGE_META,
    META,
    Source,
    brats_colormap,
    diff_colormap,
    display_limits,
    perturbation_colormap,
)

if TYPE_CHECKING:
    import napari

    from napari_medadv.core.outcome import AttackOutcome


_DEFERRED: dict[int, dict[str, tuple]] = {}  # id(viewer) -> layer name -> (data, properties, layer)


def _same(a, b) -> bool:
    try:
        return bool(np.array_equal(np.asarray(a, dtype=float), np.asarray(b, dtype=float)))
    except (TypeError, ValueError):
        return False


def _update_props(lyr, kwargs: dict) -> None:
    for k, v in kwargs.items():
        if k in ("name", "rgb"):  # rgb is fixed when a layer is made
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


def _set_layer(viewer, name: str, kind: str, data, *, defer_hidden: bool = False, visible: bool = True,
               **kwargs):
    """Update the layer called ``name`` in place (data + changed properties) or add it.

    ``defer_hidden``: a hidden layer only records the new data, applied when it is shown or at
    :func:`flush_deferred` (live ε keeps each update to the layers on screen). ``visible``: a new
    layer's visibility, given at creation (a hidden layer is then never sliced nor drawn before it
    is shown); an existing layer keeps the user's choice. A new layer is added without taking the
    selection (napari selects on insert: the user's selected layer stays selected, and a dozen
    result layers do not each rebuild the layer controls)."""
    if name in viewer.layers and viewer.layers[name].__class__.__name__.lower() == kind:
        lyr = viewer.layers[name]
        pending = _DEFERRED.setdefault(id(viewer), {})
        if defer_hidden and not lyr.visible and kind != "points":
            if name not in pending:
                lyr.events.visible.connect(_flush_on_show)
            pending[name] = (data, kwargs, lyr)
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
    with keep_selection(viewer):
        return adder(data() if callable(data) else data, name=name, visible=visible, **kwargs)


def _flush_on_show(event) -> None:
    lyr = event.source
    if not lyr.visible:
        return
    for pending in _DEFERRED.values():
        entry = pending.get(lyr.name)
        if entry is not None and entry[2] is lyr:  # this layer's own (another viewer may use the name)
            data, kwargs, _ = pending.pop(lyr.name)
            lyr.data = data() if callable(data) else data
            _update_props(lyr, kwargs)


def forget_deferred(viewer_key: int, *_) -> None:
    """Drop what a closed viewer (``id(viewer)``) still held for its hidden layers."""
    _DEFERRED.pop(viewer_key, None)


def flush_deferred(viewer: napari.Viewer) -> int:
    """Apply the data recorded for hidden layers during live ε; returns how many were updated."""
    pending = _DEFERRED.pop(id(viewer), {})
    n = 0
    for name, (data, kwargs, lyr) in pending.items():
        if name in viewer.layers and viewer.layers[name] is lyr:
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
    ranges = source_ranges(source)
    if visible_channel is None:
        cnames = image.channel_names
        visible_channel = cnames.index("flair") if "flair" in cnames else 0
    s = _Showing(viewer, source, outcome, live, tag, names, common, _swap_out_other_results(viewer, source, tag))
    for c in range(image.n_channels):
        yield from _show_channel(s, c, ranges[c], visible_channel)
    if outcome.seg_clean is not None:
        yield from _show_segmentations(s)
    if outcome.vulnerability is not None:
        yield from _show_vulnerability(s)
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


def source_ranges(source: Source) -> list[float]:
    """Per-channel intensity range, once per source (live ε shows results on it a lot). Workers
    call it before their first result, so the pass over the image (tens of ms at BraTS size) is
    not spent on the Qt thread."""
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
    lyr = _set_layer(viewer, name, "image", show(adv[c]), contrast_limits=limits, colormap="gray", rgb=False,
                     metadata=meta, defer_hidden=s.live, visible=("image", c) in s.swapped or c == visible_channel,
                     **common)
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
    # a callable: a hidden perturbation layer (the default) is not computed for a live frame
    lyr = _set_layer(viewer, pname, "image", functools.partial(lazy_difference, show(adv[c]), show(image.array[c])),
                     contrast_limits=(-lim, lim),
                     colormap=perturbation_colormap(), blending="additive", metadata=meta, rgb=False,
                     defer_hidden=s.live, visible=("perturbation", c) in s.swapped, **common)
    if ("perturbation", c) in s.swapped:
        lyr.visible = True
    elif not existed:  # off at first: dense perturbations (FGSM: ±ε everywhere) hide the anatomy
        lyr.visible = False
    s.layers[pname] = lyr
    yield pname


class LazyDifference:
    """``a - b`` as layer data, computed only for what napari reads: the displayed plane of a
    volume (nothing while the layer is hidden) instead of the whole volume on the Qt thread (about
    200 ms per BraTS-size channel). Written by hand because ``dask.array.from_array`` copies its
    numpy inputs (two 35 MB copies per channel, the cost this avoids); ``np.asarray`` gives the
    whole difference (export, 3-D rendering)."""

    def __init__(self, a: np.ndarray, b: np.ndarray):
        if a.shape != b.shape:
            raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
        self.a, self.b = a, b
        self.shape = a.shape
        self.ndim = a.ndim
        self.size = a.size
        self.dtype = np.result_type(a.dtype, b.dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        return np.subtract(self.a[key], self.b[key])

    def __array__(self, dtype=None, copy=None):
        out = np.subtract(self.a, self.b)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"LazyDifference(shape={self.shape}, dtype={self.dtype})"


def lazy_difference(a: np.ndarray, b: np.ndarray):
    """``a - b`` for a layer: lazy for volumes (:class:`LazyDifference`); images are small enough
    to subtract at once."""
    return a - b if a.ndim < 3 else LazyDifference(a, b)


def _show_segmentations(s: _Showing):
    """The clean and the perturbed segmentation, then their diff (yields each layer's name)."""
    viewer, source, outcome = s.viewer, s.source, s.outcome
    common, show = s.common, source.to_display
    from napari_medadv.core.pacs import model_segments  # deferred, as the pipeline above

    values = _segmentation_values(outcome)
    cmap = brats_colormap(values) if set(values) <= set(BRATS_LABELS) else None
    extra = {"colormap": cmap} if cmap is not None else {}
    segments = model_segments(outcome.model.info, values, int(outcome.clean_output.shape[1]))  # for DICOM SEG
    for name, role, seg, vis in (
            (source.result_name("segmentation (clean)"), "segmentation (clean)", outcome.seg_clean, False),
            (s.names["segmentation"], f"segmentation ({s.tag})", outcome.seg_adv, True)):
        existed = name in viewer.layers
        swapped = role != "segmentation (clean)" and ("segmentation", None) in s.swapped
        lyr = _set_layer(viewer, name, "labels", show(seg), opacity=0.55, defer_hidden=s.live,
                         metadata=s.meta(role, segments=segments), visible=vis or swapped, **extra, **common)
        if swapped:
            lyr.visible = True
        elif not existed:
            lyr.visible = vis
        s.layers[name] = lyr
        yield name

    def diff():
        ready = outcome.display.get("diff")
        return show(ready if ready is not None else diff_map(outcome.seg_clean, outcome.seg_adv))

    name = s.names["diff"]
    existed = name in viewer.layers
    lyr = _set_layer(viewer, name, "labels", diff, colormap=diff_colormap(), opacity=0.8, defer_hidden=s.live,
                     metadata=s.meta("diff"), visible=("diff", None) in s.swapped, **common)
    if not existed:
        lyr.visible = False
        lyr.features = {"index": [0, 1, 2, 3], "change": ["unchanged", *DIFF_VALUES.values()]}
    if ("diff", None) in s.swapped:
        lyr.visible = True
    s.layers[name] = lyr
    yield name


def vulnerability_limits(values: np.ndarray) -> tuple[float, float]:
    """Contrast limits of a vulnerability map: the 2nd and 99.5th percentiles of its non-zero voxels
    (a few voxels at tissue edges dominate the maximum; the background has no gradient at all)."""
    nz = values[values > 0]
    if nz.size == 0:
        return 0.0, 1.0
    if nz.size > 400_000:
        nz = nz[:: nz.size // 400_000 + 1]
    lo, hi = (float(v) for v in np.percentile(nz, [2.0, 99.5]))
    return (lo, hi) if hi > lo else (0.0, float(nz.max()))


def _show_vulnerability(s: _Showing):
    """``<case> vulnerability``: the heat map (inferno, additive over the image), one per case."""
    viewer, source, vmap = s.viewer, s.source, s.outcome.vulnerability
    name = source.result_name("vulnerability")
    existed = name in viewer.layers
    meta = s.meta("vulnerability", **vmap.describe())
    meta[META]["note"] = ("derived by napari-medadv: sensitivity of the model's loss to each voxel at the clean "
                          "image (Σ_c |∂loss/∂x_c|, native units), NOT an image")
    meta[META].pop("result", None)  # the case's map, not one result family's: never swapped out
    lyr = _set_layer(viewer, name, "image", lambda: source.to_display(vmap.values), colormap="inferno",
                     blending="additive", contrast_limits=vulnerability_limits(vmap.values), metadata=meta,
                     **s.common)
    if not existed:
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
        vul = source.result_name("vulnerability")
        if vul in viewer.layers and viewer.layers.index(vul) > viewer.layers.index(lyr):
            viewer.layers.move(viewer.layers.index(lyr), len(viewer.layers))  # the pixels over the map
        s.layers[pts_name] = lyr
        yield pts_name
    elif pts_name in viewer.layers and s.tag == "adversarial":
        viewer.layers.remove(pts_name)  # a newer non-DGDE attack: the pixel markers no longer apply


def _segmentation_values(outcome: AttackOutcome) -> list[int]:
    """The label values the segmentation layers may hold: those the model can output (its output
    kind and declaration fix them), not a pass over the volumes on the GUI thread (counting the
    values present in both maps cost 150 ms of each live frame at BraTS size)."""
    from napari_medadv.core.scoring import label_values  # deferred: opening images stays free of torch

    return sorted(set(label_values(outcome)) | {0})


def diff_map(clean: np.ndarray, adv: np.ndarray) -> np.ndarray:
    """1 = voxel gained (background → label), 2 = lost (label → background), 3 = changed class."""
    out = (adv != 0).view(np.uint8) | ((clean != 0).view(np.uint8) << 1)  # 1 gained, 2 lost, 3 both labelled
    out[(out == 3) & (clean == adv)] = 0  # labelled in both with the same class: unchanged
    return out


def prepare_display(outcome: AttackOutcome) -> AttackOutcome:
    """What showing ``outcome`` would compute on the Qt thread, computed here (call it in the
    worker): the segmentation diff map, 9 M voxels at BraTS size."""
    if outcome.seg_clean is not None and outcome.seg_adv is not None:
        outcome.display["diff"] = diff_map(outcome.seg_clean, outcome.seg_adv)
    return outcome


def show_clean_prediction(viewer: napari.Viewer, source: Source, model, seg: np.ndarray):
    values = sorted(set(model.info.label_values or []) | set(np.unique(seg).tolist()))
    extra = {"colormap": brats_colormap(values)} if set(values) <= set(BRATS_LABELS) else {}
    from napari_medadv.core.pacs import model_segments  # deferred: opening images stays free of torch

    segments = model_segments(model.info, values, int(model.n_outputs or len(values)))  # for DICOM SEG
    meta = {META: {"case": source.case, "role": "segmentation (clean)", "derived": True, "model": model.spec,
                   "segments": segments}, IMAGE_META: source.image}
    return _set_layer(viewer, source.result_name("segmentation (clean)"), "labels", source.to_display(seg),
                      opacity=0.55, metadata=meta, **source.layer_kwargs(), **extra)
