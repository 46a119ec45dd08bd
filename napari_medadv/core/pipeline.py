"""One attack on one image file, end to end — shared by ``medadv attack``, the demo, the GUI and
the study: model input, attack, predictions, metrics, and the output folder.

Everything here works on :class:`~napari_medadv.core.io.ImageData` (native intensities, source
geometry) and :class:`~napari_medadv.core.models.LoadedModel`; nothing is resampled on disk:
outputs lie on the source grid and overlay it exactly.
"""

from __future__ import annotations

import copy
import hashlib
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .attacks import ATTACKS, AttackResult, AttackStep
from .cooccurrence import inverse_cooccurrence_from_csv
from .errors import InputFileError, MedadvError, ModelError
from .files import package_versions, to_json
from .io import ImageData, write_image, write_labels
from .models.base import LoadedModel
from .models.channels import ChannelMapping
from .outcome import AttackOutcome
from .pacs import write_outcome_segs
from .scoring import fill_ssim, label_values, measured_metrics
from .vulnerability import VulnerabilityOptions, build_map, top_percent_region, write_vulnerability



def prepare_input(image: ImageData, model: LoadedModel) -> tuple[torch.Tensor, ChannelMapping]:
    """The image as a ``1 C *spatial`` tensor on the model's device (the image's own channels, in
    its own order), after checking it fits; the wrapped model is set to pick its inputs from
    those channels by name (:mod:`~napari_medadv.core.models.channels`) and to resample from the
    image's spacing. Returns the tensor and the channel mapping used."""
    mapping = model.check_image(image.array, str(image.source), image.channel_names)
    require_contrast(image, mapping.order)
    require_input_range(image, model, mapping.order)
    model.module.set_channel_order(mapping.order, image.n_channels)
    model.module.set_input_geometry(image.geometry, image.kind)
    x = model.to_batch(image.array)
    prepare = getattr(model.module, "prepare_image", None)
    if prepare is not None:
        prepare(x)  # e.g. fit the clean image's N4 field (Liu's preprocessing), then held fixed
    return x, mapping


def model_input(image: ImageData, model: LoadedModel) -> torch.Tensor:
    """:func:`prepare_input` without the mapping."""
    return prepare_input(image, model)[0]


def require_input_range(image: ImageData, model: LoadedModel, channels) -> None:
    """Refuse intensities outside the range a model declares (``extra["input_range"]``, e.g.
    torchxrayvision's 8-bit [0, 255]): its fixed normalisation would map them far outside what it
    was trained on and every output would be silently meaningless."""
    rng = (model.info.extra or {}).get("input_range")
    if not rng or len(rng) != 2:
        return
    lo, hi = float(rng[0]), float(rng[1])
    tol = 0.01 * (hi - lo)
    sel = image.array[sorted(set(channels))]
    vmin, vmax = float(sel.min()), float(sel.max())
    if vmin < lo - tol or vmax > hi + tol:
        raise InputFileError(image.source, f"intensities {vmin:g}..{vmax:g} are outside the range {lo:g}..{hi:g} "
                                           f"that {model.spec} expects; rescale the image (e.g. to 8 bits) or "
                                           "declare the model's normalisation for this range")


def require_contrast(image: ImageData, channels=None) -> None:
    """Refuse an image whose channels (those the model reads) hold one value everywhere: there is
    nothing to perturb relative to (ε is a fraction of the range) and every quality figure would
    be infinite or undefined."""
    idx = range(image.n_channels) if channels is None else sorted(set(channels))
    flat = [c for c in idx if not np.any(image.array[c] != image.array[c].flat[0])]
    if flat:
        names = [image.channel_names[c] for c in flat]
        value = float(image.array[flat[0]].flat[0])
        what = ("the image is constant" if len(flat) == image.n_channels
                else f"channel{'s' if len(flat) > 1 else ''} {', '.join(names)} {'are' if len(flat) > 1 else 'is'} constant")
        raise InputFileError(image.source, f"{what} (every voxel {value:g}): an empty or blank image cannot be "
                                           "attacked or measured")


def resolve_target(model: LoadedModel, target, image: ImageData):
    """A target given as a label *value* / class name / label-value mask -> engine target."""
    if target is None:
        return None
    if model.info.task == "classification":
        names = model.info.class_names or []
        if isinstance(target, str):
            if target not in names:
                raise ModelError(f"target class {target!r} is not one of the model's classes {names}")
            return names.index(target)
        return int(target)
    multi_hot = model.info.output == "sigmoid" or bool(model.info.region_names)
    if isinstance(target, np.ndarray):
        if target.shape != image.spatial_shape:
            raise MedadvError(f"target mask shape {target.shape} does not match the image {image.spatial_shape}")
        t = model.label_map_to_target(target)
        return t if multi_hot else t[0]  # multi-hot: shaped like the output (1 R *spatial)
    if multi_hot:
        # overlapping regions (BraTS TC/WT/ET) or one channel per label: "every voxel = label v"
        # is the multi-hot target of a constant label map (label 1, necrotic core: TC and WT on,
        # ET off), not output index v (on a TC/WT/ET model index 1 is WT)
        return model.label_map_to_target(np.full(image.spatial_shape, int(target), dtype=np.int16))
    return model.label_value_to_index(int(target))


def content_roi(image: ImageData, max_fraction: float = 0.95) -> np.ndarray | None:
    """Voxels where any channel is non-zero, for skull-stripped images whose background is
    exactly 0 (BraTS); ``None`` when the image has no such background.

    Gradient attacks leave such a background untouched anyway (the model's non-zero
    normalisation gives it zero gradient), but random noise and DGDE would paint it — visibly,
    and changing which voxels the normalisation counts as brain. Restricting every source of
    perturbation to the same support keeps them comparable.
    """
    fg = np.any(image.array != 0, axis=0)
    frac = float(fg.mean())
    if frac == 0.0 or frac > max_fraction:
        return None
    return fg


@dataclass
class StartedAttack:
    """Everything an attack run needs before its first step (:func:`start_attack`)."""

    attack: object  # the configured Attack instance
    x: torch.Tensor  # 1 C *spatial, the image's own channels on the model's device
    mapping: ChannelMapping
    clean_output: torch.Tensor
    labels: torch.Tensor | None  # what the loss compares with (class indices, multi-hot, ...)
    target: object  # engine target (index, mask tensor) or None
    roi: np.ndarray | None
    roi_note: str
    ranking: torch.Tensor | None = None  # clean-image sensitivity that chose a top-k % region

    def at_eps(self, eps: float) -> StartedAttack:
        """The same start for a run of the same attack at another budget ``eps`` (live ε: the
        region, model input, clean output, labels and target do not depend on ε). The attack is a
        copy with only ``eps`` changed: attacks derive their step sizes from ε when they run."""
        eps = float(eps)
        if not (np.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        atk = copy.copy(self.attack)
        atk.eps = eps
        atk.last_result = None
        return replace(self, attack=atk)


def start_attack(image: ImageData, model: LoadedModel, attack: str, *, params: dict | None = None,
                 labels: np.ndarray | None = None, target=None, roi: np.ndarray | str | None = "auto",
                 seed: int = 0, clean_output: torch.Tensor | None = None,
                 top_percent: float | None = None) -> StartedAttack:
    """The shared start of every attack run (this module's :func:`iter_attack`, the study's
    cases): the region, the model input with its channel mapping, the configured attack, one
    clean forward (which also tells the label conversion the output layout), the labels and the
    target in the engine's terms. ``clean_output``: the model's output on this image when the
    caller already has it (a study reuses one per case and model). ``top_percent``: keep only that
    share of the region, the voxels where the loss is most sensitive at the clean image (one
    backward; :func:`~.vulnerability.top_percent_mask`)."""
    spec = ATTACKS.get_spec(attack)
    roi_note = "user mask"
    if isinstance(roi, str):
        if roi != "auto":
            raise MedadvError(f"roi must be a mask, 'auto' or None, got {roi!r}")
        roi = content_roi(image)
        roi_note = "auto: non-zero voxels of the image" if roi is not None else "whole image"
    elif roi is None:
        roi_note = "whole image"
    x, mapping = prepare_input(image, model)
    kwargs = dict(params or {})
    kwargs.setdefault("activation", model.activation())
    if kwargs.get("cooccurrence_from") is not None and kwargs.get("cooccurrence") is None:
        # risk-targeted PGD: the labels CSV's columns picked by the model's class names
        kwargs["cooccurrence"] = inverse_cooccurrence_from_csv(kwargs["cooccurrence_from"], model.info.class_names)
    atk = spec.create(model.module, seed=int(seed), roi=roi, **kwargs)
    clean_out = model.forward(x) if clean_output is None else clean_output
    engine_labels = None
    if labels is not None:
        try:
            engine_labels = (
                torch.as_tensor(np.asarray(labels, dtype=np.float32), device=model.device)[None]
                if model.info.task == "classification"
                else model.label_map_to_target(labels, clean_out.shape[1])
            )
        except ModelError as exc:  # say whose ground truth it is (a study runs many cases)
            raise ModelError(f"{image.source}: ground truth does not fit {model.spec}: {exc}") from None
    if target is None and spec.targeted == "required" and model.info.task == "segmentation":
        # ti-FGSM's "target_label" is a label *value* here (Liu's label 1, the necrotic core, on
        # every BraTS model whatever its output layout): the model's declaration maps it
        default = next((p.default for p in spec.params if p.name == "target_label"), None)
        target = kwargs.get("target_label", default)
    engine_target = resolve_target(model, target, image)
    if engine_target is not None and spec.targeted == "no":
        raise MedadvError(f"{spec.label} is untargeted: it takes no target", fix="untargeted")
    ranking = None
    if top_percent is not None:
        roi, roi_note, ranking = top_percent_region(atk, x, engine_labels, engine_target, roi, roi_note, top_percent)
    return StartedAttack(atk, x, mapping, clean_out, engine_labels, engine_target, roi, roi_note, ranking)


def run_attack(
    image: ImageData,
    model: LoadedModel,
    attack: str,
    *,
    params: dict | None = None,
    labels: np.ndarray | None = None,
    target=None,
    roi: np.ndarray | str | None = "auto",
    seed: int | None = None,
    callback=None,
    should_stop=None,
    vulnerability: VulnerabilityOptions | None = None,
) -> AttackOutcome:
    """Run registered attack ``attack`` on ``image`` with ``model``; see :func:`iter_attack`.

    ``callback(step)`` sees every :class:`AttackStep`; when ``should_stop()`` turns true the
    attack stops cleanly and the outcome holds the last iterate (``result.cancelled``).
    """
    gen = iter_attack(image, model, attack, params=params, labels=labels, target=target, roi=roi, seed=seed,
                      vulnerability=vulnerability)
    try:
        step = next(gen)
        while True:
            if callback is not None:
                callback(step)
            step = gen.send(bool(should_stop is not None and should_stop()))
    except StopIteration as done:
        return done.value
    finally:
        gen.close()


def iter_attack(
    image: ImageData,
    model: LoadedModel,
    attack: str,
    *,
    params: dict | None = None,
    labels: np.ndarray | None = None,
    target=None,
    roi: np.ndarray | str | None = "auto",
    seed: int | None = None,
    init: np.ndarray | None = None,
    clean_output: torch.Tensor | None = None,
    on_start: Callable[[StartedAttack], None] | None = None,
    vulnerability: VulnerabilityOptions | None = None,
    started: StartedAttack | None = None,
) -> Generator[AttackStep, bool | None, AttackOutcome]:
    """Generator form of :func:`run_attack` (for GUI workers): yields each :class:`AttackStep`,
    ``send(True)`` stops cleanly, and the :class:`AttackOutcome` is the ``StopIteration`` value.

    ``init``: a warm start on the image grid (``C *spatial``, native units) for attacks with
    ``warm_start``; ``clean_output``: the model's output on the clean image when the caller has it
    (saves the clean forward); ``on_start``: called with the :class:`StartedAttack` before the
    first step (:mod:`~napari_medadv.core.anytime` builds intermediate outcomes from it).

    ``labels``: ground-truth label values on the image grid (segmentation) or a multi-hot vector
    (classification); when given, gradient attacks use them, otherwise the clean prediction.
    ``target``: label value / mask of label values / class index or name (targeted attacks).
    ``seed``: recorded always — a random one is drawn when ``None`` so every run can be replayed.
    ``roi``: a mask of where the perturbation may go; ``"auto"`` (default) uses
    :func:`content_roi` (the non-zero support of skull-stripped images, else everywhere);
    ``None`` perturbs everywhere.
    ``vulnerability``: a top-k % region within ``roi`` and/or the vulnerability map
    (``outcome.vulnerability``; :mod:`~.vulnerability`).
    ``started``: the :func:`start_attack` of exactly these arguments, when the caller has it (live ε
    keeps one per image, model and attack settings: :meth:`StartedAttack.at_eps`); it is used as is.
    """
    seed = int(seed) if seed is not None else secrets.randbelow(2**31)
    opts = vulnerability or VulnerabilityOptions()
    s = started if started is not None else start_attack(
        image, model, attack, params=params, labels=labels, target=target, roi=roi, seed=seed,
        clean_output=clean_output, top_percent=opts.top_percent)
    atk, x, engine_labels, engine_target = s.attack, s.x, s.labels, s.target
    atk.keep_sensitivity = opts.map and s.ranking is None  # the first gradient, if taken at the clean image
    if on_start is not None:
        on_start(s)
    t0 = time.perf_counter()
    warm = None if init is None else model.to_batch(np.asarray(init, dtype=np.float32))
    # init only when given: attacks without warm starts may define iterate() without it
    steps = atk.iterate(x, engine_labels, target=engine_target, **({} if warm is None else {"init": warm}))
    try:
        step = next(steps)
        while True:
            stop = yield step
            step = steps.send(True if stop else None)
    except StopIteration as done:
        result = done.value
    finally:
        steps.close()
    return finish_outcome(s, image, model, attack, result, seed=seed, labels=labels,
                          seconds=time.perf_counter() - t0, vulnerability=opts)


def finish_outcome(s: StartedAttack, image: ImageData, model: LoadedModel, attack: str, result: AttackResult, *,
                   seed: int, labels: np.ndarray | None = None, seconds: float = 0.0,
                   vulnerability: VulnerabilityOptions | None = None) -> AttackOutcome:
    """The :class:`AttackOutcome` of a finished run started by :func:`start_attack`: the model's
    output at the result (the attack's own when it has it), label maps or probabilities, the
    vulnerability map when asked for, metrics."""
    opts = vulnerability or VulnerabilityOptions()
    # the attack's own final forward when it ran one (per-iteration tracking): not a second one
    adv_out = result.output if result.output is not None else model.forward(result.adversarial)
    clean_out, roi, roi_note = s.clean_output, s.roi, s.roi_note
    outcome = AttackOutcome(
        image=image, model=model, attack=attack, params=s.attack.get_params(), seed=seed,
        adversarial=result.adversarial[0].detach().cpu().numpy().astype(np.float32),
        result=result, clean_output=clean_out, adv_output=adv_out,
        labels=None if labels is None else np.asarray(labels), channel_mapping=s.mapping, seconds=seconds,
    )
    if model.info.task == "segmentation":
        outcome.seg_clean = model.to_label_map(clean_out)[0]
        outcome.seg_adv = model.to_label_map(adv_out)[0]
    else:
        outcome.probs_clean = model.probabilities(clean_out)[0].cpu().numpy()
        outcome.probs_adv = model.probabilities(adv_out)[0].cpu().numpy()
    if opts.map:
        outcome.vulnerability = build_map(image, s.attack, s.x, s.labels, s.target, kept=result.sensitivity,
                                          ranking=s.ranking, sigma_mm=opts.sigma_mm)
    outcome.metrics = measured_metrics(outcome)
    outcome.metrics["roi"] = roi_note if roi is None else f"{roi_note} ({int(np.count_nonzero(roi))} voxels)"
    if s.ranking is not None:  # the top-k region's backward at the clean image, beside the attack's own
        outcome.metrics["model_calls"]["top_k_backward"] = 1
    return outcome


def transfer_outcome(o: AttackOutcome, model: LoadedModel) -> AttackOutcome:
    """The same clean and adversarial images (crafted on ``o.model``) evaluated on another model:
    two forward passes, metrics as :func:`run_attack` computes them (transferability)."""
    x, mapping = prepare_input(o.image, model)
    clean_out = model.forward(x)
    adv_out = model.forward(model.to_batch(o.adversarial))
    t = AttackOutcome(image=o.image, model=model, attack=o.attack, params=o.params, seed=o.seed,
                      adversarial=o.adversarial, result=o.result, clean_output=clean_out, adv_output=adv_out,
                      labels=o.labels, channel_mapping=mapping)
    if model.info.task == "segmentation":
        t.seg_clean = model.to_label_map(clean_out)[0]
        t.seg_adv = model.to_label_map(adv_out)[0]
    else:
        t.probs_clean = model.probabilities(clean_out)[0].cpu().numpy()
        t.probs_adv = model.probabilities(adv_out)[0].cpu().numpy()
    t.metrics = measured_metrics(t, quality=copy.deepcopy(o.metrics.get("image_quality")))  # the same two images
    t.metrics["crafted_on"] = o.model.spec
    t.metrics["evaluated_on"] = model.spec
    return t


# --------------------------------------------------------------------------- record / output


def _sha256_of(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        if p.is_file():
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return "sha256:" + h.hexdigest()


def outcome_record(o: AttackOutcome, *, command: list[str] | None = None, extra: dict | None = None) -> dict:
    """record.json: enough to replay the attack (inputs + checksums, model, parameters, seed)."""
    return {
        "input": {"path": str(o.image.source), "kind": o.image.kind,
                  "checksum": _sha256_of(o.image.source_files()), "shape": list(o.image.array.shape),
                  "channels": o.image.channel_names},
        "channel_mapping": None if o.channel_mapping is None else o.channel_mapping.to_dict(),
        "model": {"spec": o.model.spec, "checksum": o.model.checksum, "info": o.model.info.to_dict(),
                  "device": str(o.model.device)},
        "attack": {"name": o.attack, "params": o.params, "seed": o.seed},
        "labels_given": o.labels is not None,
        "history": o.result.history,
        "result": o.result.extra,  # DGDE L0 history, risk target, artifact's torchio parameters ...
        "versions": package_versions(),
        "command": command if command is not None else sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }


def _suffix_for(image: ImageData) -> str:
    if image.kind in ("png", "jpeg"):
        return ".png"  # JPEG is lossy: the perturbation would not survive
    if image.kind == "tiff":
        return ".tif"
    if image.kind == "dicom":
        return ".dcm"
    if image.kind == "dicom-series":
        return ""  # a folder of derived slices
    return ".nii.gz"


def derived_descriptions(o: AttackOutcome) -> tuple[str, str]:
    """Descriptions written into the derived image and its perturbation (DICOM/NIfTI headers).

    A simulated MR artifact is not an adversarial perturbation, and the header must say which
    one a file carries; both say it is not the original.
    """
    spec = ATTACKS.get(o.attack)
    if spec is not None and spec.kind == "artifact":
        sev = o.result.extra.get("severity", o.params.get("severity"))
        what = f"simulated MR artifact ({o.attack} severity={sev:g})"
        return f"{what} NOT ORIGINAL napari-medadv", f"{what} minus original napari-medadv"
    # DICOM SeriesDescription keeps 64 characters: the words that matter come first
    return (f"adversarially perturbed ({o.attack} eps={o.result.eps:g}) NOT ORIGINAL napari-medadv",
            f"adversarial perturbation ({o.attack}) napari-medadv")


def write_outcome(o: AttackOutcome, out_dir: str | Path, *, record_extra: dict | None = None,
                  command: list[str] | None = None) -> dict[str, str]:
    """Write the result folder; all-or-nothing: files are built in a temporary folder first.

    ``adversarial.*`` (source format, marked as derived), ``perturbation.nii.gz`` (float, signed,
    source geometry), ``segmentation_clean.*``/``segmentation_adversarial.*`` (segmentation; for
    a DICOM source also as DICOM SEG ``.dcm``, :mod:`~napari_medadv.core.pacs`),
    ``vulnerability.nii.gz`` (when the outcome has a map; float, source geometry),
    ``metrics.json`` and ``record.json``.
    """
    out_dir = Path(out_dir)
    sources = {Path(p).resolve() for p in o.image.source_files()}
    if out_dir.resolve() in sources or any(out_dir.resolve() == s.parent for s in sources if o.image.kind in ("brats", "dicom-series")):
        raise MedadvError(f"{out_dir}: the output folder must not be the input or its folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    written: dict[str, str] = {}
    try:
        suffix = _suffix_for(o.image)
        desc, pdesc = derived_descriptions(o)
        written["adversarial"] = write_image(o.adversarial, tmp / f"adversarial{suffix}", like=o.image,
                                             description=desc).name
        written["perturbation"] = write_image(o.perturbation, tmp / "perturbation.nii.gz", like=o.image,
                                              description=pdesc).name
        if o.seg_clean is not None:
            lab_suffix = ".nii.gz" if o.image.spatial_dims == 3 or suffix == ".nii.gz" else ".png"
            written["segmentation_clean"] = write_labels(o.seg_clean, tmp / f"segmentation_clean{lab_suffix}",
                                                         like=o.image).name
            written["segmentation_adversarial"] = write_labels(
                o.seg_adv, tmp / f"segmentation_adversarial{lab_suffix}", like=o.image).name
            if o.image.kind in ("dicom", "dicom-series"):  # DICOM SEGs that overlay the source in a viewer
                written.update(write_outcome_segs(o, tmp, tmp / written["adversarial"], label_values(o)))
        if o.vulnerability is not None:
            written["vulnerability"] = write_vulnerability(o.vulnerability, tmp / "vulnerability.nii.gz", o.image).name
        fill_ssim(o)  # a live result saved before its SSIM arrived
        (tmp / "metrics.json").write_text(to_json(o.metrics))
        written["metrics"] = "metrics.json"
        (tmp / "record.json").write_text(to_json(outcome_record(o, command=command, extra=record_extra)))
        written["record"] = "record.json"
        _move_into(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {k: str(out_dir / v) for k, v in written.items()}


def _move_into(tmp: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp creates 0700; the result folder is a normal folder
        os.replace(tmp, out_dir)
        return
    if not out_dir.is_dir():
        raise MedadvError(f"{out_dir}: exists and is not a folder")
    for item in tmp.iterdir():
        dest = out_dir / item.name
        if dest.is_dir() and not item.is_dir():
            raise MedadvError(f"{dest}: a folder is in the way of an output file")
        if dest.is_dir():
            shutil.rmtree(dest)
        os.replace(item, dest)
