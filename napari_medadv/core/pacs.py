"""PACS-ready results: an attack outcome on a DICOM image as DICOM SEG objects.

For a DICOM source (a series or a single file) the result folder gets, next to the derived
``adversarial`` image (:mod:`~napari_medadv.core.io.dicom`):

* ``segmentation_clean.dcm``: the model's segmentation of the original image;
* ``segmentation_adversarial.dcm``: its segmentation of the adversarial (or artifact) image,
  which also references the derived series it was computed from.

Both reference the source series and share its Frame of Reference, so a DICOM viewer overlays
them on the original (and on the derived series); the SeriesDescription of the second says it
comes from a perturbed image. One segment per label value, named as the model names it.

The functions take an :class:`~napari_medadv.core.outcome.AttackOutcome` ``o`` (not imported
here: the pipeline calls this module while writing its result folder).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from .. import __version__
from .attacks import ATTACKS
from .io.dicom_seg import SegAlgorithm, SegmentInfo, coded_segments, write_dicom_seg

#: result files, as ``write_outcome`` names them
CLEAN_SEG = "segmentation_clean.dcm"
ADVERSARIAL_SEG = "segmentation_adversarial.dcm"


def describe_seg(image: str, *, model: str | None = None, attack: str | None = None, eps: float = 0.0,
                 severity: float = 0.0) -> tuple[str, str]:
    """SeriesDescription and ContentLabel of a SEG of the ``"original"``, ``"adversarial"`` or
    ``"artifact"`` image, or of a ``"manual"`` one (drawn by hand). The words that matter come
    first (a SeriesDescription keeps 64 characters); Manufacturer and the algorithm
    identification name napari-medadv."""
    if image == "artifact":
        return f"SEG of simulated artifact NOT ORIGINAL ({attack} severity={severity:g})", "ARTIFACT"
    if image == "adversarial":
        return f"SEG of adversarial image NOT ORIGINAL ({attack} eps={eps:g})", "ADVERSARIAL"
    if image == "original":
        return f"SEG of original image ({model}) napari-medadv", "CLEAN"
    return "SEG drawn in napari-medadv", "MANUAL"


def _perturbed_kind(attack: str) -> str:
    spec = ATTACKS.get(attack)
    return "artifact" if spec is not None and spec.kind == "artifact" else "adversarial"


def seg_descriptions(o) -> dict[str, tuple[str, str]]:
    """:func:`describe_seg` of the clean and the adversarial SEG of outcome ``o``."""
    kind = _perturbed_kind(o.attack)
    sev = float(o.result.extra.get("severity", o.params.get("severity", 0.0)) or 0.0)
    return {"clean": describe_seg("original", model=o.model.info.name or o.model.spec),
            "adversarial": describe_seg(kind, attack=o.attack, eps=float(o.result.eps), severity=sev)}


def model_segments(info, values, n_outputs: int) -> list[SegmentInfo]:
    """The segments of a model's label values (``info``: its :class:`ModelInfo`): its label names,
    and BraTS codes only for a model that declares the BraTS labels."""
    every = {int(v) for v in values} - {0}
    return coded_segments(every, {v: info.label_name(v) for v in every}, brats=info.brats_regions(n_outputs))


def _algorithm(model: str, image: str, **attack) -> SegAlgorithm:
    params = {"image": image, "model": model, **{k: str(v) for k, v in attack.items()}}
    return SegAlgorithm(name=f"napari-medadv {model}", version=__version__, parameters=params)


def _headers(path: Path) -> list[pydicom.Dataset]:
    """Headers of the derived image just written (a file, or a folder of slices)."""
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]


def write_outcome_segs(o, folder: Path, adversarial: Path, values) -> dict[str, str]:
    """Write the two SEGs of ``o`` into ``folder``; ``adversarial``: the derived image written
    there; ``values``: label values the model can output (``scoring.label_values``). Returns
    ``{"segmentation_clean_dicom": name, "segmentation_adversarial_dicom": name}`` (empty when
    the model has no foreground label to describe)."""
    every = {int(v) for v in values} | set(np.unique(o.seg_clean).tolist()) | set(np.unique(o.seg_adv).tolist())
    segments = model_segments(o.model.info, every, int(o.clean_output.shape[1]))
    if not segments:  # a model with no foreground label: nothing a SEG could hold
        return {}
    desc = seg_descriptions(o)
    model = o.model.info.name or o.model.spec
    write_dicom_seg(o.seg_clean, folder / CLEAN_SEG, like=o.image, segments=segments,
                    algorithm=_algorithm(model, "original", model_spec=o.model.spec),
                    description=desc["clean"][0], content_label=desc["clean"][1], series_number=901)
    kind = _perturbed_kind(o.attack)
    write_dicom_seg(o.seg_adv, folder / ADVERSARIAL_SEG, like=o.image, segments=segments,
                    algorithm=_algorithm(model, kind, model_spec=o.model.spec, attack=o.attack,
                                         eps=f"{o.result.eps:g}", seed=o.seed),
                    description=desc["adversarial"][0], content_label=desc["adversarial"][1], series_number=902,
                    further_sources=_headers(adversarial))
    return {"segmentation_clean_dicom": CLEAN_SEG, "segmentation_adversarial_dicom": ADVERSARIAL_SEG}


def write_layer_seg(labels, path: str | Path, like, info: dict) -> Path:
    """A label map shown in napari (``like``: the DICOM image it lies on; ``info``: the layer's
    napari-medadv metadata) as a DICOM SEG: a model's segmentation of the original or of a
    perturbed image says so, as in :func:`write_outcome_segs`; anything else (ground truth, a
    hand-drawn layer) is a MANUAL segmentation. Label values the layer's ``segments`` do not
    describe (painted by hand) get a generic segment."""
    labels = np.asarray(labels)
    known = {s.value: s for s in info.get("segments") or []}
    values = set(known) | (set(np.unique(labels).tolist()) - {0})
    generic = {s.value: s for s in coded_segments(values - set(known), {})}
    segments = [known.get(v) or generic[v] for v in sorted(values)]
    model, attack, role = info.get("model"), info.get("attack"), str(info.get("role", ""))
    if model and role.startswith("segmentation (") and role != "segmentation (clean)" and attack:
        kind = "artifact" if "severity" in info else "adversarial"
        desc = describe_seg(kind, attack=attack, eps=float(info.get("eps", 0.0)),
                            severity=float(info.get("severity", 0.0)))
        algorithm = _algorithm(model, kind, attack=attack, eps=f"{float(info.get('eps', 0.0)):g}")
    elif model and role.startswith("segmentation ("):
        desc, algorithm = describe_seg("original", model=model), _algorithm(model, "original")
    else:
        desc, algorithm = describe_seg("manual"), None
    return write_dicom_seg(labels, path, like=like, segments=segments, algorithm=algorithm,
                           description=desc[0], content_label=desc[1])
