"""Honest-evaluation parts of a study (issue 14), each opt-in by a grid key:

* ``breaking_eps: {attack: fgsm, threshold: 0.5}`` — per case and model, the breaking ε of every
  label/region (segmentation) or finding (classifier) by :func:`~napari_medadv.core.breaking.breaking_eps`,
  stored as columns ``breaking_eps_<attack>_<key>`` of the model's no-attack row (``inf``: not
  reached up to ``eps_max``). Keys: ``attack`` (a name or a list), ``threshold`` (default 0.5),
  ``eps_max`` (default: the grid's largest fixed ε), ``grid``/``refine`` (the search's, defaults of
  :func:`~napari_medadv.core.breaking.breaking_eps`) and any parameter of the attack (``steps``...).
* ``sanity: {source_model: demo:unet3d, cases: 1}`` — the evaluation sanity checks of
  :func:`~napari_medadv.core.sanity.run_sanity_checks` once per model, on the dataset's first
  ``cases`` cases (default 1), stored in ``OUT/sanity/<model>.json`` with their own fingerprint:
  a re-run never recomputes a stored model, and adding the key to a stored study does not
  recompute its cases. Other keys: ``run_sanity_checks``' settings (``eps``, ``pgd_eps``,
  ``pgd_steps``, ``steps``, ``steps_eps``, ``tolerance``, ``max_zero_share``, ``dgde``). A
  model is not its own transfer source (that would be the white-box attack again).
* the area under the Dice-vs-ε curve (:func:`add_dice_auc`, always, at report time) from the
  rows themselves.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from ..attacks import ATTACKS
from ..errors import MedadvError
from ..files import write_json
from .store import NO_ATTACK, safe_name

#: the folder of a study's stored sanity checks, one JSON file per model
SANITY = "sanity"
#: settings of :func:`~napari_medadv.core.sanity.run_sanity_checks` a grid may set
SANITY_SETTINGS = ("eps", "pgd_eps", "pgd_steps", "steps", "steps_eps", "tolerance", "max_zero_share", "dgde")
_BREAKING_KEYS = ("attack", "threshold", "eps_max", "grid", "refine")


# --------------------------------------------------------------------------- configuration


def breaking_settings(value, grid_eps: list[float]) -> dict | None:
    """The ``breaking_eps`` grid key, validated: ``{attacks, threshold, eps_max, grid, refine,
    params}``; ``None`` when absent. ``grid_eps``: the grid's fixed ε values (the default ε_max)."""
    if value is None or value is False:
        return None
    value = {} if value is True else value
    if not isinstance(value, dict):
        raise MedadvError(f"breaking_eps must be a mapping (attack, threshold, eps_max, ...), got {value!r}")
    attacks = value.get("attack", "fgsm")
    attacks = [str(a) for a in (attacks if isinstance(attacks, (list, tuple)) else [attacks])]
    given = {k: v for k, v in value.items() if k not in _BREAKING_KEYS}
    params, used = {}, set()
    for a in attacks:  # each attack gets the parameters it takes (a list may mix FGSM and PGD)
        if a not in ATTACKS:
            raise MedadvError(f"breaking_eps: unknown attack {a!r}; choose one of {', '.join(ATTACKS)}")
        spec = ATTACKS[a]
        if not spec.takes_eps:
            raise MedadvError(f"breaking_eps: {spec.label} has no ε budget (choose fgsm, pgd, ...)")
        known = {p.name for p in spec.params} | {"loss"}
        params[a] = {k: v for k, v in given.items() if k in known and k != "eps"}
        used |= set(params[a])
    bad = sorted(set(given) - used)
    if bad:
        raise MedadvError(f"breaking_eps: no attack of the key takes {', '.join(bad)}; the key takes "
                          f"{', '.join(_BREAKING_KEYS)} and the attacks' parameters")
    threshold = float(value.get("threshold", 0.5))
    if not 0 < threshold < 1:
        raise MedadvError(f"breaking_eps: threshold must lie between 0 and 1, got {threshold}")
    eps_max = value.get("eps_max", max(grid_eps) if grid_eps else None)
    if eps_max is None or not (float(eps_max) > 0 and math.isfinite(float(eps_max))):
        raise MedadvError("breaking_eps: give eps_max > 0 (the grid has no fixed ε to take it from)")
    return {"attacks": attacks, "threshold": threshold, "eps_max": float(eps_max),
            "grid": None if value.get("grid") is None else int(value["grid"]),
            "refine": None if value.get("refine") is None else int(value["refine"]), "params": params}


def sanity_settings(value) -> dict | None:
    """The ``sanity`` grid key, validated: ``{source_model, cases, settings}``; ``None`` when absent."""
    if value is None or value is False:
        return None
    value = {} if value is True else value
    if not isinstance(value, dict):
        raise MedadvError(f"sanity must be a mapping (source_model, cases, ...) or true, got {value!r}")
    bad = sorted(set(value) - {"source_model", "cases", *SANITY_SETTINGS})
    if bad:
        raise MedadvError(f"sanity: unknown key(s) {', '.join(bad)}; known: source_model, cases, "
                          + ", ".join(SANITY_SETTINGS))
    n = int(value.get("cases", 1))
    if n < 1:
        raise MedadvError(f"sanity: cases must be >= 1, got {n}")
    return {"source_model": value.get("source_model"), "cases": n,
            "settings": {k: value[k] for k in SANITY_SETTINGS if k in value}}


# --------------------------------------------------------------------------- breaking ε of one case


def breaking_columns(image, model, labels, settings: dict, roi_mode: str, seed_of: Callable[[str], int]
                     ) -> tuple[dict, list[dict]]:
    """Breaking ε of one model on one case for every attack of ``settings`` (:func:`breaking_settings`).

    Returns ``(columns for the no-attack row, detail records for the case JSON)``. Column names:
    ``breaking_eps_<attack>_<key>``, key as the Dice columns name it (``WT``, ``label_<name>``,
    ``fg``) or a classifier's finding; ``inf`` when no ε up to ``eps_max`` breaks it."""
    from ..breaking import breaking_eps  # the pipeline: only when a study asks for it

    cols: dict = {}
    details = []
    for attack in settings["attacks"]:
        r = breaking_eps(image, model, attack, params=settings["params"][attack], labels=labels,
                         roi="auto" if roi_mode == "auto" else None, seed=seed_of(attack),
                         threshold=settings["threshold"], eps_max=settings["eps_max"],
                         grid=settings["grid"], refine=settings["refine"])
        for key, eps in r.breaking_eps.items():
            cols[f"breaking_eps_{attack}_{column_key(key, r.names, r.task)}"] = math.inf if eps is None else float(eps)
        d = r.to_dict()
        details.append({k: d[k] for k in ("attack", "criterion", "threshold", "eps_max", "method", "breaking_eps",
                                          "brackets", "dice_auc", "label_names", "n_evaluations")})
    return cols, details


def column_key(key: str, names: dict, task: str) -> str:
    """A breaking key as the study's Dice columns name it: regions as they are, a label value as
    ``label_<name>``, the foreground as ``fg``; a classifier's finding as it is."""
    if task != "segmentation" or key in ("WT", "TC", "ET"):
        return key
    if key == "foreground":
        return "fg"
    return f"label_{names.get(key, key)}"


# --------------------------------------------------------------------------- Dice-vs-ε AUC


def add_dice_auc(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with columns ``auc_dice_<key>`` (and ``auc_family``, ``auc_eps_max``) on the rows of
    every attack family (attack + its parameters but ε, fixed-ε points) that has at least two ε.

    AUC of one case × source × target × family = trapezoid area under Dice(ε) over
    ``[0, ε_max]``, Dice at ε = 0 being the target model's clean Dice of the case (its no-attack
    row), divided by ε_max (the family's largest ε): the mean Dice over the budget range (1 = never
    hurt, 0 = destroyed at once); the same value on each of the family's rows. Dice is the study's
    (vs the ground truth when the dataset has it). Families with one ε get none (a one-segment area
    is just the mean of two points)."""
    if df.empty or "dice_fg" not in df:
        return df
    keys = [c[len("dice_"):] for c in df.columns if c.startswith("dice_")]
    fixed = df["attack"] != NO_ATTACK
    if "match_metric" in df:
        fixed &= df["match_metric"].isna()
    rows = df[fixed & df["eps"].notna()]
    if rows.empty:
        return df
    clean = df[(df["attack"] == NO_ATTACK) & (df["source"] == df["target"])].set_index(["case", "target"])
    family = rows["params"].map(_without_eps)
    out = df.copy()
    for col in (f"auc_dice_{k}" for k in keys):
        out[col] = np.nan
    out["auc_family"] = pd.Series([None] * len(out), index=out.index, dtype=object)
    out["auc_eps_max"] = np.nan
    for (case, src, tgt, attack, fam), g in rows.groupby(["case", "source", "target", "attack", family], sort=False):
        eps = g["eps"].astype(float)
        if eps.nunique() < 2 or (case, tgt) not in clean.index:
            continue
        g = g.loc[eps.sort_values().index]
        xs = np.concatenate([[0.0], g["eps"].to_numpy(float)])
        base = clean.loc[(case, tgt)]
        for k in keys:
            ys = np.concatenate([[float(base[f"dice_{k}"])], g[f"dice_{k}"].to_numpy(float)])
            out.loc[g.index, f"auc_dice_{k}"] = float(np.trapezoid(ys, xs) / xs[-1])
        out.loc[g.index, "auc_family"] = family_label(g.iloc[0]["attack_label"], fam)
        out.loc[g.index, "auc_eps_max"] = float(xs[-1])
    return out


def _without_eps(params: str) -> str:
    p = json.loads(params) if isinstance(params, str) and params else {}
    return json.dumps({k: v for k, v in p.items() if k != "eps"}, sort_keys=True)


def family_label(attack_label: str, rest: str) -> str:
    """"PGD ε=0.02 steps=10" -> "PGD steps=10": an attack family's name without its ε."""
    p = json.loads(rest) if rest else {}
    return str(attack_label).split(" ε=")[0] + ("" if not p else " " + " ".join(f"{k}={v}" for k, v in sorted(p.items())))


# --------------------------------------------------------------------------- sanity checks, once per model


def sanity_file(out: str | Path, model: str) -> Path:
    return Path(out) / SANITY / f"{safe_name(model)}.json"


def sanity_fingerprint(model_checksum: str, cases: list, settings: dict, seed: int, roi: str,
                       source_checksum: str | None) -> str:
    payload = {"model": model_checksum, "cases": cases, "settings": settings, "seed": seed, "roi": roi,
               "source": source_checksum}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stored_sanity(out: str | Path, model: str, fingerprint: str) -> dict | None:
    """A model's stored sanity checks when computed with ``fingerprint``, else ``None``."""
    f = sanity_file(out, model)
    try:
        data = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if data.get("fingerprint") == fingerprint else None


def write_sanity(out: str | Path, model: str, fingerprint: str, cases: list[str], reports: list[dict]) -> Path:
    return write_json(sanity_file(out, model), {"model": model, "fingerprint": fingerprint, "cases": cases,
                                                "reports": reports})


def load_sanity(out: str | Path) -> list[dict]:
    """Every stored model's sanity checks (``[{model, cases, reports}]``), by file name."""
    found = []
    for f in sorted((Path(out) / SANITY).glob("*.json")):
        try:
            found.append(json.loads(f.read_text()))
        except (OSError, json.JSONDecodeError):
            continue  # a damaged file is recomputed by the next run; the report leaves it out
    return found
