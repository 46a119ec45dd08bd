"""Matched image quality in the GUI: an MR artifact at the PSNR (or SSIM) of the attack on screen,
its comparison readouts, and the side-by-side grid view for talks.

No Qt widgets here (the Attack and Readouts docks call these): :func:`match_job` runs in a
worker, :func:`comparison_rows` and :func:`caption` are plain functions, :class:`SideBySide`
drives napari's grid mode and restores what it changed.

The search is :func:`napari_medadv.core.matching.match_for_image` on the attack's own image,
ground truth, region and the Attack dock's seed; the artifact is then run once more at the
severity found with :func:`napari_medadv.core.pipeline.run_attack`, so its layers, readouts and
"Save attack" folder are exactly what ``medadv attack --attack <artifact> --severity s`` gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

# core.matching as a module: match_job looks its functions up at call time (a GUI test holds the search)
from napari_medadv.core import matching
from napari_medadv.core.attacks import ATTACKS
from napari_medadv.core.errors import MedadvError
from napari_medadv.core.pipeline import run_attack

from .compat import camera as _camera
from .compat import grid as _grid
from .layers import META, labels_for
from .results import is_artifact, result_layer_names

if TYPE_CHECKING:
    import napari

    from napari_medadv.core.matching import MatchResult

    from .layers import Source
    from .session import Shown

#: most evaluations of the artifact the search may spend (each is one torchio transform)
MAX_EVALS = 40
METRIC_UNITS = {"psnr": " dB", "ssim": ""}
METRIC_LABELS = {"psnr": "PSNR", "ssim": "SSIM"}


def artifact_choices() -> list[tuple[str, str]]:
    """``(label, registry name)`` of every MR artifact in the registry, in registry order."""
    return [(_short_label(s.label), n) for n, s in ATTACKS.items() if s.kind == "artifact"]


def _short_label(label: str) -> str:
    return label.replace(" (torchio)", "")


def short_label(attack: str) -> str:
    """``"FGSM"``, ``"MR motion"``: the registry label without the library in brackets."""
    spec = ATTACKS.get(attack)
    return _short_label(spec.label) if spec is not None else attack


def knob_text(outcome) -> str:
    """``"ε 3.0 %"`` for an attack, ``"severity 0.250"`` for an MR artifact, the pixel budget of an
    L0 attack (DGDE has no ε: its "ε" is the whole range)."""
    if is_artifact(outcome.attack):
        sev = outcome.result.extra.get("severity", outcome.params.get("severity", 0.0))
        return f"severity {float(sev):.3f}"
    spec = ATTACKS.get(outcome.attack)
    if spec is not None and not spec.takes_eps:
        amp = outcome.params.get("amplitude")
        extra = outcome.result.extra
        l0 = (extra.get("l0") or [extra.get("step_metrics", {}).get("l0")])[0]  # a result, or a running frame
        where = "values free in range" if amp is None else f"±{100 * float(amp):.1f} % of range"
        return f"L0 {l0} pixels, {where}" if l0 is not None else f"no success, {where}"
    return f"ε {100 * float(outcome.result.eps):.1f} %"


def column_label(outcome) -> str:
    """Short table header: ``"FGSM ε 3.0 %"``, ``"bias field s=0.250"``."""
    if is_artifact(outcome.attack):
        sev = float(outcome.result.extra.get("severity", outcome.params.get("severity", 0.0)))
        return f"{short_label(outcome.attack).removeprefix('MR ')} s={sev:.3f}"
    return f"{short_label(outcome.attack)} {knob_text(outcome)}"


@dataclass
class Matched:
    """An MR artifact at the image quality of an attack result (both on the same image)."""

    attack: Shown  # the attack result the artifact was matched to
    artifact: Shown  # the artifact at the severity found
    match: MatchResult

    @property
    def metric(self) -> str:
        return self.match.metric

    def summary(self) -> str:
        m = self.match
        unit, label = METRIC_UNITS[m.metric], METRIC_LABELS[m.metric]
        head = (f"{short_label(m.source)} {m.knob} {m.value:.3f}: {label} {m.achieved:.4g}{unit} "
                f"(target {m.target:.4g}{unit} from {short_label(self.attack.outcome.attack)})")
        if m.reached:
            return head + f" — matched within {m.tolerance:g}{unit}"
        return head + f" — NOT matched: {m.note}"


# ----------------------------------------------------------------------------- worker


def match_job(source: Source, model, artifact: str, metric: str, attack_adversarial: np.ndarray, labels, roi,
              seed: int, *, should_stop, report, max_evals: int = MAX_EVALS):
    """Generator for a :class:`~.workers.Job` with ``hooks=True``.

    Target = the attack's ``metric`` on ``source`` (as ``metrics.json`` computes it); then the
    severity search (progress ``(n, max_evals + 1, record)`` per evaluation through ``report``,
    stopped by ``should_stop``), then one run of the artifact at that severity. Returns
    ``(MatchResult, AttackOutcome)``, or ``None`` when cancelled.
    """
    total = max_evals + 1
    target = matching.image_quality(source.image.array[None], np.asarray(attack_adversarial)[None], metric)
    yield 0, total, {"target": target}

    def progress(n: int, value: float, quality: float) -> None:
        report(n, total, {"n": n, "value": value, "quality": quality, "target": target})

    m = matching.match_for_image(source.image, model, artifact, **{metric: target}, labels=labels, roi=roi, seed=seed,
                        max_evals=max_evals, callback=progress, should_stop=should_stop)
    if m.cancelled:
        return None
    m.perturbed = None  # the outcome below holds the image
    yield total - 1, total, {"running": m.value}
    outcome = run_attack(source.image, model, artifact, params=m.params, labels=labels, roi=roi, seed=seed)
    return m, outcome


# ----------------------------------------------------------------------------- readouts


def _headline_dice(metrics: dict) -> tuple[str, float] | None:
    """(label, value) of the Dice that sums a segmentation up: WT vs ground truth if there is
    one (else vs the clean prediction); foreground when the labels are not BraTS-like."""
    d = metrics.get("dice")
    if not d:
        return None
    block = d.get("ground_truth_vs_adversarial") or d["clean_vs_adversarial"]
    if block.get("regions"):
        return "Dice WT", float(block["regions"]["WT"])
    return "Dice", float(block["foreground"])


def caption(shown: Shown, sep: str = "\n") -> str:
    """Caption of a side-by-side cell: source and knob, then PSNR and the headline Dice (or the
    most changed probability); ``sep`` between the two lines."""
    o = shown.outcome
    m = o.metrics or {}
    parts = []
    iq = m.get("image_quality")
    if iq:
        parts.append(f"PSNR {iq['psnr']:.1f} dB")
    dice = _headline_dice(m)
    if dice is not None:
        parts.append(f"{dice[0]} {dice[1]:.2f}")
    elif "probabilities" in m:
        name, p = max(m["probabilities"].items(), key=lambda kv: abs(kv[1]["change"]))
        parts.append(f"P({name}) {p['clean']:.2f}→{p['adversarial']:.2f}")
    return f"{short_label(o.attack)} {knob_text(o)}{sep}" + " · ".join(parts)


def comparison_rows(matched: Matched) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)``: the attack and the matched artifact side by side (strings), from
    their ``metrics.json`` dicts, plus the matched target and whether it was reached."""
    a, b = matched.attack.outcome, matched.artifact.outcome
    ma, mb = a.metrics or {}, b.metrics or {}
    header = ["metric", column_label(a), column_label(b)]
    rows: list[list[str]] = []

    def row(label, get, fmt):
        vals = []
        for m in (ma, mb):
            try:
                vals.append(fmt(get(m)))
            except (KeyError, TypeError):
                vals.append("")
        rows.append([label, *vals])

    if "dice" in ma or "dice" in mb:
        ref = "ground_truth_vs_adversarial"
        if ref not in ma.get("dice", {}):
            ref = "clean_vs_adversarial"
        tag = "GT" if ref.startswith("ground") else "clean"
        regions = (ma.get("dice", {}).get(ref) or {}).get("regions") or {}
        for r in regions:
            row(f"Dice {r} vs {tag}", lambda m, r=r: m["dice"][ref]["regions"][r], lambda v: f"{v:.4f}")
        row(f"Dice foreground vs {tag}", lambda m: m["dice"][ref]["foreground"], lambda v: f"{v:.4f}")
        row("segmentation voxels changed", lambda m: m["segmentation_changed_voxels"], str)
    for name in (ma.get("probabilities") or {}):
        row(f"P({name}) perturbed", lambda m, n=name: m["probabilities"][n]["adversarial"], lambda v: f"{v:.4f}")
    row("PSNR dB (all channels)", lambda m: m["image_quality"]["psnr"], lambda v: f"{v:.2f}")
    row("SSIM (mean of channels)", lambda m: m["image_quality"]["ssim"], lambda v: f"{v:.4f}")
    row("RMSE (native)", lambda m: m["image_quality"]["rmse"], lambda v: f"{v:.4g}")
    row("L0 (changed voxels)", lambda m: m["image_quality"]["l0"], lambda v: str(int(v)))
    mr = matched.match
    unit = METRIC_UNITS[mr.metric]
    rows.append([f"matched {METRIC_LABELS[mr.metric]} (target{unit})", f"{mr.target:.4g}", f"{mr.achieved:.4g}"])
    rows.append(["reached (within tolerance)", "", f"{'yes' if mr.reached else 'NO'} (±{mr.tolerance:g}{unit}, "
                                                   f"{len(mr.evaluations)} evaluations)"])
    return header, rows


# ----------------------------------------------------------------------------- side by side


def _visible_channel(viewer: napari.Viewer, source: Source, per_channel: list[list[str]]) -> int:
    """The channel whose result (or source) image is on screen; else flair, else the first."""
    for names in (*per_channel, source.channel_layers):
        for c, n in enumerate(names):
            if n in viewer.layers and viewer.layers[n].visible:
                return c
    cn = source.image.channel_names
    return cn.index("flair") if "flair" in cn else 0


@dataclass
class _Saved:
    order: list  # layer objects, bottom to top
    visible: dict  # layer -> visible
    grid: dict
    camera: dict
    selected: Any


class SideBySide:
    """Adversarial vs artifact in napari's grid mode: one cell per result (its image for the
    contrast on screen, its segmentation, a caption with PSNR and Dice), every other layer
    hidden. :meth:`disable` restores the layer order, visibility, grid and camera as they were.

    A cell is a stride-group of consecutive layers (napari draws hidden layers nowhere), so the
    cells' layers are moved to the bottom of the list, in cell order, while the view is on.
    Captions are empty Points layers whose *name* is the caption, shown with napari's
    per-layer name overlay (drawn in the layer's own grid cell).
    """

    CAPTION_ROLE = "side-by-side caption"
    OUTLINE_ROLE = "side-by-side outline"

    def __init__(self, viewer: napari.Viewer):
        self.viewer = viewer
        self._saved: _Saved | None = None
        self._added: list = []

    @property
    def active(self) -> bool:
        return self._saved is not None

    def show(self, matched: Matched, channel: int | None = None) -> None:
        """The attack and the artifact of ``matched`` side by side, with the case's ground truth
        (if any) outlined in both cells."""
        self.enable(self.cells_for(matched, channel), outline=labels_for(self.viewer, matched.attack.source))

    def cells_for(self, matched: Matched, channel: int | None = None) -> list[tuple[list, str]]:
        """``[(layers bottom→top, caption), ...]`` for the attack and the artifact of ``matched``
        (``channel``: the contrast to show; default: the one on screen)."""
        cells = []
        src = matched.attack.source
        if channel is None:
            channel = _visible_channel(self.viewer, src, [
                result_layer_names(s.source, s.outcome.attack)["image"] for s in (matched.artifact, matched.attack)])
        for shown in (matched.attack, matched.artifact):
            names = result_layer_names(shown.source, shown.outcome.attack)
            wanted = [names["image"][channel], names["segmentation"]]
            layers = [self.viewer.layers[n] for n in wanted if n in self.viewer.layers]
            if not layers:
                raise MedadvError(f"the layers of {shown.outcome.attack} on {shown.source.case} were removed; "
                                  "run the match again")
            cells.append((layers, caption(shown)))
        return cells

    def enable(self, cells: list[tuple[list, str]], *, outline=None, font_size: float = 12) -> None:
        """Show each ``(layers, caption)`` in its own grid cell, left to right; ``outline``: a
        Labels layer (the ground truth) drawn as an outline in every cell."""
        if self.active:
            self.disable()
        v = self.viewer
        self._saved = _Saved(
            order=list(v.layers), visible={lyr: lyr.visible for lyr in v.layers},
            grid={k: getattr(_grid(v), k) for k in ("enabled", "stride", "shape", "spacing")},
            camera={"center": tuple(_camera(v).center), "zoom": float(_camera(v).zoom)},
            selected=v.layers.selection.active)
        outline = outline if outline is not None and outline in v.layers else None
        stride = max(len(layers) for layers, _ in cells) + 1 + (outline is not None)
        with v.layers.batched_update():  # one scene-graph update for all the additions, moves, toggles
            for lyr in v.layers:
                lyr.visible = False
            ordered: list = []
            for k, (layers, text) in enumerate(cells):
                ref = layers[0]
                if outline is not None:  # a layer draws in one cell only: one outline copy per cell
                    copy = v.add_labels(outline.data, name=_unique(v, f"{outline.name} (outline {k + 1})"),
                                        scale=outline.scale, translate=outline.translate,
                                        affine=outline.affine, opacity=1.0,
                                        colormap=outline.colormap,
                                        metadata={META: {"role": self.OUTLINE_ROLE, "derived": True}})
                    copy.contour = 1
                    self._added.append(copy)
                    layers = [*layers, copy]
                cap = v.add_points(np.empty((0, ref.ndim)), ndim=ref.ndim, name=_unique(v, text), scale=ref.scale,
                                   translate=ref.translate, affine=ref.affine,
                                   metadata={META: {"role": self.CAPTION_ROLE, "derived": True}})
                self._added.append(cap)
                ov = cap.name_overlay
                ov.font_size = font_size
                ov.box = True  # readable over bright anatomy
                ov.box_color = (0.0, 0.0, 0.0, 0.55)
                ov.color = (1.0, 1.0, 1.0, 1.0)
                ov.visible = True
                pad = [None] * (stride - 1 - len(layers))  # equal groups keep the cells aligned
                ordered.extend([*layers, *pad, cap])
            # bottom of the list, in cell order (group i = indices i*stride ... i*stride + stride - 1)
            placed = [lyr for lyr in ordered if lyr is not None]
            for i, lyr in enumerate(ordered):
                if lyr is None:  # a cell with fewer layers: borrow a hidden layer as padding
                    spare = next((x for x in v.layers if x not in placed), None)
                    if spare is None:
                        continue
                    placed.append(spare)
                    lyr = spare
                v.layers.move(v.layers.index(lyr), i)
            shown = {id(x) for layers, _ in cells for x in layers} | {id(x) for x in self._added}
            for lyr in v.layers:
                lyr.visible = id(lyr) in shown
            _grid(v).stride = stride
            _grid(v).shape = (1, len(cells))
            _grid(v).spacing = 0.02
            _grid(v).enabled = True
        v.reset_view()
        v.layers.selection.active = cells[0][0][0]  # layer controls of the attack's image, not a caption

    def disable(self) -> None:
        """Remove the captions and restore order, visibility, grid and camera."""
        saved, self._saved = self._saved, None
        if saved is None:
            return
        v = self.viewer
        g = saved.grid
        _grid(v).enabled = False
        with v.layers.batched_update():  # one scene-graph update for all the moves and toggles
            for cap in self._added:
                if cap in v.layers:
                    v.layers.remove(cap)
            self._added = []
            _grid(v).stride, _grid(v).shape, _grid(v).spacing = g["stride"], g["shape"], g["spacing"]
            present = [lyr for lyr in saved.order if lyr in v.layers]
            newer = [lyr for lyr in v.layers if lyr not in saved.visible]  # added meanwhile: on top
            for i, lyr in enumerate(present + newer):
                j = v.layers.index(lyr)
                if j != i:
                    v.layers.move(j, i)
            for lyr in present:
                lyr.visible = saved.visible[lyr]
        _grid(v).enabled = g["enabled"]
        _camera(v).center = saved.camera["center"]
        _camera(v).zoom = saved.camera["zoom"]
        if saved.selected is not None and saved.selected in v.layers:
            v.layers.selection.active = saved.selected


def _unique(viewer: napari.Viewer, name: str) -> str:
    out, k = name, 2
    while out in viewer.layers:
        out, k = f"{name} [{k}]", k + 1
    return out
