"""A study's grid: attack configurations (:class:`GridPoint`) expanded from YAML entries or
CLI flags and validated against the attack registry.

Grid (YAML, or :func:`grid_from_flags`)::

    dataset: sample_data/glioma          # BraTS case folders | images + labels CSV | phantoms:glioma:5-24
    models: [demo:unet3d, demo:unet3d-distill]
    transfer: false
    seed: 0
    attacks:
      - attack: fgsm                     # any name in the attack registry
        eps: [0.01, 0.05]                # a value or a list; lists are crossed
      - attack: ifgsm
        eps: 0.05
        steps: [5, 10]
      - attack: [fgsm, motion, biasfield]  # a list of sources: each gets the entry's other axes
        psnr: [40, 35, 30]               # matched image quality (or ssim: [0.95, 0.9])
        tol: 0.25                        # optional: accepted |achieved - target| (dB / SSIM)

Parameters are validated against the registry entry's ``params``, so any registered attack
(e.g. an MR artifact with a ``severity`` parameter) can be put in a grid without code here.

**Matched image quality** (``psnr:`` or ``ssim:``): each point means "this source at the knob
value (``eps`` of an attack, ``severity`` of an MR artifact) that brings *this case* to this
PSNR/SSIM". The search (:func:`~napari_medadv.core.matching.match_for_image`, same ROI, labels
and seed as the unmatched points) runs per case inside :func:`~.cases.run_case`; every row
records the target, the quality reached, the knob and its value, and whether the target was
reached within the tolerance (a source whose strongest setting stays above the target, like
ghosting at low PSNR, gives its closest value with ``match_reached = False``). Such an entry must
not also fix the knob (``eps``/``severity``): the search sets it. All targets of one source on
one case share its seed (:attr:`GridPoint.seed_key`): the same motion trajectory, bias field or
noise field, scaled to each target, so a curve follows one event as it grows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..attacks import ATTACKS
from ..errors import MedadvError
from ..matching import knob_for
from .store import NO_ATTACK

QUALITY_AXES = ("psnr", "ssim")  # matched-quality grid axes (see the module docstring)


@dataclass(frozen=True)
class GridPoint:
    """One attack configuration: a registry name (or ``"none"``), its parameter values and,
    for a matched-quality point, the quality to reach (``(("psnr", 40.0),)``, optionally with
    ``("tol", 0.25)``): the knob is then found per case."""

    attack: str
    params: tuple = ()  # sorted ((name, value), ...)
    match: tuple = ()  # sorted ((metric, target), ("tol", value)?) for matched quality

    @property
    def params_dict(self) -> dict:
        return dict(self.params)

    @property
    def key(self) -> str:
        items = sorted(self.params + self.match)
        if not items:
            return self.attack
        return f"{self.attack}[{','.join(f'{k}={_fmt_value(v)}' for k, v in items)}]"

    @property
    def seed_key(self) -> str:
        """What the point's seed derives from: its key, except that the targets of a matched
        point share their source's seed — one case meets the same random event (motion
        trajectory, bias field, noise field, random start) at every target, only scaled."""
        return GridPoint(self.attack, self.params).key if self.match else self.key

    @property
    def match_metric(self) -> str | None:
        return next((k for k, _ in self.match if k in QUALITY_AXES), None)

    @property
    def match_target(self) -> float:
        return float(dict(self.match).get(self.match_metric, math.nan)) if self.match else math.nan

    @property
    def match_tol(self) -> float | None:
        return dict(self.match).get("tol")

    @property
    def label(self) -> str:
        if self.attack == NO_ATTACK:
            return "no attack"
        name = ATTACKS[self.attack].label if self.attack in ATTACKS else self.attack
        parts = [f"{'ε' if k == 'eps' else k}={_fmt_value(v)}" for k, v in self.params]
        if self.match:
            unit = " dB" if self.match_metric == "psnr" else ""
            parts.append(f"at {self.match_metric.upper()} {_fmt_value(self.match_target)}{unit}")
        return f"{name} {' '.join(parts)}".strip()

    @property
    def eps(self) -> float:
        return float(self.params_dict.get("eps", math.nan))

    @property
    def steps(self) -> float:
        return float(self.params_dict.get("steps", math.nan))


def _fmt_value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def expand_grid(entries: Sequence[dict]) -> list[GridPoint]:
    """``[{attack: NAME | [NAMES], param: value | [values], ...}, ...]`` -> grid points (the
    no-attack baseline first). A list of attacks crosses each with the entry's other axes.
    ``psnr``/``ssim`` (with an optional ``tol``) make matched-quality points. Unknown
    attacks/parameters and contradictory entries raise ``MedadvError`` naming them."""
    points: list[GridPoint] = [GridPoint(NO_ATTACK)]
    for i, entry in enumerate(entries):
        where = f"grid entry {i + 1}"
        if not isinstance(entry, dict) or "attack" not in entry:
            raise MedadvError(f"{where} must be a mapping with an 'attack' key, got {entry!r}")
        names = entry["attack"] if isinstance(entry["attack"], (list, tuple)) else [entry["attack"]]
        if not names:
            raise MedadvError(f"{where}: 'attack' is an empty list")
        match_axes = _match_axes(entry, where)
        rest = {k: v for k, v in entry.items() if k not in ("attack", "tol", *QUALITY_AXES)}
        for name in (str(n) for n in names):
            if name == NO_ATTACK:
                continue
            axes = _param_axes(name, rest, where)
            if match_axes:
                _check_matchable(name, rest, match_axes[0][0][0], where)
            for combo in itertools.product(*axes) if axes else [()]:
                for m in itertools.product(*match_axes) if match_axes else [()]:
                    gp = GridPoint(name, tuple(sorted(combo)), tuple(sorted(m)))
                    if gp not in points:
                        points.append(gp)
    return points


def _param_axes(name: str, entry: dict, where: str) -> list[list[tuple]]:
    if name not in ATTACKS:
        raise MedadvError(f"{where}: unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")
    spec = ATTACKS[name]
    known = {p.name: p for p in spec.params}
    axes = []
    for k, v in entry.items():
        if k not in known and k != "loss":
            raise MedadvError(f"{where}: {spec.label} has no parameter {k!r}; "
                              f"it takes {', '.join(known) or 'none'}")
        kind = known[k].kind if k in known else str
        values = v if isinstance(v, (list, tuple)) else [v]
        if not values:
            raise MedadvError(f"{where}: {k} has an empty list of values")
        axes.append([(k, _coerce(kind, x, f"{where}: {k}")) for x in values])
    return axes


def _match_axes(entry: dict, where: str) -> list[list[tuple]]:
    """The matched-quality axes of a grid entry: ``[[(metric, t1), (metric, t2), ...], [("tol", v)]?]``."""
    given = [k for k in QUALITY_AXES if k in entry]
    if len(given) > 1:
        raise MedadvError(f"{where}: give psnr or ssim, not both (one matched-quality axis per entry)")
    if not given:
        if "tol" in entry:
            raise MedadvError(f"{where}: tol is the tolerance of a psnr/ssim target; the entry has none")
        return []
    metric = given[0]
    values = entry[metric] if isinstance(entry[metric], (list, tuple)) else [entry[metric]]
    if not values:
        raise MedadvError(f"{where}: {metric} has an empty list of values")
    targets = []
    for v in values:
        t = _coerce(float, v, f"{where}: {metric}")
        ok = t is not None and math.isfinite(t) and (t > 0 if metric == "psnr" else -1.0 < t <= 1.0)
        if not ok:
            need = "a finite PSNR in dB > 0" if metric == "psnr" else "an SSIM in (-1, 1]"
            raise MedadvError(f"{where}: {metric} target {v!r} must be {need}")
        targets.append((metric, t))
    axes = [targets]
    if "tol" in entry:
        tol = _coerce(float, entry["tol"], f"{where}: tol")
        if tol is None or not (math.isfinite(tol) and tol > 0):
            raise MedadvError(f"{where}: tol must be a number > 0, got {entry['tol']!r}")
        axes.append([("tol", tol)])
    return axes


def _check_matchable(name: str, params: dict, metric: str, where: str) -> None:
    try:
        knob = knob_for(name)
    except ValueError as exc:
        raise MedadvError(f"{where}: {exc}") from None
    if knob in params:
        raise MedadvError(f"{where}: {metric} sets {name}'s {knob} (found per case to reach the target); "
                          f"drop {knob} from this entry, or put fixed {knob} values in an entry of their own")


def _coerce(kind, value, where: str):
    if value is None:
        return None
    try:
        if kind is bool:
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        return kind(value)
    except (TypeError, ValueError):
        raise MedadvError(f"{where}: expected {kind.__name__}, got {value!r}") from None


def grid_from_flags(attacks: Sequence[str], eps: Sequence[float] | None = None,
                    steps: Sequence[int] | None = None, extra: dict | None = None, *,
                    psnr: Sequence[float] | None = None, ssim: Sequence[float] | None = None,
                    tol: float | None = None) -> list[dict]:
    """Grid entries from CLI flags: each attack gets the ε/steps lists it takes a parameter for.

    With ``psnr``/``ssim`` every attack gets a matched-quality entry (its knob found per case);
    attacks that take ε also keep an entry with the fixed ``eps`` values when those are given.
    """
    if psnr and ssim:
        raise MedadvError("give PSNR or SSIM targets, not both")
    quality = ("psnr", list(psnr)) if psnr else ("ssim", list(ssim)) if ssim else None
    if tol is not None and quality is None:
        raise MedadvError("a match tolerance needs PSNR or SSIM targets")
    entries = []
    for name in attacks:
        spec = ATTACKS.get_spec(name)
        takes = {p.name for p in spec.params}
        e: dict = {"attack": name}
        if steps and "steps" in takes:
            e["steps"] = list(steps)
        for k, v in (extra or {}).items():
            if k in takes:
                e[k] = v
        if quality is not None:
            if eps and "eps" in takes:
                entries.append({**e, "eps": list(eps)})
            entries.append({**e, quality[0]: quality[1], **({} if tol is None else {"tol": tol})})
            continue
        if eps and "eps" in takes:
            e["eps"] = list(eps)
        entries.append(e)
    return entries
