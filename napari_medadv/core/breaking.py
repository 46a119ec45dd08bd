""""Breaks at ε": the smallest budget at which an attack breaks each label, region or finding.

For a segmentation model a label (or BraTS region) *breaks* at ε when the Dice of the attacked
prediction against the clean prediction falls below ``threshold`` (default 0.5); for a classifier a
finding breaks when its attacked probability crosses 0.5 (the decision flips). The search:

1. a coarse grid ``ε_max · (1/n, 2/n, …, 1)`` (``grid`` points), each probe evaluating every key;
2. for each key that breaks on the grid, bisection between the last grid point where it held and the
   first where it broke, ``refine`` halvings (the bracket shrinks to ``ε_max / (grid · 2^refine)``).

Probes are shared between keys (a cache keyed by ε), so keys that break together cost one search.
The reported ε is the upper end of the final bracket: the smallest ε *seen* to break the key, with
the largest ε seen to hold it just below (``brackets``); ``None`` when no ε up to ``ε_max`` breaks it.
FGSM probes take the fast ε path (:class:`~.live.LiveEps`: one forward each, the gradient sign
computed once); any other attack with an ε budget is re-run at each probe with the same seed.

Also returned: the area under the Dice-vs-ε curve of each key over ``[0, ε_max]`` divided by
``ε_max`` (the mean Dice over the budget range: 1 = untouched, 0 = destroyed at once), by the
trapezoid rule over every probe, grid and bisection (Dice at ε = 0 is 1 by definition: the clean
prediction).

The search assumes a key that broke at ε stays broken above it, which holds for most attacks and
models; a non-monotone curve (gradient masking, randomness) can make the grid miss a narrow break,
and ``curve`` keeps every probe so a reader can see it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .attacks import ATTACKS
from .errors import MedadvError
from .io import ImageData
from .models.base import LoadedModel

Scores = Mapping[str, float]


@dataclass
class BreakingResult:
    """What :func:`breaking_eps` found (JSON-ready through :meth:`to_dict`)."""

    attack: str
    task: str  # "segmentation" or "classification"
    threshold: float
    eps_max: float
    breaking_eps: dict[str, float | None]
    brackets: dict[str, list[float] | None]
    dice_auc: dict[str, float] | None  # segmentation only
    curve: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # label value -> label name
    method: str = ""
    cancelled: bool = False

    def to_dict(self) -> dict:
        return {"attack": self.attack, "criterion": self.criterion, "threshold": self.threshold,
                "eps_max": self.eps_max, "method": self.method, "breaking_eps": self.breaking_eps,
                "brackets": self.brackets, "dice_auc": self.dice_auc, "label_names": self.names,
                "n_evaluations": len(self.curve), "cancelled": self.cancelled,
                "curve": [{"eps": e, **s} for e, s in self.curve]}

    @property
    def criterion(self) -> str:
        if self.task == "segmentation":
            return f"Dice against the clean prediction < {self.threshold:g}"
        return "attacked probability on the other side of 0.5 than the clean one"


# --------------------------------------------------------------------------- the search


def search_breaking(evaluate: Callable[[float], Scores], is_broken: Callable[[str, float], bool],
                    eps_max: float, *, grid: int = 8, refine: int = 6,
                    should_stop: Callable[[], bool] | None = None
                    ) -> tuple[dict[str, float | None], dict[str, list[float] | None], dict[float, dict]]:
    """Grid then bisection for every key ``evaluate`` returns (see the module docstring).

    ``evaluate(eps) -> {key: score}``; ``is_broken(key, score)``. Returns ``(breaking, brackets,
    probes)``: the smallest ε seen to break each key (``None`` if none up to ``eps_max``), its
    ``[held, broke]`` bracket, and every probe ``{eps: scores}``."""
    if not (eps_max > 0 and np.isfinite(eps_max)):
        raise ValueError(f"eps_max must be a positive number, got {eps_max!r}")
    if int(grid) < 1 or int(refine) < 0:
        raise ValueError(f"grid must be >= 1 and refine >= 0, got grid={grid}, refine={refine}")
    probes: dict[float, dict] = {}

    def probe(eps: float) -> dict:
        if eps not in probes:
            probes[eps] = dict(evaluate(eps))
        return probes[eps]

    points = [eps_max * (i + 1) / grid for i in range(int(grid))]
    first: dict[str, tuple[float, float]] = {}  # key -> (last held, first broke) on the grid
    keys: list[str] = []
    held_at = 0.0
    for eps in points:
        if should_stop is not None and should_stop():
            break
        scores = probe(eps)
        for key in scores:
            if key not in keys:
                keys.append(key)
            if key not in first and is_broken(key, scores[key]):
                first[key] = (held_at, eps)
        held_at = eps  # the whole grid even when everything broke: the Dice-vs-ε area needs it
    breaking: dict[str, float | None] = {k: None for k in keys}
    brackets: dict[str, list[float] | None] = {k: None for k in keys}
    for key, (lo, hi) in first.items():
        for _ in range(int(refine)):
            if should_stop is not None and should_stop():
                break
            mid = 0.5 * (lo + hi)
            if is_broken(key, probe(mid)[key]):
                hi = mid
            else:
                lo = mid
        breaking[key], brackets[key] = hi, [lo, hi]
    return breaking, brackets, probes


def dice_auc(probes: Mapping[float, Scores], eps_max: float) -> dict[str, float]:
    """Mean Dice over ``[0, eps_max]`` per key: trapezoid area under Dice-vs-ε (Dice 1 at ε = 0)
    divided by ``eps_max``; where the probes stop short of ``eps_max`` (a cancelled search), the
    last Dice is carried to ``eps_max``."""
    eps = sorted(probes)
    keys = list(dict.fromkeys(k for e in eps for k in probes[e]))
    out = {}
    for key in keys:
        xs = [0.0] + [e for e in eps if key in probes[e]]
        ys = [1.0] + [float(probes[e][key]) for e in xs[1:]]
        if xs[-1] < eps_max:
            xs.append(eps_max)
            ys.append(ys[-1])
        out[key] = float(np.trapezoid(ys, xs) / eps_max)
    return out


# --------------------------------------------------------------------------- on an image


def _segmentation_scores(dice_block: dict) -> dict[str, float]:
    """Per label (keys: label values) and per BraTS region, or the foreground when the model has
    several labels and no regions."""
    scores = {str(k): float(v) for k, v in dice_block["per_label"].items()}
    if "regions" in dice_block:
        scores.update({str(k): float(v) for k, v in dice_block["regions"].items()})
    elif len(scores) != 1:  # one label is its own foreground
        scores["foreground"] = float(dice_block["foreground"])
    return scores


def breaking_eps(image: ImageData, model: LoadedModel, attack: str = "fgsm", *, params: dict | None = None,
                 labels: np.ndarray | None = None, target=None, roi="auto", seed: int = 0,
                 threshold: float = 0.5, eps_max: float = 0.1, grid: int | None = None,
                 refine: int | None = None, should_stop: Callable[[], bool] | None = None) -> BreakingResult:
    """Breaking ε of every label/region (segmentation) or finding (classifier) of ``model`` on
    ``image`` under ``attack`` (any registered attack with an ε budget).

    ``params``: the attack's other parameters (``eps`` is what is searched; any given is ignored);
    ``labels``/``target``/``roi``/``seed``: as :func:`~.pipeline.run_attack` (labels steer the attack's
    loss; the criterion is always against the clean prediction). ``grid``/``refine``: default 16/8 on
    FGSM's fast path (one forward per probe), 6/4 for attacks re-run at each probe."""
    spec = ATTACKS.get_spec(attack)
    if not spec.takes_eps:
        raise MedadvError(f"{spec.label} has no ε budget: breaking ε needs an attack with one (fgsm, pgd, ...)")
    if not 0 < float(threshold) < 1:
        raise MedadvError(f"the break threshold must lie between 0 and 1, got {threshold}")
    defaults = {p.name: p.default for p in spec.params}
    # parameters at their registry defaults (e.g. loss "auto") do not leave FGSM's fast path
    params = {k: v for k, v in (params or {}).items()
              if k != "eps" and not (k in defaults and (v is None or v == defaults[k]))}
    segmentation = model.info.task == "segmentation"
    fast = spec.live_eps and not params and target is None
    grid = grid if grid is not None else (16 if fast else 6)
    refine = refine if refine is not None else (8 if fast else 4)
    evaluate = _evaluator(image, model, attack, params, labels, target, roi, seed, fast, segmentation)

    def is_broken(key: str, score: float) -> bool:
        if segmentation:
            return score < threshold
        return (score >= 0.5) != (evaluate.clean_probabilities[key] >= 0.5)  # known from the first probe
    breaking, brackets, probes = search_breaking(evaluate, is_broken, float(eps_max), grid=grid, refine=refine,
                                                 should_stop=should_stop)
    how = "one forward per probe (FGSM's fast ε path)" if fast else f"{spec.label} re-run at each probe, seed {seed}"
    return BreakingResult(
        attack=attack, task=model.info.task, threshold=float(threshold), eps_max=float(eps_max),
        breaking_eps=breaking, brackets=brackets,
        dice_auc=dice_auc(probes, float(eps_max)) if segmentation else None,
        curve=sorted(probes.items()), names=evaluate.names,
        method=f"grid of {grid} up to ε_max, then {refine} bisection steps per key; {how}",
        cancelled=bool(should_stop is not None and should_stop()))


class _Evaluator:
    """``eps -> scores`` for one image, model and attack; a classifier's clean probabilities are
    kept from the first probe (every outcome carries them)."""

    def __init__(self, outcome, dice, segmentation: bool):
        self.outcome, self.dice, self.segmentation = outcome, dice, segmentation
        self.names: dict[str, str] = {}
        self.clean_probabilities: dict[str, float] | None = None

    def __call__(self, eps: float) -> dict[str, float]:
        o = self.outcome(eps)
        if self.segmentation:
            block = self.dice(o)
            self.names.update(block.get("label_names", {}))
            return _segmentation_scores(block)
        names = [str(n) for n in (o.model.info.class_names or range(len(o.probs_clean)))]
        if self.clean_probabilities is None:
            self.clean_probabilities = {n: float(p) for n, p in zip(names, o.probs_clean)}
        return {n: float(p) for n, p in zip(names, o.probs_adv)}


def _evaluator(image, model, attack, params, labels, target, roi, seed, fast, segmentation) -> _Evaluator:
    if fast:
        from .live import LiveEps  # the pipeline: not needed by search_breaking

        live = LiveEps(image, model, labels=labels, roi=roi)
        return _Evaluator(lambda eps: live.outcome(eps, seed=seed, metrics=False),
                          lambda o: live.segmentation_readouts(o)[0]["clean_vs_adversarial"], segmentation)
    from .pipeline import run_attack

    return _Evaluator(lambda eps: run_attack(image, model, attack, params={**params, "eps": eps}, labels=labels,
                                             target=target, roi=roi, seed=seed),
                      lambda o: o.metrics["dice"]["clean_vs_adversarial"], segmentation)
