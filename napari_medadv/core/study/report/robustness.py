"""The honest-evaluation sections of a study report (issue 14): "Breaks at ε" (median and IQR of the
breaking ε per model × attack × label/region, with the cases not broken up to ε_max), the
Dice-vs-ε AUC per model × attack family × region, and the evaluation sanity checks per model with
every violation's warning text. Tables here, CSVs and sections too (they are small)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .. import stats as S
from ..store import NO_ATTACK, REGIONS
from .document import Doc, write_csv
from .tables import key_name, whitebox

#: stands for "not reached" (inf) in the quantiles: any interpolation with it lands above every finite value
_CENSORED = 1e9


def censored_quantiles(values, qs=(0.25, 0.5, 0.75)) -> list[float]:
    """Quantiles (linear interpolation) of breaking ε values where ``inf`` means "not broken up to
    ε_max" (right-censored): a quantile that touches a censored value is ``inf`` ("> ε_max")."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return [math.nan for _ in qs]
    finite = v[np.isfinite(v)]
    top = float(finite.max()) if finite.size else -math.inf
    q = np.quantile(np.where(np.isinf(v), _CENSORED, v), qs)
    return [math.inf if x > top else float(x) for x in q]  # above every finite value: it used a censored one


def _breaking_cols(df) -> list[tuple[str, str, str]]:
    """``[(column, attack, key)]`` of the ``breaking_eps_<attack>_<key>`` columns, keys in region order."""
    from ...attacks import ATTACKS

    out = []
    for c in df.columns:
        if not c.startswith("breaking_eps_") or not df[c].notna().any():
            continue
        rest = c[len("breaking_eps_"):]
        attack = max((a for a in ATTACKS if rest.startswith(a + "_")), key=len, default=None)
        if attack is not None:
            out.append((c, attack, rest[len(attack) + 1:]))
    order = {r: i for i, r in enumerate(REGIONS)}
    return sorted(out, key=lambda t: (t[1], order.get(t[2], len(order)), t[2]))


def breaking_summary(df, eps_max: float | None = None):
    """One row per model × attack × key: n, median and IQR of the breaking ε, how many cases were
    not broken up to ε_max (``inf`` quantiles: "> ε_max")."""
    cols = _breaking_cols(df)
    if not cols:
        return pd.DataFrame()
    clean = whitebox(df[df["grid_key"] == NO_ATTACK])
    rows = []
    for model, g in clean.groupby("target", sort=False):
        for col, attack, key in cols:
            v = g[col].dropna()
            if v.empty:
                continue
            q25, med, q75 = censored_quantiles(v)
            rows.append({"model": model, "attack": attack, "key": key, "n": int(v.size),
                         "not_reached": int(np.isinf(v).sum()), "median": med, "q25": q25, "q75": q75,
                         "eps_max": eps_max})
    return pd.DataFrame(rows)


def auc_summary(df):
    """One row per model × attack family × Dice key (white box): mean ± sd over cases of the
    Dice-vs-ε AUC (:func:`~..robustness.add_dice_auc`)."""
    if "auc_family" not in df:
        return pd.DataFrame()
    wb = whitebox(df[df["auc_family"].notna()])
    keys = [c[len("auc_dice_"):] for c in df.columns if c.startswith("auc_dice_") and df[c].notna().any()]
    keys = [k for k in REGIONS if k in keys] or [k for k in keys if k != "fg"] or keys
    rows = []
    for (model, fam), g in wb.groupby(["target", "auc_family"], sort=False):
        per_case = g.drop_duplicates("case")
        row = {"model": model, "attack": fam, "n": len(per_case), "eps_max": float(per_case["auc_eps_max"].max())}
        for k in keys:
            m, sd, _ = S.mean_sd(per_case[f"auc_dice_{k}"])
            row.update({f"auc_{k}_mean": m, f"auc_{k}_sd": sd})
        rows.append(row)
    return pd.DataFrame(rows)


def sanity_rows(stored: list[dict]) -> list[dict]:
    """One row per model × case × check from the stored sanity checks."""
    rows = []
    for s in stored:
        for rep in s.get("reports", []):
            for c in rep.get("checks", []):
                rows.append({"model": s["model"], "case": rep.get("case"), "check": c["name"],
                             "passed": bool(c["passed"]), "value": c.get("value"), "message": c["message"]})
    return rows


# --------------------------------------------------------------------------- sections


def _eps(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return "> ε_max" if math.isinf(v) else f"{v:.4f}"


def breaking_section(doc: Doc, out: Path, df, settings: dict | None, files: dict, links: list) -> None:
    eps_max = (settings or {}).get("eps_max")
    summ = breaking_summary(df, eps_max)
    if summ.empty:
        return
    write_csv(summ, out / "summary_breaking_eps.csv")
    files["summary_breaking_eps"] = str(out / "summary_breaking_eps.csv")
    links.append("[summary_breaking_eps.csv](summary_breaking_eps.csv)")
    doc.h(2, "Breaks at ε")
    thr = (settings or {}).get("threshold", 0.5)
    doc.p(f"Breaking ε of a label or region on one case: the smallest ε (fraction of each channel's range) at "
          f"which its Dice against the model's clean prediction falls below {thr:g} (a classifier's finding: its "
          f"probability crosses 0.5), searched per case by a grid up to ε_max = {_eps(eps_max)} refined by "
          "bisection (`napari_medadv.core.breaking`). Median [IQR] over the cases; a case never broken up to "
          "ε_max counts as above it (quantiles that reach it read \"> ε_max\"), and *not reached* counts those "
          "cases. Per case: the `breaking_eps_<attack>_<key>` columns of the no-attack rows of per_case.csv "
          "(inf: not reached).")
    def shown(key: str) -> str:  # a label named like a region (ET) must not read as the region
        return f"label {key_name(key)}" if key.startswith("label_") else key_name(key)

    rows = [[r["model"], r["attack"], shown(r["key"]), r["n"], _eps(r["median"]),
             f"[{_eps(r['q25'])}, {_eps(r['q75'])}]", f"{r['not_reached']}/{r['n']}"] for _, r in summ.iterrows()]
    doc.table(["model", "attack", "label / region", "n", "median ε", "IQR", "not reached"], rows)


def auc_section(doc: Doc, out: Path, df, files: dict, links: list) -> None:
    summ = auc_summary(df)
    if summ.empty:
        return
    write_csv(summ, out / "summary_dice_auc.csv")
    files["summary_dice_auc"] = str(out / "summary_dice_auc.csv")
    links.append("[summary_dice_auc.csv](summary_dice_auc.csv)")
    keys = [c[len("auc_"):-len("_mean")] for c in summ.columns if c.startswith("auc_") and c.endswith("_mean")]
    doc.h(2, "Dice-vs-ε AUC")
    doc.p("Per case, the area under the Dice-vs-ε curve of an attack family (the attack with its other "
          "parameters, over the grid's ε values) from ε = 0 (the clean Dice) to the family's largest ε, by "
          "the trapezoid rule, divided by that ε: the mean Dice over the budget range (the clean Dice if the "
          "attack never hurt, 0 if it destroyed the segmentation at once). Dice as in the tables above (vs the "
          "ground truth); each model attacked with its own gradients; mean ± sd over cases. Per case: the "
          "`auc_dice_<key>` columns of per_case.csv.")
    rows = [[r["model"], r["attack"], r["n"], _eps(r["eps_max"])]
            + [_ms(r[f"auc_{k}_mean"], r[f"auc_{k}_sd"]) for k in keys] for _, r in summ.iterrows()]
    doc.table(["model", "attack", "n", "ε_max"] + [f"AUC {key_name(k)}" for k in keys], rows)


def _ms(m, sd) -> str:
    if m is None or math.isnan(m):
        return "–"
    return f"{m:.3f}" if sd is None or math.isnan(sd) else f"{m:.3f} ± {sd:.3f}"


def sanity_section(doc: Doc, out: Path, stored: list[dict], settings: dict | None, files: dict,
                   links: list) -> None:
    rows = sanity_rows(stored)
    if not rows:
        return
    write_csv(pd.DataFrame(rows), out / "sanity_checks.csv")
    files["sanity_checks"] = str(out / "sanity_checks.csv")
    links.append("[sanity_checks.csv](sanity_checks.csv)")
    doc.h(2, "Evaluation sanity checks")
    src = (settings or {}).get("source_model")
    doc.p("In the spirit of AutoAttack's checks, adapted to segmentation (`napari_medadv.core.sanity`), run once "
          "per model on the case(s) named, stored in `sanity/`: share of zero or non-finite input gradients in "
          "the region the attacks perturb; two forwards of the same input (stochastic → EOT needed); robustness "
          "(Dice of the attacked vs the clean prediction) non-increasing in ε (FGSM, PGD) and in PGD's steps; "
          "no black-box attack (uniform noise" + (f", PGD transferred from `{src}`" if src else "")
          + ", DGDE on classifiers) stronger than the white-box ones at the same ε. Every failed check's warning "
          "is quoted in full below the table.")
    for s in stored:
        body, warns = [], []
        for rep in s.get("reports", []):
            for c in rep.get("checks", []):
                v = c.get("value")
                body.append([rep.get("case"), c["name"], "pass" if c["passed"] else "FAIL",
                             "–" if v is None else f"{v:.4g}", c["message"] if c["passed"] else "see below"])
                if not c["passed"]:
                    warns.append(f"`{c['name']}` on {rep.get('case')}: {c['message']}")
        doc.table(["case", "check", "result", "value", "detail"], body, caption=f"model {s['model']}")
        for w in warns:
            doc.p("⚠ " + w)
        if not warns:
            doc.p(f"`{s['model']}`: every check passed.")
