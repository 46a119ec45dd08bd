"""The tables and tests of a study report, computed from the per-case rows (the DataFrames of
:func:`~napari_medadv.core.study.store.load_rows`): Liu-style segmentation summaries,
Ghamizi-style classification summaries, transfer matrices, matched-quality summaries, and the
paired Wilcoxon tests with their Bonferroni families. Nothing here writes a file."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ... import metrics as M
from ...attacks import ATTACKS
from .. import stats as S
from ..store import NO_ATTACK, REGIONS


def dice_keys(df) -> tuple[str, ...]:
    """Which Dice columns a report shows: the BraTS regions WT/TC/ET when the rows have them (models
    with BraTS labels), else the per-label columns ``dice_label_<name>`` of other models (named by
    their ``label_names``), else the foreground. Works on per-case rows (``dice_X``) and on summary
    tables (``dice_X_mean``)."""
    cols = set(df.columns)

    def has(x):
        col = f"dice_{x}" if f"dice_{x}" in cols else f"dice_{x}_mean"
        return col in cols and df[col].notna().any()

    if all(has(r) for r in REGIONS):
        return tuple(REGIONS)
    labels = sorted({c[len("dice_"):].removesuffix("_mean") for c in cols
                     if c.startswith("dice_label_") and not c.endswith("_sd")})
    labels = [x for x in labels if has(x)]
    return tuple(labels) or ("fg",)


def key_name(x: str) -> str:
    """Display name of a Dice key: ``WT``, the label's name, or ``foreground``."""
    return {"fg": "foreground"}.get(x, x.removeprefix("label_"))


def grid_order(df) -> list[str]:
    """The rows' grid keys in first-seen order, the no-attack baseline first."""
    keys = list(dict.fromkeys(df["grid_key"]))
    return [NO_ATTACK] + [k for k in keys if k != NO_ATTACK] if NO_ATTACK in keys else keys


def whitebox(df):
    """The white-box rows: each model attacked with its own gradients (source == target)."""
    return df[df["source"] == df["target"]]


def _paired_test(a, b, col: str) -> dict:
    """Wilcoxon of column ``col`` between two per-case tables (index ``case``) on their common
    cases: ``n``, both means over the pairs tested (NaN when none), ``statistic``, ``p``."""
    common = [c for c in a.index if c in b.index]
    stat, p, n = S.wilcoxon_paired(a.loc[common, col].to_numpy(), b.loc[common, col].to_numpy())
    return {"n": n, "mean": float(a.loc[common, col].mean()) if n else math.nan,
            "reference_mean": float(b.loc[common, col].mean()) if n else math.nan, "statistic": stat, "p": p}


def _bonferroni_family(fam: list[dict]) -> list[dict]:
    """Bonferroni-adjust one family of tests in place (``p_adj``, family size ``m``, ``stars``)."""
    m = len([f for f in fam if not math.isnan(f["p"])])
    for row, padj in zip(fam, S.bonferroni([f["p"] for f in fam])):
        row.update(p_adj=padj, m=m, stars=S.stars(padj))
    return fam


def attack_tests(seg, comparison: str = "attack vs no attack") -> list[dict]:
    """Wilcoxon of Dice under each attack vs no attack, per model and region, paired by case.
    Family for Bonferroni: the attack conditions of one model and region."""
    out = []
    wb = whitebox(seg)
    for model, g in wb.groupby("target", sort=False):
        base = g[g["grid_key"] == NO_ATTACK].set_index("case")
        keys = [k for k in grid_order(g) if k != NO_ATTACK]
        for r in dice_keys(g):
            col = f"dice_{r}"
            fam = []
            for k in keys:
                a = g[g["grid_key"] == k].set_index("case")
                fam.append({"comparison": comparison, "model": model, "reference_model": model,
                            "grid_key": k, "reference_grid_key": NO_ATTACK, "region": r,
                            **_paired_test(a, base, col)})
            out.extend(_bonferroni_family(fam))
    return out


def model_tests(seg, baseline: str) -> list[dict]:
    """Wilcoxon of each model's Dice vs the baseline model's under the same grid point (white
    box: each model attacked itself), paired by case. Family: all model × grid point tests of
    one region (Liu Table 2)."""
    wb = whitebox(seg)
    models = [m for m in dict.fromkeys(wb["target"]) if m != baseline]
    if baseline not in set(wb["target"]) or not models:
        return []
    out = []
    keys = grid_order(wb)
    for r in dice_keys(wb):
        col = f"dice_{r}"
        fam = []
        for m in models:
            for k in keys:
                a = wb[(wb["target"] == m) & (wb["grid_key"] == k)].set_index("case")
                b = wb[(wb["target"] == baseline) & (wb["grid_key"] == k)].set_index("case")
                if not a.index.isin(b.index).any():
                    continue
                fam.append({"comparison": "model vs baseline model", "model": m, "reference_model": baseline,
                            "grid_key": k, "reference_grid_key": k, "region": r, **_paired_test(a, b, col)})
        out.extend(_bonferroni_family(fam))
    return out


def segmentation_summary(seg, tests: list[dict]):
    """Liu Table 1: one row per model × grid point (white box)."""
    lookup = {(t["model"], t["grid_key"], t["region"]): t for t in tests}
    rows = []
    wb = whitebox(seg)
    for model, g in wb.groupby("target", sort=False):
        for k in grid_order(g):
            sub = g[g["grid_key"] == k]
            first = sub.iloc[0]
            row = {"model": model, "grid_key": k, "attack": first["attack_label"], "eps": first["eps"],
                   "n": len(sub)}
            for r in dice_keys(g):
                m, sd, _ = S.mean_sd(sub[f"dice_{r}"])
                t = lookup.get((model, k, r))
                row.update({f"dice_{r}_mean": m, f"dice_{r}_sd": sd,
                            f"p_{r}": t["p"] if t else math.nan, f"p_adj_{r}": t["p_adj"] if t else math.nan,
                            f"stars_{r}": t["stars"] if t else ""})
            for q in ("psnr", "ssim", "rmse"):
                vals = sub[q].replace([np.inf], np.nan)
                m, sd, _ = S.mean_sd(vals)
                row.update({f"{q}_mean": m, f"{q}_sd": sd})
            rows.append(row)
    return pd.DataFrame(rows)


def mlacc_thresholds(g, class_names: list[str]):
    """Per-label MLACC thresholds of one model: Youden's J on its clean (no-attack) probabilities
    against the labels of the evaluated cases (:func:`~napari_medadv.core.metrics.operating_thresholds`,
    the calibration Cohen et al. and Ghamizi et al. use, here on the evaluated set: no training
    predictions are at hand); None without labels or a no-attack row."""
    names = [n for n in class_names if f"y_{n}" in g and f"p_clean_{n}" in g]
    clean = g[g["grid_key"] == NO_ATTACK]
    if not names or len(names) != len(class_names) or clean.empty or clean[[f"y_{n}" for n in names]].isna().any().any():
        return None
    return M.operating_thresholds(clean[[f"p_clean_{n}" for n in names]].to_numpy(),
                                  clean[[f"y_{n}" for n in names]].to_numpy())


def _mlacc(sub, class_names: list[str], thr) -> float:
    if thr is None:
        return math.nan
    return M.multilabel_accuracy(sub[[f"p_adv_{n}" for n in class_names]].to_numpy(),
                                 sub[[f"y_{n}" for n in class_names]].to_numpy(), thr)


def classification_summary(cls, class_names: list[str]):
    """Ghamizi Table 5: k-robust accuracy (k = 1, 3), AUC, MSE/BCE, MLACC (per-label thresholds of
    :func:`mlacc_thresholds`), RISK (from logits, and from probabilities) and the success rate per
    model × grid point."""
    rows = []
    wb = whitebox(cls)
    for model, g in wb.groupby("target", sort=False):
        thr = mlacc_thresholds(g, class_names)
        for k in grid_order(g):
            sub = g[g["grid_key"] == k]
            first = sub.iloc[0]
            aucs = [S.auc(sub[f"p_adv_{n}"], sub[f"y_{n}"]) for n in class_names
                    if f"y_{n}" in sub and f"p_adv_{n}" in sub]
            aucs = [a for a in aucs if not math.isnan(a)]
            row = {"model": model, "grid_key": k, "attack": first["attack_label"], "eps": first["eps"],
                   "n": len(sub), "k1_robust_accuracy": float(sub["k1_acc"].mean())}
            if "k3_acc" in sub and sub["k3_acc"].notna().any():
                row["k3_robust_accuracy"] = float(sub["k3_acc"].mean())
            row.update({"auc": float(np.mean(aucs)) if aucs else math.nan, "mse": float(sub["mse"].mean()),
                        "bce": float(sub["bce"].mean()), "mlacc": _mlacc(sub, class_names, thr),
                        "risk": float(sub["risk"].mean()),
                        "risk_prob": float(sub["risk_prob"].mean()) if "risk_prob" in sub else math.nan,
                        "success_rate": float(sub["top1_changed"].astype(float).mean())})
            rows.append(row)
    return pd.DataFrame(rows)


def transfer_matrices(df, value: str) -> dict:
    """``grid_key -> DataFrame`` source (rows) × target (columns) of the mean of ``value``."""
    out = {}
    for k in grid_order(df):
        if k == NO_ATTACK:
            continue
        sub = df[df["grid_key"] == k]
        if sub["source"].nunique() < 1 or sub["target"].nunique() < 2 or not (sub["source"] != sub["target"]).any():
            continue  # no transfer rows (each model attacked only itself): a diagonal is no matrix
        out[k] = sub.pivot_table(index="source", columns="target", values=value, aggfunc="mean", sort=False)
    return out


# --------------------------------------------------------------------------- matched image quality


SOURCE_KINDS = {"adversarial": "adversarial attack", "natural": "natural MR artifact", "random": "random noise"}


def source_kind(attack: str) -> str:
    """``"natural"`` for an MR artifact, ``"random"`` for the random L∞ noise baseline, else
    ``"adversarial"`` (every source that uses the model: gradient attacks and DGDE)."""
    spec = ATTACKS.get(attack)
    kind = spec.kind if spec is not None else "adversarial"
    return {"artifact": "natural"}.get(kind, kind)


def split_matched(seg):
    """``(fixed-parameter rows incl. no attack, matched rows that reached their target, all
    matched rows)`` of a per-case table (tables without matched points: the last two empty)."""
    if "match_metric" not in seg:
        return seg, seg.iloc[0:0], seg.iloc[0:0]
    is_m = seg["match_metric"].notna()
    matched = seg[is_m]
    reached = matched[matched["match_reached"].fillna(False).astype(bool)]
    return seg[~is_m], reached, matched


def source_name(first) -> str:
    """Label of a source without its matched target ("FGSM", "MR motion (torchio) steps=5")."""
    return str(first["attack_label"]).split(" at PSNR")[0].split(" at SSIM")[0]


def _matched_order(matched) -> list[tuple]:
    """``[(grid_key, attack, metric, target), ...]``: sources in grid order, targets from the
    mildest (highest PSNR/SSIM) to the strongest."""
    firsts = matched.drop_duplicates("grid_key")
    src_order = list(dict.fromkeys(zip(firsts["attack"], firsts["params"])))
    out = []
    for src in src_order:
        sub = firsts[(firsts["attack"] == src[0]) & (firsts["params"] == src[1])]
        for _, r in sub.sort_values(["match_metric", "match_target"], ascending=[True, False]).iterrows():
            out.append((r["grid_key"], r["attack"], r["match_metric"], float(r["match_target"])))
    return out


def matched_summary(matched, reached, tests: list[dict]):
    """One row per model × source × target: how many cases reached the target, the knob that
    did (mean ± sd), the quality reached and Dice per region over the cases that reached it,
    with the Wilcoxon test vs no attack (``tests``: :func:`attack_tests` on those rows)."""
    lookup = {(t["model"], t["grid_key"], t["region"]): t for t in tests}
    rows = []
    wb_all, wb = whitebox(matched), whitebox(reached)
    for model, g_all in wb_all.groupby("target", sort=False):
        g = wb[wb["target"] == model]
        for key, attack, metric, target in _matched_order(g_all):
            sub_all = g_all[g_all["grid_key"] == key]
            sub = g[g["grid_key"] == key]
            first = sub_all.iloc[0]
            miss = sub_all[~sub_all["match_reached"].fillna(False).astype(bool)]
            km, ksd, _ = S.mean_sd(sub["match_value"])
            am, asd, _ = S.mean_sd(sub["match_achieved"])
            row = {"model": model, "grid_key": key, "attack": attack, "source": source_name(first),
                   "kind": source_kind(attack), "metric": metric, "target": target,
                   "tolerance": float(first["match_tol"]), "n": len(sub_all), "n_reached": len(sub),
                   "knob": first["match_knob"], "knob_mean": km, "knob_sd": ksd,
                   "achieved_mean": am, "achieved_sd": asd,
                   "unreached_achieved_mean": S.mean_sd(miss["match_achieved"])[0]}
            for r in dice_keys(g):
                m, sd, _ = S.mean_sd(sub[f"dice_{r}"])
                t = lookup.get((model, key, r))
                row.update({f"dice_{r}_mean": m, f"dice_{r}_sd": sd,
                            f"p_{r}": t["p"] if t else math.nan, f"p_adj_{r}": t["p_adj"] if t else math.nan,
                            f"stars_{r}": t["stars"] if t else ""})
            for q in ("psnr", "ssim"):
                m, sd, _ = S.mean_sd(sub[q])
                row.update({f"{q}_mean": m, f"{q}_sd": sd})
            rows.append(row)
    return pd.DataFrame(rows)


def matched_comparison_tests(reached) -> list[dict]:
    """At each target, Dice under each adversarial source vs each non-adversarial source
    (natural artifact, random noise), Wilcoxon paired by case over the cases where both reached
    the target. Family for Bonferroni: all such tests of one model and region."""
    out = []
    wb = whitebox(reached)
    for model, g in wb.groupby("target", sort=False):
        order = _matched_order(g)
        names = {k: source_name(g[g["grid_key"] == k].iloc[0]) for k, *_ in order}
        pairs = []
        for key_a, att_a, metric, target in order:
            if source_kind(att_a) != "adversarial":
                continue
            for key_b, att_b, metric_b, target_b in order:
                if source_kind(att_b) != "adversarial" and (metric_b, target_b) == (metric, target):
                    pairs.append((key_a, key_b, metric, target))
        for r in dice_keys(g):
            col = f"dice_{r}"
            fam = []
            for key_a, key_b, metric, target in pairs:
                a = g[g["grid_key"] == key_a].set_index("case")
                b = g[g["grid_key"] == key_b].set_index("case")
                fam.append({"comparison": f"adversarial vs other source at equal {metric}", "model": model,
                            "reference_model": model, "grid_key": key_a, "reference_grid_key": key_b,
                            "source": names[key_a], "reference_source": names[key_b],
                            "metric": metric, "target": target, "region": r, **_paired_test(a, b, col)})
            out.extend(_bonferroni_family(fam))
    return out


# --------------------------------------------------------------------------- L0 attacks (DGDE)


def dgde_summary(df):
    """DGDE 2024, Table 2: per model × grid point (white box), the success rate (the attacked
    finding's probability crossed 0.5) and, over the successes only (a failure has no L0), the
    number of changed pixels — max, min, mean, sd, median — and its mean percentage of the image."""
    if "l0_pixels" not in df:
        return pd.DataFrame()
    rows = []
    wb = whitebox(df[df["l0_pixels"].notna() | df["success"].notna()])
    for model, g in wb.groupby("target", sort=False):
        for k in grid_order(g):
            sub = g[g["grid_key"] == k]
            ok = sub[sub["success"].fillna(False).astype(bool)]
            l0 = ok["l0_pixels"].astype(float)
            pct = 100.0 * l0 / ok["n_pixels"].astype(float)
            m, sd, _ = S.mean_sd(l0)
            rows.append({"model": model, "grid_key": k, "attack": sub.iloc[0]["attack_label"], "n": len(sub),
                         "n_success": len(ok), "success_rate": len(ok) / len(sub) if len(sub) else math.nan,
                         "l0_max": float(l0.max()) if len(ok) else math.nan,
                         "l0_min": float(l0.min()) if len(ok) else math.nan, "l0_mean": m, "l0_sd": sd,
                         "l0_median": float(l0.median()) if len(ok) else math.nan,
                         "l0_percent_mean": float(pct.mean()) if len(ok) else math.nan})
    return pd.DataFrame(rows)
