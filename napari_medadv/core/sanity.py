"""Evaluation sanity checks: is a robustness figure trustworthy, or is the attack being fooled?

In the spirit of AutoAttack's checks (Croce & Hein 2020, ``autoattack/checks.py``: zero gradients,
a randomised model, Square beating the white-box attacks) and of Athalye, Carlini & Wagner 2018
(§ "obfuscated gradients": iterative ≥ single-step, white-box ≥ black-box, more distortion → more
success), adapted to segmentation. Each check is a function that returns a :class:`CheckResult`
(name, passed, value, message); :func:`warn_failed` turns the failed ones into a
:class:`SanityWarning` that names the check and what it suggests. The four checks:

1. :func:`check_gradients` — share of ROI voxels whose input gradient of the attack loss at the
   clean image is zero (every channel) or non-finite. Many → *possible gradient masking*
   (a non-differentiable or saturated step): gradient attacks are blind there.
2. :func:`check_black_box` — a gradient-free attack (random noise, DGDE) or a transfer attack
   crafted on another model must never do better than the white-box ones at the same ε.
3. :func:`check_monotone` — robustness (Dice against the clean prediction, or the classifier's
   margin figure :func:`robustness_of`) must not increase with ε or with the number of steps.
4. :func:`check_stochastic` — the same input twice (eval mode, as attacks run) must give the same
   output; otherwise the gradients are of one random draw and *EOT is needed*.

:func:`run_sanity_checks` runs all of them for one image and model with small default settings
(FGSM on the fast ε path, PGD at 3 ε and at 1/5/10 steps, uniform noise as the black box, a
transfer from ``source_model`` when given); the study and ``medadv attack --sanity`` call it.

Robustness figure (higher = more robust, 1 = untouched, both tasks in [0, 1]): segmentation,
the foreground Dice of the attacked prediction against the clean one (= whole-tumour Dice for
BraTS labels); classification, the mean over findings of the attacked probability on the clean
decision's side (``p`` if the clean ``p ≥ 0.5`` else ``1 − p``; below 0.5 = flipped).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from . import metrics as M
from .io import ImageData
from .models.base import LoadedModel


class SanityWarning(UserWarning):
    """A failed evaluation sanity check (its message names the check and what it suggests)."""


@dataclass
class CheckResult:
    """One check's outcome; ``value`` is the figure compared with the tolerance."""

    name: str
    passed: bool
    value: float | None
    message: str
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": bool(self.passed), "value": self.value, "message": self.message,
                **({"details": self.details} if self.details else {})}


def warn_failed(results: Sequence[CheckResult], stacklevel: int = 2) -> list[str]:
    """Issue a :class:`SanityWarning` for each failed check; return their messages."""
    msgs = [f"sanity check '{r.name}' failed: {r.message}" for r in results if not r.passed]
    for m in msgs:
        warnings.warn(m, SanityWarning, stacklevel=stacklevel)
    return msgs


def _tolerance(name: str, value: float) -> float:
    value = float(value)
    if not (value >= 0 and np.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


# --------------------------------------------------------------------------- 1. gradients


def check_gradients(grad: torch.Tensor | np.ndarray, roi: np.ndarray | None = None, *,
                    max_share: float = 0.01) -> CheckResult:
    """Share of voxels (inside ``roi``, a spatial mask; everywhere when ``None``) whose input
    gradient ``grad`` (``[B] C *spatial``) is exactly zero in every channel or non-finite in any.

    AutoAttack flags a *sample* whose whole gradient is zero; a segmentation attack works per
    voxel, so a model that is flat on part of the image (quantisation, saturated softmax, a
    detached branch) is masked there even when elsewhere it is not. Fails above ``max_share``."""
    max_share = _tolerance("max_share", max_share)
    g = torch.as_tensor(grad).detach()
    if g.ndim >= 2 and roi is not None and g.ndim == np.ndim(roi) + 2:
        g = g[0]
    spatial = g.shape[1:]
    nonfinite = (~torch.isfinite(g)).any(0)
    zero = (g == 0).all(0) & ~nonfinite
    mask = torch.ones(spatial, dtype=torch.bool, device=g.device)
    if roi is not None:
        roi_t = torch.as_tensor(np.asarray(roi) != 0, device=g.device)
        if tuple(roi_t.shape) != tuple(spatial):
            raise ValueError(f"the ROI shape {tuple(roi_t.shape)} does not match the gradient's {tuple(spatial)}")
        mask = roi_t
    n = int(mask.sum())
    if n == 0:
        raise ValueError("the ROI is empty: no voxel to check the gradient on")
    n_zero, n_bad = int((zero & mask).sum()), int((nonfinite & mask).sum())
    share = (n_zero + n_bad) / n
    passed = share <= max_share
    msg = (f"{share:.2%} of {n} ROI voxels have a zero ({n_zero}) or non-finite ({n_bad}) input gradient "
           f"(tolerance {max_share:.2%})")
    if not passed:
        msg = (f"possible gradient masking: {msg}; gradient attacks cannot move those voxels — check for "
               "non-differentiable steps (rounding, argmax, detached branches) or saturated outputs, and try "
               "a gradient-free (DGDE, noise) or transfer attack, or BPDA")
    finite = g.abs().amax(0)[mask & ~nonfinite]  # per voxel, the largest |gradient| over channels
    size = {"median_abs": float(finite.median()) if finite.numel() else None,
            "max_abs": float(finite.max()) if finite.numel() else None}
    return CheckResult("zero_gradients", passed, share, msg,
                       {"voxels": n, "zero": n_zero, "non_finite": n_bad, "tolerance": max_share, **size})


# --------------------------------------------------------------------------- 2. black box vs white box


def check_black_box(white: Mapping[str, float], black: Mapping[str, float], *,
                    tolerance: float = 0.02) -> CheckResult:
    """``white``/``black``: robustness figures (higher = more robust, e.g. Dice against the clean
    prediction) left by white-box and by black-box/transfer attacks at the same ε. Fails when the
    strongest black-box one is lower than the strongest white-box one by more than ``tolerance``
    (AutoAttack's Square check: a gradient-free attack must not beat the gradient ones)."""
    tolerance = _tolerance("tolerance", tolerance)
    if not white or not black:
        raise ValueError("check_black_box needs at least one white-box and one black-box figure")
    bw = min(white, key=lambda k: white[k])
    bb = min(black, key=lambda k: black[k])
    gap = float(white[bw]) - float(black[bb])  # > 0: the black box is stronger
    passed = gap <= tolerance
    msg = f"strongest white-box {bw} leaves {white[bw]:.3f}, strongest black-box {bb} {black[bb]:.3f}"
    if not passed:
        msg = (f"possible gradient masking: {msg} — the black-box attack is stronger by {gap:.3f} (tolerance "
               f"{tolerance:g}); the gradients mislead the white-box attacks, so their figures overestimate "
               "robustness")
    return CheckResult("black_box_vs_white_box", passed, gap, msg,
                       {"white": {k: float(v) for k, v in white.items()},
                        "black": {k: float(v) for k, v in black.items()}, "tolerance": tolerance})


# --------------------------------------------------------------------------- 3. monotone in ε / steps


def check_monotone(table: Mapping[float, float | Mapping[str, float]], *, what: str = "eps",
                   tolerance: float = 0.02, attack: str = "") -> CheckResult:
    """``table``: ``{ε or steps: robustness}`` (a number, or ``{key: number}`` per label/region).
    Robustness must not rise with a larger budget: fails when any value exceeds the lowest one at a
    smaller budget by more than ``tolerance``. ``value``: the largest such rise (0 when none)."""
    tolerance = _tolerance("tolerance", tolerance)
    if len(table) < 2:
        raise ValueError(f"a monotonicity check needs at least two {what} values, got {len(table)}")
    xs = sorted(table)
    rows = [table[x] if isinstance(table[x], Mapping) else {"": table[x]} for x in xs]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    worst, where = 0.0, None
    for key in keys:
        lowest, at = np.inf, None
        for x, r in zip(xs, rows):
            if key not in r:
                continue
            v = float(r[key])
            if v - lowest > worst:
                worst, where = v - lowest, (key, at, x, lowest, v)
            if v < lowest:
                lowest, at = v, x
    name = f"monotone_in_{what}" + (f"_{attack.lower()}" if attack else "")
    by = f"{attack} " if attack else ""
    passed = worst <= tolerance
    if passed:
        msg = f"{by}robustness does not rise over {what} {', '.join(f'{x:g}' for x in xs)} (tolerance {tolerance:g})"
    else:
        key, lo_x, hi_x, lo_v, hi_v = where
        label = f" ({key})" if key else ""
        msg = (f"possible gradient masking: {by}robustness{label} rises from {lo_v:.3f} at {what} {lo_x:g} to "
               f"{hi_v:.3f} at {what} {hi_x:g} (tolerance {tolerance:g}); a larger budget must not help the "
               "model — the attack is not finding the worst case (noisy or misleading gradients), so its figures "
               "at the larger budget overestimate robustness")
    return CheckResult(name, passed, worst, msg, {"table": {str(x): r if len(r) > 1 or "" not in r else r[""]
                                                            for x, r in zip(xs, rows)}, "tolerance": tolerance})


# --------------------------------------------------------------------------- 4. stochastic outputs


def check_stochastic(model: LoadedModel, x: torch.Tensor, *, atol: float = 1e-5, rtol: float = 1e-5,
                     clean_output: torch.Tensor | None = None) -> CheckResult:
    """The same input twice, in eval mode (as the attacks run the model), no gradient: the largest
    absolute output difference must stay within ``atol + rtol · max|output|`` (AutoAttack's
    ``check_randomized``). ``clean_output``: a forward the caller already has (saves one)."""
    atol, rtol = _tolerance("atol", atol), _tolerance("rtol", rtol)
    first = model.forward(x) if clean_output is None else clean_output
    second = model.forward(x)
    diff = float((first.float() - second.float()).abs().max())
    scale = float(first.float().abs().max())
    changed = 0
    if model.info.task == "segmentation":
        changed = int(np.count_nonzero(model.to_label_map(first) != model.to_label_map(second)))
    passed = np.isfinite(diff) and diff <= atol + rtol * scale
    msg = f"two forwards of the same input differ by at most {diff:.3g} (output scale {scale:.3g})"
    if model.info.task == "segmentation":
        msg += f", {changed} voxels change label"
    if not passed:
        msg = (f"stochastic outputs: {msg} — the model is random at inference (dropout kept on, noise "
               "injection); gradients are of one draw, so EOT is needed (average the gradient over draws) and "
               "robustness figures should be averaged over repeated evaluations")
    return CheckResult("stochastic_outputs", bool(passed), diff, msg,
                       {"atol": atol, "rtol": rtol, "output_scale": scale, "changed_voxels": changed})


# --------------------------------------------------------------------------- robustness figure


def robustness_of(model: LoadedModel, clean_output: torch.Tensor, adv_output: torch.Tensor) -> float:
    """The module docstring's robustness figure of one attacked output (higher = more robust)."""
    if model.info.task == "segmentation":
        return float(M.foreground_dice(model.to_label_map(adv_output)[0], model.to_label_map(clean_output)[0]))
    p0 = model.probabilities(clean_output)[0].detach().cpu().numpy()
    p1 = model.probabilities(adv_output)[0].detach().cpu().numpy()
    return float(np.mean(np.where(p0 >= 0.5, p1, 1.0 - p1)))


# --------------------------------------------------------------------------- all checks on one image


@dataclass
class SanityReport:
    """Every check run on one image and model, with the tables behind them."""

    model: str
    checks: list[CheckResult]
    tables: dict
    settings: dict
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        return {"model": self.model, "passed": self.passed, "failed": [c.name for c in self.failed],
                "checks": [c.to_dict() for c in self.checks], "tables": self.tables, "settings": self.settings,
                "seconds": round(self.seconds, 2),
                "robustness_figure": ("foreground Dice of the attacked vs the clean prediction"
                                      if "segmentation" in self.settings.get("task", "")
                                      else "mean attacked probability on the clean decision's side")}


def run_sanity_checks(image: ImageData, model: LoadedModel, *, labels: np.ndarray | None = None, roi="auto",
                      seed: int = 0, eps: Sequence[float] = (0.005, 0.01, 0.02, 0.04),
                      pgd_eps: Sequence[float] = (0.01, 0.02), pgd_steps: int = 5,
                      steps: Sequence[int] = (1, 5, 10), steps_eps: float = 0.02,
                      source_model: LoadedModel | None = None, dgde: bool | None = None,
                      tolerance: float = 0.02, max_zero_share: float = 0.01,
                      progress: Callable[[str], None] | None = None, warn: bool = True) -> SanityReport:
    """All four checks for one image and model, cheaply (defaults: 23 forward/backward passes — PGD at
    0.02 with 5 steps serves both tables — and about ten forwards).

    * gradients: the attack loss's input gradient at the clean image (soft Dice / CE / BCE against
      ``labels``, or the clean prediction when ``None``), over ``roi`` (as :func:`~.pipeline.run_attack`);
    * stochastic: two eval-mode forwards of the clean image;
    * monotone in ε: FGSM at ``eps`` (fast ε path: one forward each) and PGD (``pgd_steps`` steps) at
      ``pgd_eps``; monotone in steps: PGD at ``steps_eps`` with each of ``steps``;
    * black box vs white box, at every ε where both ran: uniform noise (one forward), PGD crafted on
      ``source_model`` and evaluated on ``model`` (transfer, when given), DGDE on classifiers
      (``dgde``: default on for classifiers, where it is cheap; off for segmentation) — against FGSM
      and PGD at the same ε. The worst ε is reported.

    Every attack uses ``seed``. ``progress(text)`` hears each stage; ``warn`` issues a
    :class:`SanityWarning` per failed check."""
    import time

    from .live import LiveEps

    t0 = time.perf_counter()
    say = progress or (lambda text: None)
    if not eps and not pgd_eps:
        raise ValueError("run_sanity_checks needs at least one ε (eps or pgd_eps)")
    say("gradient at the clean image")
    live = LiveEps(image, model, labels=labels, roi=roi)
    ctx = live.fgsm._cache["ctx"]  # the prepared FGSM's context: same loss, reference and ROI as the attacks
    clean = live.fgsm.clean_output
    _, grad, _ = ctx.loss_and_grad(ctx.x)
    region = _content_region(image, model, live.roi)
    checks = [check_gradients(grad, region, max_share=max_zero_share)]
    say("stochastic outputs")
    checks.append(check_stochastic(model, ctx.x, clean_output=clean))
    run = _Runner(image, model, labels, region, seed, clean, say)
    tables: dict[str, dict] = {"fgsm_eps": {}, "pgd_eps": {}, "pgd_steps": {}, "noise_eps": {}}
    for e in eps:
        tables["fgsm_eps"][float(e)] = robustness_of(model, clean, live.at(float(e))[1])
    for e in pgd_eps:
        tables["pgd_eps"][float(e)] = run("pgd", {"eps": float(e), "steps": int(pgd_steps)})
    for s in steps:
        tables["pgd_steps"][int(s)] = run("pgd", {"eps": float(steps_eps), "steps": int(s)})
    all_eps = sorted({float(e) for e in (*eps, *pgd_eps)})
    for e in all_eps:
        tables["noise_eps"][e] = run("noise", {"eps": e})
    if source_model is not None:
        tables["transfer_eps"] = {}
        for e in pgd_eps:
            tables["transfer_eps"][float(e)] = run.transfer(source_model, {"eps": float(e), "steps": int(pgd_steps)})
    if dgde if dgde is not None else model.info.task == "classification":
        # DGDE is an L0 attack; capped at ±ε per pixel it is comparable with the L∞ attacks at ε
        tables["dgde_eps"] = {e: run("dgde", {"amplitude": e, "max_queries": 200}) for e in all_eps[-1:]}
    for key, what in (("fgsm_eps", "eps"), ("pgd_eps", "eps"), ("pgd_steps", "steps")):
        if len(tables[key]) >= 2:
            checks.append(check_monotone(tables[key], what=what, tolerance=tolerance, attack=key.split("_")[0].upper()))
    checks.append(_black_box_over_eps(tables, tolerance))
    settings = {"task": model.info.task, "seed": int(seed), "eps": [float(e) for e in eps],
                "pgd_eps": [float(e) for e in pgd_eps], "pgd_steps": int(pgd_steps), "steps": [int(s) for s in steps],
                "steps_eps": float(steps_eps), "source_model": None if source_model is None else source_model.spec,
                "tolerance": tolerance, "max_zero_share": max_zero_share, "roi": live.roi_note,
                "region_voxels": int(np.count_nonzero(region)) if region is not None else int(np.prod(image.spatial_shape)),
                "labels": "ground truth" if labels is not None else "clean prediction"}
    report = SanityReport(model.spec, checks, {k: {str(x): v for x, v in t.items()} for k, t in tables.items()},
                          settings, time.perf_counter() - t0)
    if warn:
        warn_failed(checks, stacklevel=3)
    return report


def _content_region(image: ImageData, model: LoadedModel, roi: np.ndarray | None) -> np.ndarray | None:
    """The region of the checks: the attack's ROI, less — for a model normalised over the non-zero
    voxels — the voxels that are exactly 0 in every channel. That is the model's background by
    design: its normalisation multiplies them by a mask, so their gradient is 0 (not masking), and
    noise painted there changes which voxels count as brain (a change of the mask, which no gradient
    attack can make). :func:`~.pipeline.content_roi` leaves them out too, except when they are under
    5 % of the image; here they are always left out, for the gradient share and for every attack."""
    if model.info.normalization != "zscore-nonzero":
        return roi
    content = np.any(image.array != 0, axis=0)
    return content if roi is None else (np.asarray(roi) != 0) & content


def _black_box_over_eps(tables: dict, tolerance: float) -> CheckResult:
    """:func:`check_black_box` at every ε where white- and black-box figures both exist; the worst."""
    white_keys, black_keys = ("fgsm_eps", "pgd_eps"), ("noise_eps", "transfer_eps", "dgde_eps")
    results = {}
    for e in sorted({e for k in black_keys for e in tables.get(k, {})}):
        white = {k.split("_")[0]: tables[k][e] for k in white_keys if e in tables.get(k, {})}
        black = {k.split("_")[0]: tables[k][e] for k in black_keys if e in tables.get(k, {})}
        if white and black:
            results[e] = check_black_box(white, black, tolerance=tolerance)
    if not results:
        raise ValueError("no ε has both a white-box and a black-box figure")
    worst_eps = max(results, key=lambda e: results[e].value)
    worst = results[worst_eps]
    worst.message = f"at ε {worst_eps:g}: {worst.message}"
    worst.details = {"worst_eps": worst_eps, "gap_per_eps": {str(e): r.value for e, r in results.items()},
                     "tolerance": tolerance}
    return worst


class _Runner:
    """One attack on the image at a time, to a robustness figure (no metrics: only the outputs)."""

    def __init__(self, image, model, labels, roi, seed, clean, say):
        self.image, self.model, self.labels, self.roi, self.seed, self.clean = image, model, labels, roi, seed, clean
        self.say = say
        self.cache: dict[tuple, float] = {}

    def _adversarial(self, model: LoadedModel, attack: str, params: dict, clean=None):
        from .pipeline import start_attack  # the pipeline pulls in the readers: only when the checks run

        s = start_attack(self.image, model, attack, params=params, labels=self.labels, roi=self.roi,
                         seed=self.seed, clean_output=clean)
        return s.attack.run(s.x, s.labels)

    def __call__(self, attack: str, params: dict) -> float:
        key = (attack, tuple(sorted(params.items())))
        if key not in self.cache:  # PGD at (steps_eps, pgd_steps) is in both PGD tables: run it once
            self.cache[key] = self._run(attack, params)
        return self.cache[key]

    def _run(self, attack: str, params: dict) -> float:
        self.say(f"{attack} " + ", ".join(f"{k} {v:g}" for k, v in params.items()))
        res = self._adversarial(self.model, attack, params, self.clean)
        out = res.output if res.output is not None else self.model.forward(res.adversarial)
        return robustness_of(self.model, self.clean, out)

    def transfer(self, source: LoadedModel, params: dict) -> float:
        """PGD crafted on ``source``, evaluated on this model."""
        from .pipeline import prepare_input

        self.say(f"pgd crafted on {source.spec}, " + ", ".join(f"{k} {v:g}" for k, v in params.items()))
        res = self._adversarial(source, "pgd", params)
        prepare_input(self.image, self.model)  # the channel order and geometry are per module: set them back
        return robustness_of(self.model, self.clean, self.model.forward(res.adversarial))


__all__ = ["CheckResult", "SanityReport", "SanityWarning", "check_black_box", "check_gradients",
           "check_monotone", "check_stochastic", "robustness_of", "run_sanity_checks", "warn_failed"]
