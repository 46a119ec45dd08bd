"""Matched image quality: the knob value (artifact ``severity``, attack ``eps``) that reaches a
target PSNR or SSIM, so an adversarial attack and a natural MR artifact can be compared at the
same visible cost.

The quality of a perturbed image is measured exactly as ``metrics.json`` reports it
(:func:`image_quality`): per sample and channel, PSNR/SSIM against the clean channel on that
channel's own range, averaged over channels (and over samples for a batch).

The search (:func:`match_knob`) assumes quality falls as the knob rises (true for every source
with a fixed seed: tested for the artifacts, and by construction for FGSM/noise). It brackets
the target — geometrically down from the upper bound, because quality at knob 0 is usually
infinite (identical images) — then runs Brent's method (``scipy.optimize.brentq``) on the
quality as a function of ``log(knob)``, where PSNR is close to linear, and stops as soon as a
value within the tolerance is seen. A target outside the reachable range, or inside a jump of a
step-wise source (motion has the resolution of one k-space line), gives the closest value found
with ``reached=False`` (or a ``ValueError`` with ``strict=True``).

Entry points:

* :func:`match_knob` — any ``knob -> perturbed images`` function (no model needed);
* :func:`match_quality` — a registered attack/artifact on tensors, with its model;
* :func:`match_for_image` — the same on an :class:`~.io.ImageData` with a
  :class:`~.models.LoadedModel`, using the same ROI, labels and seed as
  :func:`~.pipeline.run_attack`, so ``run_attack(..., params=result.params)`` reproduces it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from . import metrics as M
from .attacks import ATTACKS, FGSM
from .pipeline import content_roi, model_input, resolve_target

METRICS = ("psnr", "ssim")
DEFAULT_TOL = {"psnr": 0.1, "ssim": 0.002}
KNOBS = ("severity", "eps")  # scalar knobs a source may have, in order of preference


@dataclass
class MatchResult:
    """Outcome of a matched-quality search (JSON-ready through :meth:`to_dict`)."""

    source: str
    knob: str
    value: float
    metric: str
    target: float
    achieved: float
    tolerance: float
    reached: bool
    evaluations: list[tuple[float, float]] = field(default_factory=list)
    note: str = ""
    cancelled: bool = False
    params: dict = field(default_factory=dict)  # parameters to run the source with (knob set)
    perturbed: torch.Tensor | None = field(default=None, repr=False)  # images at ``value``

    def to_dict(self) -> dict:
        return {"source": self.source, "knob": self.knob, "value": self.value, "metric": self.metric,
                "target": self.target, "achieved": self.achieved, "tolerance": self.tolerance,
                "reached": self.reached, "cancelled": self.cancelled, "n_evaluations": len(self.evaluations),
                "evaluations": [[k, q] for k, q in self.evaluations], "note": self.note,
                "params": self.params}


# --------------------------------------------------------------------------- quality


def image_quality(clean, perturbed, metric: str = "psnr") -> float:
    """Image quality on each clean channel's own range, averaged over samples: PSNR from the
    channels' mean normalised MSE (:func:`~napari_medadv.core.metrics.psnr_channels`), SSIM as the
    mean over channels.

    ``clean``/``perturbed``: ``B C H W`` or ``B C D H W`` tensors or arrays. Same definition
    as ``image_quality.psnr``/``ssim`` in ``metrics.json`` (which holds one sample).
    """
    _check_metric(metric)
    c, p = M._np(clean).astype(np.float64), M._np(perturbed).astype(np.float64)
    if c.shape != p.shape:
        raise ValueError(f"images differ in shape: {c.shape} vs {p.shape}")
    if c.ndim not in (4, 5):
        raise ValueError(f"expected B C H W or B C D H W images, got shape {c.shape}")
    if metric == "psnr":
        return float(np.mean([M.psnr_channels(c[b], p[b]) for b in range(c.shape[0])]))
    vals = []
    for b in range(c.shape[0]):
        for ch in range(c.shape[1]):
            rng = float(c[b, ch].max() - c[b, ch].min()) or 1.0
            vals.append(M.ssim(c[b, ch], p[b, ch], rng))
    return float(np.mean(vals))


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")


# --------------------------------------------------------------------------- the search


class _Found(Exception):
    def __init__(self, knob: float):
        self.knob = knob


class _OutOfEvals(Exception):
    pass


class _Cancelled(Exception):
    pass


def match_knob(
    perturb: Callable[[float], torch.Tensor],
    clean,
    target: float,
    *,
    metric: str = "psnr",
    bounds: tuple[float, float] = (0.0, 1.0),
    tol: float | None = None,
    max_evals: int = 40,
    strict: bool = False,
    source: str = "",
    knob: str = "knob",
    callback: Callable[[int, float, float], object] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> MatchResult:
    """The knob in ``bounds`` whose ``perturb(knob)`` has ``metric`` within ``tol`` of ``target``.

    Args:
        perturb: ``knob -> perturbed images`` (same shape as ``clean``); deterministic, and
            quality must not rise as the knob rises.
        clean: the clean images ``B C *spatial``.
        target: PSNR in dB or SSIM in (0, 1].
        metric: ``"psnr"`` or ``"ssim"``.
        bounds: ``(lo, hi)`` with ``0 <= lo < hi``.
        tol: accepted ``|achieved - target|`` (default 0.1 dB / 0.002).
        max_evals: most calls of ``perturb``.
        strict: raise ``ValueError`` instead of returning ``reached=False``.
        callback: called after each evaluation with ``(n_evaluations, knob, quality)`` — a GUI
            worker can ``yield`` progress from it.
        should_stop: checked before each evaluation; when it returns true the search stops
            and returns the closest value so far with ``reached=False`` (or what is within
            tolerance) and ``cancelled=True``.
    """
    _check_metric(metric)
    target = float(target)
    if not math.isfinite(target):
        raise ValueError(f"target {metric} must be finite, got {target}")
    if metric == "ssim" and not -1.0 < target <= 1.0:
        raise ValueError(f"target SSIM must be in (-1, 1], got {target}")
    lo, hi = (float(b) for b in bounds)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo < hi):
        raise ValueError(f"bounds must be (lo, hi) with 0 <= lo < hi, got {bounds!r}")
    tol = DEFAULT_TOL[metric] if tol is None else float(tol)
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    if int(max_evals) < 3:
        raise ValueError(f"max_evals must be >= 3, got {max_evals}")
    search = _Search(perturb, clean, target, metric, tol, max_evals, strict, source, knob, callback, should_stop)
    return search.run(lo, hi)


class _Search:
    """One run of :func:`match_knob`: the evaluations so far (``cache``: knob -> (quality,
    images)) and the steps of the search over them."""

    def __init__(self, perturb, clean, target: float, metric: str, tol: float, max_evals: int, strict: bool,
                 source: str, knob: str, callback, should_stop):
        self.perturb, self.clean, self.target, self.metric, self.tol = perturb, clean, target, metric, tol
        self.max_evals, self.strict, self.source, self.knob = max_evals, strict, source, knob
        self.callback, self.should_stop = callback, should_stop
        self.unit = " dB" if metric == "psnr" else ""
        self.name = source or "the source"
        self.cache: dict[float, tuple[float, torch.Tensor]] = {}

    def quality(self, k: float) -> float:
        cache = self.cache
        if k not in cache:
            if len(cache) >= self.max_evals:
                raise _OutOfEvals()
            if cache and self.should_stop is not None and self.should_stop():
                raise _Cancelled()
            img = self.perturb(k)
            cache[k] = (image_quality(self.clean, img, self.metric), img)
            if self.callback is not None:
                self.callback(len(cache), k, cache[k][0])
        return cache[k][0]

    def result(self, k: float, reached: bool, note: str = "", cancelled: bool = False) -> MatchResult:
        if self.strict and not reached and not cancelled:  # a cancel is not an error
            raise ValueError(note)
        q, img = self.cache[k]
        evals = [(kk, self.cache[kk][0]) for kk in self.cache]
        return MatchResult(self.source, self.knob, k, self.metric, self.target, q, self.tol, reached, evals, note,
                           cancelled, perturbed=img)

    def closest(self, note: str, cancelled: bool = False) -> MatchResult:
        cache, target = self.cache, self.target
        k = min(cache, key=lambda kk: (abs(cache[kk][0] - target), kk))
        return self.result(k, abs(cache[k][0] - target) <= self.tol, note, cancelled)

    def run(self, lo: float, hi: float) -> MatchResult:
        try:
            return self._search(lo, hi)
        except _OutOfEvals:
            return self.closest(f"stopped after {self.max_evals} evaluations without reaching {self.metric} "
                                f"{self.target:g}{self.unit} within {self.tol:g}")
        except _Cancelled:
            return self.closest(f"cancelled after {len(self.cache)} evaluations", cancelled=True)

    def _search(self, lo: float, hi: float) -> MatchResult:
        """Check both ends, bracket the target, then Brent's method inside the bracket."""
        target, tol, metric, knob, unit = self.target, self.tol, self.metric, self.knob, self.unit
        q_hi = self.quality(hi)
        if abs(q_hi - target) <= tol:
            return self.result(hi, True)
        if q_hi > target:
            return self.closest(f"{self.name} cannot reach {metric} {target:g}{unit}: {knob}={hi:g} (its maximum) "
                                f"only gives {q_hi:.4g}{unit}")
        q_lo = self.quality(lo)
        if abs(q_lo - target) <= tol:
            return self.result(lo, True)
        if q_lo < target:
            return self.closest(f"{self.name} is already below {metric} {target:g}{unit} at {knob}={lo:g} "
                                f"({q_lo:.4g}{unit})")
        # bracket [a, b]: quality(a) > target > quality(b), quality(a) finite
        a, b = lo, hi
        if not math.isfinite(q_lo):  # identical images at lo (PSNR inf): step down from hi
            found = self._bracket_below(lo, hi)
            if isinstance(found, MatchResult):
                return found
            a, b = found
        return self._brent(a, b)

    def _bracket_below(self, lo: float, hi: float) -> tuple[float, float] | MatchResult:
        """Step geometrically down from ``hi`` towards ``lo`` until the quality is finite and above
        the target: the bracket ``(a, b)``, or the result when a step hits the target or the
        steps fall below the search resolution."""
        a, b = lo, hi
        k = hi
        while True:
            k = lo + (k - lo) / 4.0
            if k - lo <= (hi - lo) * 1e-9:
                return self.closest(f"{self.metric} {self.target:g}{self.unit} needs {self.knob} below {b:g}, "
                                    "beyond the search resolution")
            qk = self.quality(k)
            if abs(qk - self.target) <= self.tol:
                return self.result(k, True)
            if qk < self.target:
                b = k
            elif math.isfinite(qk):
                a = k
                return a, b

    def _brent(self, a: float, b: float) -> MatchResult:
        """Brent's method on the quality as a function of ``log(knob)`` in ``[a, b]``; stops at the
        first value within the tolerance."""
        use_log = a > 0  # PSNR is close to linear in log(knob) for additive perturbations

        def g(t: float) -> float:
            k = min(max(math.exp(t) if use_log else t, a), b)
            v = self.quality(k) - self.target
            if abs(v) <= self.tol:
                raise _Found(k)
            return v

        from scipy.optimize import brentq  # scipy.optimize: only when a search gets this far

        ta, tb = (math.log(a), math.log(b)) if use_log else (a, b)
        try:
            brentq(g, ta, tb, xtol=1e-12, rtol=4 * np.finfo(float).eps, maxiter=self.max_evals)
        except _Found as found:
            return self.result(found.knob, True)
        except RuntimeError:  # brentq's own iteration limit
            pass
        return self.closest(f"no {self.knob} within {self.tol:g}{self.unit} of {self.metric} {self.target:g}"
                            f"{self.unit}: the quality jumps over the target (a step-wise source) or is not "
                            "monotone in the knob")


# --------------------------------------------------------------------------- registered sources


def knob_for(source: str) -> str:
    """The scalar knob of a registered source: ``severity`` (artifacts) or ``eps`` (attacks)."""
    spec = ATTACKS.get_spec(source)
    names = {p.name for p in spec.params}
    for k in KNOBS:
        if k in names:
            return k
    raise ValueError(f"{spec.label} has no scalar knob ({' or '.join(KNOBS)}) to match image quality with")


def knob_bounds(source: str) -> tuple[float, float]:
    """``(min, max)`` of the source's knob as declared in the registry."""
    k = knob_for(source)
    p = next(p for p in ATTACKS.get_spec(source).params if p.name == k)
    return (0.0 if p.min is None else float(p.min), 1.0 if p.max is None else float(p.max))


def perturb_function(source: str, model: torch.nn.Module, images: torch.Tensor, labels=None, *,
                     attack_target=None, params: dict | None = None, **attack_kwargs
                     ) -> Callable[[float], torch.Tensor]:
    """``knob -> perturbed images`` for a registered source with everything else fixed.

    FGSM uses its fast ε path (one forward + backward in total, then no model call per knob);
    other sources are rerun per knob value with the same seed. ``attack_kwargs`` (``seed``,
    ``roi``, ``data_range``, ``activation``, ``spacing``, ...) go to the source as given.
    """
    spec = ATTACKS.get_spec(source)
    knob = knob_for(source)
    params = dict(params or {})
    if knob in params:
        raise ValueError(f"{knob} is what the search sets; do not pass it in params")
    if spec.cls is FGSM:
        atk = spec.create(model, **params, **attack_kwargs)
        atk.prepare(images, labels, target=attack_target)

        def fast(k: float) -> torch.Tensor:
            return atk.at_eps(k).to(images.device)

        return fast

    def rerun(k: float) -> torch.Tensor:
        atk = spec.create(model, **{**params, knob: k}, **attack_kwargs)
        return atk.run(images, labels, target=attack_target).adversarial

    return rerun


def match_quality(
    source: str,
    model: torch.nn.Module,
    images: torch.Tensor,
    labels=None,
    *,
    psnr: float | None = None,
    ssim: float | None = None,
    attack_target=None,
    params: dict | None = None,
    tol: float | None = None,
    bounds: tuple[float, float] | None = None,
    max_evals: int = 40,
    strict: bool = False,
    callback: Callable[[int, float, float], object] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **attack_kwargs,
) -> MatchResult:
    """Knob of registered ``source`` giving ``psnr`` (dB) or ``ssim`` on ``images``.

    Example::

        >>> m = match_quality("motion", model, x, psnr=30.0, seed=0, roi=brain_mask)
        >>> m.value, m.achieved, m.reached     # severity, PSNR reached, within tolerance?
        >>> fgsm = match_quality("fgsm", model, x, y, psnr=30.0, seed=0)
    """
    metric, target = _one_target(psnr, ssim)
    knob = knob_for(source)
    f = perturb_function(source, model, images, labels, attack_target=attack_target, params=params,
                         **attack_kwargs)
    res = match_knob(f, images, target, metric=metric, bounds=bounds or knob_bounds(source), tol=tol,
                     max_evals=max_evals, strict=strict, source=source, knob=knob, callback=callback,
                     should_stop=should_stop)
    res.params = {**(params or {}), knob: res.value}
    return res


def _one_target(psnr, ssim) -> tuple[str, float]:
    if (psnr is None) == (ssim is None):
        raise ValueError("give exactly one of psnr= or ssim= as the quality to match")
    return ("psnr", float(psnr)) if psnr is not None else ("ssim", float(ssim))


def match_for_image(
    image,
    model,
    source: str,
    *,
    psnr: float | None = None,
    ssim: float | None = None,
    params: dict | None = None,
    labels: np.ndarray | None = None,
    target=None,
    roi="auto",
    seed: int = 0,
    tol: float | None = None,
    max_evals: int = 40,
    strict: bool = False,
    callback: Callable[[int, float, float], object] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> MatchResult:
    """:func:`match_quality` on an ``ImageData`` with a ``LoadedModel``, set up exactly as
    :func:`~.pipeline.run_attack` sets up a run (model input, ROI ``"auto"``, labels, target,
    activation), so ``run_attack(image, model, source, params=m.params, labels=labels,
    target=target, roi=roi, seed=seed)`` reproduces ``m.achieved`` in its ``metrics.json``.
    """
    if isinstance(roi, str):
        if roi != "auto":
            raise ValueError(f"roi must be a mask, 'auto' or None, got {roi!r}")
        roi = content_roi(image)
    x = model_input(image, model)
    engine_labels = None
    if labels is not None:
        engine_labels = (
            torch.as_tensor(np.asarray(labels, dtype=np.float32), device=model.device)[None]
            if model.info.task == "classification" else model.label_map_to_target(labels)
        )
    return match_quality(source, model.module, x, engine_labels, psnr=psnr, ssim=ssim,
                         attack_target=resolve_target(model, target, image), params=params, tol=tol,
                         max_evals=max_evals, strict=strict, callback=callback, should_stop=should_stop,
                         seed=int(seed), roi=roi, activation=model.activation())
