"""PACS-ready results: an attack outcome on a DICOM image as DICOM SEG objects.

For a DICOM source (a series or a single file) the result folder gets, next to the derived
``adversarial`` image (:mod:`~napari_medadv.core.io.dicom`):

* ``segmentation_clean.dcm``: the model's segmentation of the original image;
* ``segmentation_adversarial.dcm``: its segmentation of the adversarial (or artifact) image,
  which also references the derived series it was computed from.

Both reference the source series and share its Frame of Reference, so a DICOM viewer overlays
them on the original (and on the derived series); the SeriesDescription of the second says it
comes from a perturbed image. One segment per label value, named as the model names it.

The functions take an :class:`~napari_medadv.core.pipeline.AttackOutcome` ``o`` (not imported
here: the pipeline calls this module while writing its result folder).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from .. import __version__
from .attacks import ATTACKS
from .io.dicom_seg import SegAlgorithm, coded_segments, write_dicom_seg

#: result files, as ``write_outcome`` names them
CLEAN_SEG = "segmentation_clean.dcm"
ADVERSARIAL_SEG = "segmentation_adversarial.dcm"


def seg_descriptions(o) -> dict[str, tuple[str, str]]:
    """SeriesDescription (64 characters kept: the words that matter first; Manufacturer and the
    algorithm identification name napari-medadv) and ContentLabel of the clean and the
    adversarial SEG."""
    spec = ATTACKS.get(o.attack)
    if spec is not None and spec.kind == "artifact":
        sev = o.result.extra.get("severity", o.params.get("severity"))
        adv = (f"SEG of simulated artifact NOT ORIGINAL ({o.attack} severity={sev:g})",
               "ARTIFACT")
    else:
        adv = (f"SEG of adversarial image NOT ORIGINAL ({o.attack} eps={o.result.eps:g})",
               "ADVERSARIAL")
    return {"clean": (f"SEG of original image ({o.model.info.name or o.model.spec}) napari-medadv", "CLEAN"),
            "adversarial": adv}


def _algorithm(o, image: str) -> SegAlgorithm:
    params = {"image": image, "model": o.model.spec, "model_checksum": str(o.model.checksum or "")}
    if image != "original":
        params.update(attack=o.attack, eps=f"{o.result.eps:g}", seed=str(o.seed))
    return SegAlgorithm(name=f"napari-medadv {o.model.info.name or o.model.spec}", version=__version__,
                        parameters=params)


def _headers(path: Path) -> list[pydicom.Dataset]:
    """Headers of the derived image just written (a file, or a folder of slices)."""
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]


def write_outcome_segs(o, folder: Path, adversarial: Path, values) -> dict[str, str]:
    """Write the two SEGs of ``o`` into ``folder``; ``adversarial``: the derived image written
    there; ``values``: label values the model can output (``pipeline.label_values``). Returns
    ``{"segmentation_clean_dicom": name, "segmentation_adversarial_dicom": name}`` (empty when
    the model has no foreground label to describe)."""
    info = o.model.info
    every = {int(v) for v in values} | set(np.unique(o.seg_clean).tolist()) | set(np.unique(o.seg_adv).tolist())
    every.discard(0)
    n_out = int(o.clean_output.shape[1])
    segments = coded_segments(every, {v: info.label_name(v) for v in every}, brats=info.brats_regions(n_out))
    if not segments:  # a model with no foreground label: nothing a SEG could hold
        return {}
    desc = seg_descriptions(o)
    write_dicom_seg(o.seg_clean, folder / CLEAN_SEG, like=o.image, segments=segments,
                    algorithm=_algorithm(o, "original"), description=desc["clean"][0],
                    content_label=desc["clean"][1], series_number=901)
    write_dicom_seg(o.seg_adv, folder / ADVERSARIAL_SEG, like=o.image, segments=segments,
                    algorithm=_algorithm(o, desc["adversarial"][1].lower()), description=desc["adversarial"][0],
                    content_label=desc["adversarial"][1], series_number=902,
                    further_sources=_headers(adversarial))
    return {"segmentation_clean_dicom": CLEAN_SEG, "segmentation_adversarial_dicom": ADVERSARIAL_SEG}
