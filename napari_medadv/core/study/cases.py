"""One case of a study, as a Dask worker (or the study's own process) runs it: every source model
attacked with every grid point, each adversarial image evaluated on the source model and, with
``transfer``, on every other model (craft on A, evaluate on B: Ghamizi et al. 2023, Table 2).
:func:`run_case` returns the case's rows and per-iteration history; :func:`transfer_attack` is one
transfer cell on one image. Every attack is seeded by :func:`case_seed` from what it attacks, so
the numbers do not depend on where or in which order cases run."""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import threading
import time
from types import SimpleNamespace

import numpy as np
import torch

from .. import metrics as M
from ..attacks import ATTACKS
from ..brats import BRATS_REGIONS
from ..errors import MedadvError
from ..io import read_image
from ..matching import match_for_image
from ..models import load_model
from ..pipeline import model_input, run_attack, start_attack
from ..readouts import DiceTable
from ..scoring import measured_image_quality
from .cluster import gpu_index, unreachable_error, where_am_i
from .config import StudyConfig, model_paths
from .dataset import Case
from .grid import GridPoint
from .robustness import breaking_columns
from .staging import localize
from .store import NO_ATTACK

_MODELS: dict = {}
_MODELS_LOCK = threading.Lock()


def cached_model(spec: str, device: str, trust: bool):
    """Models cached per (spec, device, thread): Dask worker threads never share a module. A
    worker loads each model once and keeps it on its device for all its cases."""
    return _cached_model(spec, device, trust)[0]


def _cached_model(spec: str, device: str, trust: bool):
    """``(model, loaded now)``."""
    key = (spec, device, trust, threading.get_ident())
    with _MODELS_LOCK:
        m = _MODELS.get(key)
    if m is not None:
        return m, False
    m = load_model(spec, device=_worker_device(device), trust_code=trust)
    with _MODELS_LOCK:
        _MODELS[key] = m
    return m, True


def _worker_device(device: str) -> str:
    """``auto``/``cuda`` on a Dask worker that sees several GPUs: one GPU per worker, by its name
    (:func:`~.cluster.gpu_index`)."""
    if device not in ("auto", "cuda"):
        return device
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n > 1:
        try:
            from distributed import get_worker  # deferred: heavy, and it matters only in a Dask worker

            return f"cuda:{gpu_index(get_worker().name, n)}"
        except (ImportError, ValueError):
            pass
    return device


def _read_case(case: Case, stage: dict | None):
    """The case's image, from the worker's staged copy with ``stage``; a worker that cannot read
    it (on another machine, or started in another folder) says so, naming itself."""
    path = localize(case.path, stage)
    if not os.access(path, os.R_OK):
        raise unreachable_error({"worker": where_am_i(), "host": socket.gethostname(), "missing": [case.path]})
    return read_image(path)


def localize_spec(spec: str, stage: dict | None) -> str:
    """A model spec with its file replaced by the worker's staged copy."""
    paths = model_paths(spec)
    if not stage or not paths:
        return spec
    return spec.replace(paths[0], localize(paths[0], stage), 1)


def case_seed(seed: int, case_id: str, model: str, key: str) -> int:
    """Seed of one attack: a function of what it attacks, not of scheduling order."""
    digest = hashlib.sha256(f"{seed}|{case_id}|{model}|{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def run_case(case: Case, config: dict, extra: dict | None = None, stage: dict | None = None) -> dict:
    """Attack one case with every source model and grid point; return its rows.

    ``config`` is :func:`dataclasses.asdict` of a :class:`StudyConfig`; ``extra`` holds what the
    study derived from the whole dataset (class names, inverse co-occurrence matrix); ``stage``
    maps the client's paths to the worker's local copies (``--stage``, :mod:`.staging`). Rows name
    cases and models by the client's paths either way.
    """
    extra = extra or {}
    cfg = StudyConfig(**config)
    points = cfg.points()
    image = _read_case(case, stage)
    loaded = {s: _cached_model(localize_spec(s, stage), cfg.device, cfg.trust_model_code) for s in cfg.models}
    models = {s: m for s, (m, _) in loaded.items()}
    rows: list[dict] = []
    history: list[dict] = []
    t_case = time.perf_counter()
    clean_cache: dict = {}
    breaking, details = cfg.breaking(), []

    def clean_output(spec: str):
        if spec not in clean_cache:  # one clean forward per model and case
            clean_cache[spec] = models[spec].forward(model_input(image, models[spec]))  # also checks the image
        return clean_cache[spec]

    for src, m in models.items():
        mapping = m.check_image(image.array, str(image.source), image.channel_names)
        task = m.info.task
        labels = _case_labels(case, image, m, extra)
        targets = list(models) if cfg.transfer else [src]
        for gp in points:
            base = {"case": case.case_id, "source": src, "grid_key": gp.key, "attack": gp.attack,
                    "attack_label": gp.label, "eps": gp.eps if gp.attack != NO_ATTACK else 0.0,
                    "steps": gp.steps, "params": json.dumps(gp.params_dict, sort_keys=True), "task": task,
                    "channels": mapping.describe()}
            if gp.attack == NO_ATTACK:
                for tgt in targets:
                    if tgt != src:
                        continue  # the clean evaluation belongs to each model once
                    out = clean_output(tgt)
                    rows.append({**base, "target": tgt, "seed": -1, "seconds": 0.0,
                                 **_quality(image.array, image.array),
                                 **_evaluate(models[tgt], out, out, labels, case, extra),
                                 **_breaking(image, m, labels, breaking, cfg, case, src, details)})
                continue
            params = gp.params_dict
            if gp.attack == "pgd-risk" and params.get("cooccurrence") is None \
                    and params.get("cooccurrence_from") is None:
                inv = model_cooccurrence(m, extra)
                if inv is None:
                    raise MedadvError("pgd-risk needs a labels CSV to build the inverse co-occurrence matrix")
                params["cooccurrence"] = inv
            iterative = any(p.name == "steps" for p in ATTACKS[gp.attack].params)
            track = cfg.track_iterations and iterative and not ATTACKS[gp.attack].gradient_free
            seed = case_seed(cfg.seed, case.case_id, src, gp.seed_key)
            if gp.match:
                adv, clean_out, adv_out, result, seconds, matched = _matched_attack(
                    image, m, gp, params, labels, cfg.roi, seed, clean_output(src), track)
                base = {**base, **matched}
            else:
                if track:
                    params["track_metrics"] = True
                adv, clean_out, adv_out, result, seconds = _attack(image, m, gp.attack, params, labels, cfg.roi,
                                                                     seed, clean_output(src))
            quality = {**_quality(image.array, adv), **l0_fields(result)}
            for tgt in targets:
                tm = models[tgt]
                if tgt == src:
                    t_clean, t_adv, tlabels = clean_out, adv_out, labels
                else:
                    t_clean = clean_output(tgt)
                    tm.module.set_input_geometry(image.geometry, image.kind)
                    t_adv = tm.forward(tm.to_batch(adv))
                    tlabels = _case_labels(case, image, tm, extra)
                rows.append({**base, "target": tgt, "seed": seed, "seconds": round(seconds, 3), **quality,
                             **_evaluate(tm, t_clean, t_adv, tlabels, case, extra)})
            history.extend(history_rows(case.case_id, src, gp, result.history))
    return {"case": case.case_id, "path": case.path, "rows": rows, "history": history,
            "seconds": round(time.perf_counter() - t_case, 2), "worker": where_am_i(),
            "models_loaded": sum(new for _, new in loaded.values()), **({"breaking": details} if breaking else {})}


def _breaking(image, model, labels, settings: dict | None, cfg: StudyConfig, case: Case, src: str,
              details: list) -> dict:
    """The breaking-ε columns of a model's no-attack row (``{}`` unless the grid asks for them);
    appends the searches' records to ``details``. Each attack seeded as a grid point would be."""
    if settings is None:
        return {}
    if model.info.task != "segmentation":  # as `medadv attack --breaking-eps`: a classifier's search (FGSM's
        labels = None                       # fast ε path takes label maps only) attacks the clean prediction
    cols, recs = breaking_columns(image, model, labels, settings, cfg.roi,
                                  lambda attack: case_seed(cfg.seed, case.case_id, src, f"breaking[{attack}]"))
    details.extend({"source": src, **r} for r in recs)
    return cols


def _attack(image, model, attack: str, params: dict, labels, roi_mode: str, seed: int, clean_out=None):
    """One registry attack on one image — :func:`~napari_medadv.core.pipeline.iter_attack`
    without its full metrics.json block (per-label Dice blocks, per-channel norms) that a study
    does not tabulate.

    Returns ``(adversarial C *spatial, clean output, adversarial output, AttackResult, seconds)``.
    """
    s = start_attack(image, model, attack, params=params, labels=labels, roi="auto" if roi_mode == "auto" else None,
                     seed=seed, clean_output=clean_out)
    t0 = time.perf_counter()
    result = s.attack.run(s.x, s.labels)
    seconds = time.perf_counter() - t0
    clean_out = s.clean_output
    # the attack's final tracked forward when it ran one, not a second one
    adv_out = result.output if result.output is not None else model.forward(result.adversarial)
    adv = result.adversarial[0].detach().cpu().numpy().astype(np.float32)
    return adv, clean_out, adv_out, result, seconds


def _matched_attack(image, model, gp: GridPoint, params: dict, labels, roi_mode: str, seed: int, clean_out,
                    track: bool):
    """A matched-quality grid point on one case: search the knob that reaches the point's
    PSNR/SSIM (:func:`~napari_medadv.core.matching.match_for_image`), then evaluate the image
    it gave.

    Returns :func:`_attack`'s tuple plus the row fields of the match (target, achieved, knob,
    value, reached). ``seconds`` is the whole search. An iterative attack whose iterations are
    tracked is run once more at the found value (same seed: the same image) for its history.
    """
    t0 = time.perf_counter()
    try:
        mr = match_for_image(image, model, gp.attack, **{gp.match_metric: gp.match_target}, params=params,
                             labels=labels, roi="auto" if roi_mode == "auto" else None, seed=seed,
                             tol=gp.match_tol)
    except ValueError as exc:
        raise MedadvError(f"{gp.label}: {exc}") from None
    seconds = time.perf_counter() - t0
    matched = {"match_metric": mr.metric, "match_target": mr.target, "match_achieved": mr.achieved,
               "match_tol": mr.tolerance, "match_knob": mr.knob, "match_value": mr.value,
               "match_reached": bool(mr.reached), "match_evaluations": len(mr.evaluations)}
    if mr.knob == "eps":
        matched["eps"] = mr.value
    if track:
        adv, clean_out, adv_out, result, _ = _attack(image, model, gp.attack, {**mr.params, "track_metrics": True},
                                                     labels, roi_mode, seed, clean_out)
        return adv, clean_out, adv_out, result, seconds, matched
    x = mr.perturbed  # the image at the value found: no need to run the source again
    adv_out = model.forward(x)
    adv = x[0].detach().cpu().numpy().astype(np.float32)
    return adv, clean_out, adv_out, SimpleNamespace(history=[]), seconds, matched


def history_rows(case_id: str, src: str, gp: GridPoint, steps: list[dict]) -> list[dict]:
    """The per-iteration rows of one attack run (``history.csv``).

    The engine records each step's metrics at the iterate *before* its update, plus the final
    iterate: entry i is the image after i updates (0 = the clean image or random start). DGDE
    records its accepted solutions instead: step = its iteration, with L0, the attacked class's
    probability and the queries so far (a failed start has no L0)."""
    rows = []
    for i, h in enumerate(steps):
        rec = {"case": case_id, "source": src, "grid_key": gp.key, "attack": gp.attack,
               "attack_label": gp.label, "eps": gp.eps, "steps": gp.steps,
               "step": int(h.get("iteration", i)), "loss": _f(h.get("loss")),
               "psnr": _f(h.get("psnr")), "dice_fg": _f(h.get("dice"))}
        if "l0" in h:
            ok = h.get("phase") != "start-failed"
            rec.update(l0=float(h["l0"]) if ok else math.nan, probability=_f(h.get("probability")),
                       queries=_f(h.get("queries")), phase=h.get("phase"))
        rows.append(rec)
    return rows


def l0_fields(result) -> dict:
    """Per-case fields of an L0 attack (DGDE): ``success`` (the paper's criterion), ``l0_pixels``
    (NaN for a failure: it is never counted as 0 pixels) and ``n_pixels``; ``{}`` for others."""
    extra = getattr(result, "extra", None) or {}
    if "l0" not in extra:
        return {}
    ok = bool((result.success or [False])[0])
    l0 = extra["l0"][0]
    return {"success": ok, "l0_pixels": float(l0) if ok and l0 is not None else math.nan,
            "n_pixels": int(extra.get("n_pixels", 0))}


def _f(v) -> float:
    return math.nan if v is None else float(v)


def _case_labels(case: Case, image, model, extra: dict):
    if model.info.task == "segmentation":
        return image.labels
    if case.labels is None:
        return None
    names = extra.get("class_names") or []
    model_names = model.info.class_names or names
    missing = [n for n in model_names if n not in names]
    if missing:
        raise MedadvError(f"the labels CSV has no column for the model's class(es) {', '.join(missing)}")
    return [case.labels[names.index(n)] for n in model_names]


def model_cooccurrence(model, extra: dict):
    """The study's inverse co-occurrence matrix (dataset class order) in the model's class order,
    or None without one."""
    inv = extra.get("inverse_cooccurrence")
    if inv is None:
        return None
    inv = np.asarray(inv, dtype=np.float64)
    names = extra.get("class_names") or []
    model_names = model.info.class_names or names
    if not names or list(model_names) == list(names):  # no names: already in the model's order
        return inv
    missing = [n for n in model_names if n not in names]
    if missing:
        raise MedadvError(f"the co-occurrence labels have no column for the model's class(es) {', '.join(missing)}")
    idx = [names.index(n) for n in model_names]
    return inv[np.ix_(idx, idx)]


def _quality(clean: np.ndarray, adv: np.ndarray) -> dict:
    if np.array_equal(clean, adv):
        return {"psnr": math.inf, "ssim": 1.0, "rmse": 0.0, "linf": 0.0, "l0_fraction": 0.0}
    iq = measured_image_quality(clean, adv, [str(i) for i in range(clean.shape[0])])
    return {k: iq[k] for k in ("psnr", "ssim", "rmse", "linf", "l0_fraction")}


def _evaluate(model, clean_out, adv_out, labels, case: Case, extra: dict) -> dict:
    """Per-case metrics of one (target) model's outputs."""
    if model.info.task == "segmentation":
        seg_clean = model.to_label_map(clean_out)[0]
        seg_adv = model.to_label_map(adv_out)[0]
        ref = labels if labels is not None else seg_clean
        out = {"reference": "ground truth" if labels is not None else "clean prediction"}
        # one confusion matrix of uint8 label indices (readouts.DiceTable, equal to metrics' MONAI
        # Dice to 1e-6, tested) instead of one-hot masks per label and region: 0.05 s against
        # 1.5-3 s for the BraTS regions of a BraTS-size case, model and grid point
        if model.info.brats_regions(int(clean_out.shape[1])):
            table = DiceTable(sorted({v for m in BRATS_REGIONS.values() for v in m}), BRATS_REGIONS)
            block = table.block(table.confusion(table.indices(seg_adv), table.indices(ref)))
            for r in BRATS_REGIONS:
                out[f"dice_{r}"] = block["regions"][r]
        else:  # any other model: Dice per label, named as the model names its labels
            values = sorted((set(np.unique(ref).tolist()) | set(np.unique(seg_clean).tolist())) - {0})
            if DiceTable.holds(values):
                table = DiceTable(values)
                block = table.block(table.confusion(table.indices(seg_adv), table.indices(ref)))
                per_label, fg = {v: block["per_label"][str(v)] for v in values}, block["foreground"]
            else:  # a parcellation with more labels than a uint8 table holds: a mask per label
                per_label, fg = M.dice_per_label(seg_adv, ref, values), M.foreground_dice(seg_adv, ref)
            for v, d in per_label.items():
                out[f"dice_label_{model.info.label_name(v)}"] = d
        out["dice_fg"] = out["dice_WT"] if "dice_WT" in out else fg
        out["changed_voxels"] = int((seg_clean != seg_adv).sum())
        return out
    pc = model.probabilities(clean_out)[0].detach().cpu().numpy().astype(np.float64)
    pa = model.probabilities(adv_out)[0].detach().cpu().numpy().astype(np.float64)
    names = model.info.class_names or [str(i) for i in range(len(pc))]
    out: dict = {"reference": "ground truth" if labels is not None else "clean prediction"}
    ref = np.asarray(labels, dtype=np.float64) if labels is not None else pc
    for k in (1, 3):
        if k <= len(pc):
            out[f"k{k}_acc"] = float(M.k_accuracy_per_sample(pa[None], ref[None], k)[0])
    eps_ = 1e-7
    out["mse"] = float(np.mean((pa - pc) ** 2))
    q = np.clip(pa, eps_, 1 - eps_)
    out["bce"] = float(np.mean(-(pc * np.log(q) + (1 - pc) * np.log(1 - q))))
    inv = model_cooccurrence(model, extra)
    if inv is not None:  # RISK from the logits (the paper), and from the probabilities (labelled risk_prob)
        za = M.logits_of(adv_out[0].detach().cpu().numpy(), model.info.output)
        out["risk"] = float(M.risk(za[None], pc[None], inv))
        out["risk_prob"] = float(M.risk(pa[None], pc[None], inv))
    else:
        out["risk"] = out["risk_prob"] = math.nan
    out["top1_changed"] = bool(np.argmax(pc) != np.argmax(pa))
    for i, n in enumerate(names):
        out[f"p_clean_{n}"] = float(pc[i])
        out[f"p_adv_{n}"] = float(pa[i])
        if labels is not None:
            out[f"y_{n}"] = int(labels[i])
    return out


# --------------------------------------------------------------------------- transfer


def transfer_attack(image, source, target, attack: str, *, params: dict | None = None, labels=None,
                    roi="auto", seed: int | None = None, callback=None, should_stop=None) -> dict:
    """Craft an adversarial image on ``source`` and evaluate it on ``target`` (both
    :class:`~napari_medadv.core.models.LoadedModel`): Ghamizi's transfer setting.

    Returns ``{"outcome": AttackOutcome (on the source), "target_clean": output,
    "target_adversarial": output, "metrics": {...}}`` where ``metrics`` holds, for segmentation,
    Dice per region on the target (vs ``labels`` or the target's clean prediction) and, for
    classifiers, the target's probabilities and k-robust accuracy — the numbers of one cell of
    the transfer matrix.
    """
    target.check_image(image.array, str(image.source), image.channel_names)
    o = run_attack(image, source, attack, params=params, labels=labels, roi=roi, seed=seed,
                   callback=callback, should_stop=should_stop)
    x_clean = model_input(image, target)
    t_clean = target.forward(x_clean)
    t_adv = target.forward(target.to_batch(o.adversarial))
    case = Case(str(image.source), str(image.source), None if labels is None or target.info.task == "segmentation"
                else tuple(int(v) for v in np.asarray(labels).ravel()))
    extra = {"class_names": target.info.class_names}
    metrics = _evaluate(target, t_clean, t_adv, labels, case, extra)
    return {"outcome": o, "target_clean": t_clean, "target_adversarial": t_adv, "metrics": metrics}
