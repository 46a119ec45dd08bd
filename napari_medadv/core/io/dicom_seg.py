"""DICOM SEG: label maps on a DICOM image's grid as Segmentation objects that reference it.

A SEG written here overlays its source in any DICOM viewer (3D Slicer, OHIF, a PACS): it is
made with highdicom (the library for this; no hand-built datasets) from the source's own
headers, so it shares the source's Study and Frame of Reference, its frame ``k`` is derived
from source instance ``k`` (``DerivationImageSequence``) at that instance's position and
orientation, and its ``ReferencedSeriesSequence`` / ``SourceImageSequence`` name the source
series and instances.

* **BINARY** segmentation type: one bit-packed frame per slice and segment, empty ones
  included (a BraTS volume: 155 × 3 frames, 3.3 MB), so that the SEG is a complete, regularly
  spaced volume (highdicom's volume reader refuses a SEG whose frames skip slices). The newer LABELMAP type (DICOM 2024, Sup 243) would store the label values as they
  are, but few viewers read it yet; BINARY is what every SEG reader understands.
* Segment numbers run 1..N (the standard's rule for BINARY) over the label values in
  increasing order; each segment's ``SegmentDescription`` says which label value it is
  (``label value 4``), so :func:`read_dicom_seg` gives back the original values.
* Frame order: ``labels[k]`` belongs to ``like.meta["datasets"][k]`` — the reader's
  position-sorted order, the same order as the image array — whatever the file names or
  InstanceNumbers of the source.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ... import __version__
from ..errors import InputFileError
from ._files import atomic_file
from .dicom import require_referable
from .types import ImageData

#: segment numbers are unsigned 16-bit (SegmentNumber, US)
_MAX_SEGMENTS = 65535
_VALUE_RE = re.compile(r"label value (-?\d+)")

#: BraTS label values -> segmented property type (category: Morphologically Abnormal
#: Structure, SCT 49755003, CID 7150). SNOMED CT has no code for "necrotic and non-enhancing
#: tumour core", so label 1 takes Necrosis, the closest concept; enhancing tumour takes NCIt's
#: "Enhancing Lesion" (C113842), the code CID 7151 lists for it.
BRATS_TYPES: dict[int, Code] = {
    1: codes.SCT.Necrosis,  # 6574001
    2: codes.SCT.Edema,  # 79654002
    4: codes.NCIt.EnhancingLesion,  # C113842
}
#: words in a label name that mark an abnormality rather than normal anatomy
_LESION_WORDS = ("tumo", "lesion", "nodul", "mass", "cancer", "metasta", "neoplas", "opacity")


@dataclass(frozen=True)
class SegmentInfo:
    """One segment of a SEG: the label value it holds, its name and its coded meaning."""

    value: int
    label: str
    category: Code
    type: Code


@dataclass(frozen=True)
class SegAlgorithm:
    """Who made the segmentation (SEG ``SegmentationAlgorithmIdentificationSequence``)."""

    name: str
    version: str
    source: str = "napari-medadv"
    parameters: dict[str, str] = field(default_factory=dict)


def coded_segments(values, names: dict[int, str], *, brats: bool = False) -> list[SegmentInfo]:
    """A :class:`SegmentInfo` per non-zero label value, named by ``names`` (else the value).

    The codes say what a segment *is* for viewers that colour or filter by it. Only BraTS
    labels have a known meaning (:data:`BRATS_TYPES`); any other label is coded generically:
    a name that speaks of an abnormality (tumour, lesion, nodule, ...) as Morphologically
    Abnormal Structure / Lesion (SCT 52988006), anything else as Tissue / Tissue (SCT
    85756007) — true of every region a model can segment, and claiming no more.
    """
    out = []
    for v in sorted({int(x) for x in values} - {0}):
        name = str(names.get(v, v))
        if brats and v in BRATS_TYPES:
            category, kind = codes.SCT.MorphologicallyAbnormalStructure, BRATS_TYPES[v]
        elif any(w in name.lower() for w in _LESION_WORDS):
            category, kind = codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion
        else:
            category, kind = codes.SCT.Tissue, codes.SCT.Tissue
        out.append(SegmentInfo(v, name, category, kind))
    return out


def _source_headers(like: ImageData, path: Path) -> list[Dataset]:
    """The source datasets in the image's slice order, checked to be referable."""
    if like.kind not in ("dicom", "dicom-series") or not like.meta.get("datasets"):
        raise InputFileError(path, "a DICOM SEG can only be made for an image read from DICOM")
    datasets = like.meta["datasets"]
    files = like.meta.get("series_files") or like.source_files()
    for k, ds in enumerate(datasets):
        src = files[k] if k < len(files) else like.source
        require_referable(ds, src)
        if "FrameOfReferenceUID" in ds and "ImagePositionPatient" in ds and not str(ds.get("SliceThickness", "")).strip():
            raise InputFileError(src, "has no SliceThickness, which a DICOM SEG of an image in patient coordinates "
                                      "repeats (its Pixel Measures)")
    return datasets


def _for_highdicom(ds: Dataset, slice_step: float | None) -> Dataset:
    """The header highdicom builds the SEG from (a copy where it changes):

    * in a series, ``SpacingBetweenSlices`` is the spacing the reader measured from the slice
      positions (``slice_step``): highdicom copies the source's value into the SEG's Pixel
      Measures, and a header value that is absent or means the gap between slices would make
      a SEG that claims another spacing than its frame positions, which highdicom's volume
      reader then refuses;
    * an image without a patient coordinate system (a radiograph) loses its PixelSpacing:
      highdicom 0.28 would copy it into a Pixel Measures item without SliceThickness
      (projection images have none), which its own reader then refuses; such a frame lines up
      with its source pixel for pixel anyway.
    """
    if slice_step is not None:
        ds = copy.deepcopy(ds)
        ds.SpacingBetweenSlices = f"{slice_step:.6g}"
    elif not ("FrameOfReferenceUID" in ds and "ImagePositionPatient" in ds) and "PixelSpacing" in ds:
        ds = copy.deepcopy(ds)
        del ds.PixelSpacing
    return ds


def _slice_step(like: ImageData) -> float | None:
    """Mean distance (mm) between the slices of a series along their normal, else None."""
    positions = like.meta.get("slice_positions") or []
    return float(np.mean(np.diff(positions))) if like.kind == "dicom-series" and len(positions) > 1 else None


def _descriptions(segments: Sequence[SegmentInfo], algorithm: SegAlgorithm | None) -> list:
    """highdicom segment descriptions; ``algorithm=None``: drawn by hand (MANUAL)."""
    import highdicom as hd

    algo = None if algorithm is None else hd.AlgorithmIdentificationSequence(
        name=algorithm.name[:64], family=codes.cid7162.ArtificialIntelligence, version=algorithm.version[:64],
        source=algorithm.source[:64], parameters=dict(algorithm.parameters) or None)
    out = []
    for number, seg in enumerate(segments, start=1):
        d = hd.seg.SegmentDescription(
            segment_number=number, segment_label=seg.label[:64], segmented_property_category=seg.category,
            segmented_property_type=seg.type, algorithm_type="MANUAL" if algo is None else "AUTOMATIC",
            algorithm_identification=algo)
        d.SegmentDescription = f"label value {seg.value}"
        out.append(d)
    return out


def write_dicom_seg(labels, path: str | Path, *, like: ImageData, segments: Sequence[SegmentInfo],
                    algorithm: SegAlgorithm | None, description: str, content_label: str = "SEGMENTATION",
                    series_number: int = 900, further_sources: Sequence[Dataset] = ()) -> Path:
    """Write the label map ``labels`` (``like``'s spatial shape) as a BINARY DICOM SEG.

    ``segments``: one per label value to describe (values in ``labels`` must be among them or
    0); ``algorithm``: the software that made it (None: drawn by hand); ``description``:
    SeriesDescription and ContentDescription (64 characters kept); ``content_label``:
    ContentLabel (a DICOM CS: upper case, digits, ``_``, 16 characters);
    ``further_sources``: headers of other images the segmentation was computed from (e.g. a
    derived adversarial series), referenced as well but not used for the geometry.
    """
    import highdicom as hd

    path = Path(path)
    labels = np.asarray(labels)
    if labels.shape != like.spatial_shape:
        raise InputFileError(path, f"label map shape {labels.shape} does not match the image's {like.spatial_shape}")
    sources = _source_headers(like, path)
    if not segments:
        raise InputFileError(path, "no segments to write: a DICOM SEG needs at least one label value")
    if len(segments) > _MAX_SEGMENTS:
        raise InputFileError(path, f"{len(segments)} segments; a DICOM SEG holds at most {_MAX_SEGMENTS}")
    if labels.dtype.kind not in "uib" or (labels.size and labels.min() < 0):
        raise InputFileError(path, f"a DICOM SEG holds non-negative integer labels, not {labels.dtype} "
                                   f"values from {labels.min() if labels.size else 0}")
    labels = labels.astype(np.int64)
    numbers = {s.value: k for k, s in enumerate(segments, start=1)}
    present = set(np.unique(labels).tolist()) - {0}
    unknown = sorted(present - set(numbers))
    if unknown:
        raise InputFileError(path, f"label values {unknown} have no segment description")
    lut = np.zeros(int(max(numbers)) + 1, dtype=np.uint16)
    for value, number in numbers.items():
        lut[value] = number
    seg_numbers = lut[np.clip(labels, 0, len(lut) - 1)]  # label values -> segment numbers 1..N
    if like.spatial_dims == 2:
        seg_numbers = seg_numbers[None]  # one frame of one single-frame image
    try:
        seg = hd.seg.Segmentation(
            source_images=[_for_highdicom(ds, _slice_step(like)) for ds in sources], pixel_array=seg_numbers,
            segmentation_type="BINARY", segment_descriptions=_descriptions(segments, algorithm),
            series_instance_uid=hd.UID(), series_number=int(series_number), sop_instance_uid=hd.UID(),
            instance_number=1, manufacturer="napari-medadv", manufacturer_model_name="napari-medadv",
            software_versions=__version__, device_serial_number="0", series_description=description[:64],
            content_description=description[:64], content_label=content_label[:16],
            further_source_images=list(further_sources) or None, omit_empty_frames=False)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # highdicom's checks of the source
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputFileError(like.source, f"cannot make a DICOM SEG referencing this image: {detail}") from exc
    if "PatientOrientation" not in seg and "ImagePositionPatient" not in sources[0]:
        # General Image module, Type 2C for a frame without plane position/orientation (a
        # radiograph): highdicom leaves it out; the source's value, else empty (unknown)
        seg.PatientOrientation = sources[0].get("PatientOrientation", "")
    with atomic_file(path) as tmp:
        seg.save_as(tmp)
    return path


def segment_values(seg) -> dict[int, int]:
    """Segment number -> label value, from each segment's ``SegmentDescription`` (as
    :func:`write_dicom_seg` writes it), else the segment number itself."""
    out = {}
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        match = _VALUE_RE.search(str(item.get("SegmentDescription", "")))
        out[number] = int(match.group(1)) if match else number
    return out


def read_dicom_seg(path: str | Path, like: ImageData) -> np.ndarray:
    """A BINARY/LABELMAP DICOM SEG of ``like`` as a label map on ``like``'s grid (``int32``).

    Frames are placed by the source instance they reference (not by their order in the file),
    and segments get back their label values (:func:`segment_values`).
    """
    import highdicom as hd

    path = Path(path)
    sources = _source_headers(like, path)
    try:
        seg = hd.seg.segread(str(path))
        numbers = seg.get_pixels_by_source_instance(
            [ds.SOPInstanceUID for ds in sources], combine_segments=True)
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputFileError(path, f"cannot read it as a segmentation of {like.source.name}: {detail}") from exc
    mapping = segment_values(seg)
    lut = np.zeros(max(mapping, default=0) + 1, dtype=np.int32)
    for number, value in mapping.items():
        lut[number] = value
    out = lut[np.asarray(numbers, dtype=np.int64)]
    return out[0] if like.spatial_dims == 2 else out
