"""Tables, statistics, figures and the Markdown/HTML report of a study folder.

Everything is computed from the stored per-case results (``OUT/cases/*.json``), so the report of
an interrupted or resumed study is always consistent with what is on disk. Outputs (all written
atomically, temp name + rename):

* ``per_case.csv`` / ``per_case.parquet`` — one row per case × source model × target model × grid
  point; ``history.csv`` — per-iteration loss/PSNR/Dice of iterative attacks;
* ``summary_segmentation.csv`` — Liu Table 1 style: Dice mean ± sd per WT/TC/ET per attack and ε,
  PSNR/SSIM/RMSE of the input, Wilcoxon vs no attack (Bonferroni, stars);
* ``model_comparison.csv`` — Liu Table 2 style: each model vs the baseline model, same attack;
* ``summary_classification.csv`` — Ghamizi Table 5 style: top-1/top-3 k-robust accuracy, AUC,
  MSE/BCE (vs the clean prediction), RISK, success rate;
* ``summary_matched_quality.csv`` — matched image quality: Dice per perturbation source
  (adversarial or natural MR artifact) × target PSNR/SSIM, the knob found, the quality reached,
  Wilcoxon vs no attack (Bonferroni, stars); ``comparison_matched_quality.csv`` — each
  adversarial source vs each other source at the same target (Wilcoxon, Bonferroni);
* ``transfer_*.csv`` — source → target matrices (Ghamizi Table 2);
* ``stats.csv`` — every test (statistic, p, adjusted p, family size);
* ``figures/*.png|svg`` — Dice vs ε, Dice vs PSNR/SSIM at matched quality (one line per source,
  adversarial solid, natural dashed), Dice vs iterations, PSNR vs iterations, k-robust accuracy vs ε;
* ``report.md`` and ``report.html`` linking them.

Matplotlib is used through ``Figure``/``FigureCanvasAgg`` objects (no pyplot state, no rc changes).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np

from .. import stats as S
from ...files import atomic_write
from ..store import NO_ATTACK, REGIONS, load_rows

MARKERS = "osD^v<>ph*"


# --------------------------------------------------------------------------- document model


class Doc:
    """A tiny document that renders to Markdown and to HTML from the same calls."""

    def __init__(self):
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list], caption: str = ""):
        self.blocks.append(("table", header, rows, caption))

    def img(self, path: str, alt: str):
        self.blocks.append(("img", path, alt))

    def code(self, text: str):
        self.blocks.append(("code", text))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "code":
                out.append("```\n" + b[1] + "\n```")
            elif b[0] == "img":
                out.append(f"![{b[2]}]({b[1]})")
            else:
                _, header, rows, caption = b
                lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
                lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
                if caption:
                    lines.insert(0, f"*{caption}*\n")
                out.append("\n".join(lines))
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        e = html.escape
        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
               "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
               "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #bbb;"
               "padding:3px 7px;text-align:right}th{background:#eee}td:first-child,th:first-child{text-align:left}"
               "img{max-width:100%}pre{background:#f4f4f4;padding:.6em;overflow-x:auto}</style></head><body>"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f"<p>{_inline_md(b[1])}</p>")
            elif b[0] == "code":
                out.append(f"<pre>{e(b[1])}</pre>")
            elif b[0] == "img":
                out.append(f"<p><img src='{e(b[1])}' alt='{e(b[2])}'></p>")
            else:
                _, header, rows, caption = b
                cap = f"<caption>{e(caption)}</caption>" if caption else ""
                head = "".join(f"<th>{e(str(c))}</th>" for c in header)
                body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
                out.append(f"<table>{cap}<tr>{head}</tr>{body}</table>")
        out.append("</body></html>")
        return "\n".join(out) + "\n"


def _inline_md(text: str) -> str:
    """Escape, then render `code` and [text](link) — all the inline Markdown the report uses."""
    import re

    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    return re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r"<a href='\2'>\1</a>", t)


# --------------------------------------------------------------------------- statistics


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


def _grid_order(df) -> list[str]:
    keys = list(dict.fromkeys(df["grid_key"]))
    return [NO_ATTACK] + [k for k in keys if k != NO_ATTACK] if NO_ATTACK in keys else keys


def whitebox(df):
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
        keys = [k for k in _grid_order(g) if k != NO_ATTACK]
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
    keys = _grid_order(wb)
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
    import pandas as pd

    lookup = {(t["model"], t["grid_key"], t["region"]): t for t in tests}
    rows = []
    wb = whitebox(seg)
    for model, g in wb.groupby("target", sort=False):
        for k in _grid_order(g):
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


def classification_summary(cls, class_names: list[str]):
    """Ghamizi Table 5: k-robust accuracy, AUC, MSE/BCE, RISK, success rate per model × grid point."""
    import pandas as pd

    rows = []
    wb = whitebox(cls)
    for model, g in wb.groupby("target", sort=False):
        for k in _grid_order(g):
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
                        "bce": float(sub["bce"].mean()), "risk": float(sub["risk"].mean()),
                        "success_rate": float(sub["top1_changed"].astype(float).mean())})
            rows.append(row)
    return pd.DataFrame(rows)


def transfer_matrices(df, value: str) -> dict:
    """``grid_key -> DataFrame`` source (rows) × target (columns) of the mean of ``value``."""
    out = {}
    for k in _grid_order(df):
        if k == NO_ATTACK:
            continue
        sub = df[df["grid_key"] == k]
        if sub["source"].nunique() < 1 or sub["target"].nunique() < 2:
            continue
        out[k] = sub.pivot_table(index="source", columns="target", values=value, aggfunc="mean", sort=False)
    return out


# --------------------------------------------------------------------------- matched image quality


SOURCE_KINDS = {"adversarial": "adversarial attack", "natural": "natural MR artifact", "random": "random noise"}
DODGE = {"psnr": 0.12, "ssim": 0.0015}  # horizontal offset between sources in the curves (dB / SSIM)
_KIND_SHORT = {"adversarial": "adversarial", "natural": "MR artifact", "random": "random"}
# line styles of the Dice-vs-quality curves: adversarial solid, natural dashed, random dotted
KIND_STYLE = {"adversarial": ("-", True), "natural": ("--", False), "random": (":", False)}


def source_kind(attack: str) -> str:
    """``"natural"`` for an MR artifact, ``"random"`` for the random L∞ noise baseline, else
    ``"adversarial"`` (every source that uses the model: gradient attacks and DGDE)."""
    from ...attacks import ATTACKS

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


def _source_name(first) -> str:
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
    import pandas as pd

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
            row = {"model": model, "grid_key": key, "attack": attack, "source": _source_name(first),
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
        names = {k: _source_name(g[g["grid_key"] == k].iloc[0]) for k, *_ in order}
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



def _matched_cells(g, sources, targets, cell):
    """Table cells of a matched-quality summary ``g``: one list per source, one cell per
    (metric, target) — ``cell(row, metric, target)``, or "" where the grid has no such point."""
    out = []
    for src, _kind in sources:
        cells = []
        for m, t in targets:
            hit = g[(g["source"] == src) & (g["metric"] == m) & (g["target"] == t)]
            cells.append("" if hit.empty else cell(hit.iloc[0], m, t))
        out.append(cells)
    return out

def figure_dice_vs_quality(reached, clean, metric: str, folder: Path) -> list[str]:
    """Dice (mean ± sd over the cases that reached each target) vs the input quality reached
    (mean), one line per perturbation source; adversarial solid with filled markers, natural MR
    artifacts dashed with open markers, random noise dotted; one row of WT/TC/ET panels per
    model; the clean Dice as a grey line. Higher quality (less degradation) on the left. Points
    of different sources are dodged horizontally by :data:`DODGE` per source so their error bars
    stay apart."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    wb = whitebox(reached[reached["match_metric"] == metric])
    if wb.empty:
        return []
    models = list(dict.fromkeys(wb["target"]))
    keys = dice_keys(wb)
    fig = Figure(figsize=(4.6 * len(keys), 3.8 * len(models)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(models), len(keys), squeeze=False)
    from matplotlib import colormaps

    colours = list(colormaps["tab10"].colors)
    cwb = whitebox(clean)
    for row, model in zip(axes, models):
        g = wb[wb["target"] == model]
        sources = list(dict.fromkeys(zip(g["attack"], g["params"])))
        for ax, r in zip(row, keys):
            base = cwb[(cwb["target"] == model) & (cwb["grid_key"] == NO_ATTACK)][f"dice_{r}"]
            if len(base):
                ax.axhline(float(base.mean()), color="0.5", lw=1, ls="-.", label="no attack")
            for i, (attack, params) in enumerate(sources):
                sub = g[(g["attack"] == attack) & (g["params"] == params)]
                pts = sub.groupby("match_target").agg(x=("match_achieved", "mean"), y=(f"dice_{r}", "mean"),
                                                      sd=(f"dice_{r}", "std")).sort_index(ascending=False)
                kind = source_kind(attack)
                ls, filled = KIND_STYLE[kind]
                c = colours[i % len(colours)]
                dodge = (i - (len(sources) - 1) / 2) * DODGE[metric]  # keeps the error bars apart
                ax.errorbar(pts["x"] + dodge, pts["y"], yerr=pts["sd"].fillna(0.0), ls=ls, color=c, capsize=3,
                            marker=MARKERS[i % len(MARKERS)], mfc=c if filled else "white", mec=c, ms=5,
                            elinewidth=1, label=f"{_source_name(sub.iloc[0])} · {_KIND_SHORT[kind]}")
            ax.set_title(f"Dice {key_name(r)}" + (f" · {model}" if len(models) > 1 else ""))
            ax.set_xlabel(f"{metric.upper()} of the perturbed input" + (" (dB)" if metric == "psnr" else ""))
            ax.set_ylim(-0.02, 1.02)
            ax.invert_xaxis()  # from mild (left) to severe (right), like Dice vs ε
            ax.grid(alpha=0.3)
        row[0].set_ylabel("Dice vs ground truth (mean ± sd)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside: no line hidden
    return _save(fig, folder, f"dice_vs_{metric}")


# --------------------------------------------------------------------------- figures


def _save(fig, folder: Path, stem: str) -> list[str]:
    names = []
    for fmt in ("png", "svg"):
        path = folder / f"{stem}.{fmt}"
        # no creation date / software stamp in the files: a re-run that changes nothing rewrites
        # identical figures (committed reports stay clean in git)
        # (and a fixed salt for the SVG element ids, random by default)
        meta = {"svg": {"Date": None, "Creator": None}, "png": {"Software": None}}.get(fmt)

        def write(f, fmt=fmt, meta=meta):
            import matplotlib

            with matplotlib.rc_context({"svg.hashsalt": "napari-medadv"}):
                fig.savefig(f, format=fmt, dpi=110, bbox_inches="tight", metadata=meta)

        atomic_write(path, write)
        names.append(f"figures/{path.name}")
    return names


def _figure(ncols: int, width: float = 4.2, height: float = 3.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _eps_series(wb, value: str):
    """(model, attack family label) -> (ε values, means, sds), ε = 0 from the no-attack rows."""
    series = {}
    for model, g in wb.groupby("target", sort=False):
        base = g[g["grid_key"] == NO_ATTACK][value]
        fixed = g[g["grid_key"] != NO_ATTACK]
        if "match_metric" in fixed:
            fixed = fixed[fixed["match_metric"].isna()]  # matched-quality points have their own curves
        for (attack, params), sub in fixed.groupby(["attack", "params"], sort=False):
            p = json.loads(params)
            if "eps" not in p:
                continue
            rest = {k: v for k, v in p.items() if k != "eps"}
            fam = sub.iloc[0]["attack_label"].split(" ε=")[0] + (
                "" if not rest else " " + " ".join(f"{k}={v}" for k, v in sorted(rest.items())))
            series.setdefault((model, fam), {0.0: base.to_numpy()})[float(p["eps"])] = sub[value].to_numpy()
    out = {}
    for key, d in series.items():
        xs = sorted(d)
        if len(xs) < 2:
            continue
        out[key] = (xs, [float(np.nanmean(d[x])) for x in xs],
                    [float(np.nanstd(d[x], ddof=1)) if len(d[x]) > 1 else 0.0 for x in xs])
    return out


def figure_dice_vs_eps(seg, folder: Path) -> list[str]:
    wb = whitebox(seg)
    keys = dice_keys(wb)
    fig, axes = _figure(len(keys))
    any_line = False
    for ax, r in zip(axes, keys):
        for i, ((model, fam), (xs, ms, sds)) in enumerate(_eps_series(wb, f"dice_{r}").items()):
            ax.errorbar(xs, ms, yerr=sds, marker=MARKERS[i % len(MARKERS)], capsize=3, label=f"{model} · {fam}")
            any_line = True
        ax.set_title(f"Dice {key_name(r)}")
        ax.set_xlabel("ε (fraction of intensity range)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Dice vs ground truth (mean ± sd)")
    if not any_line:
        return []
    axes[-1].legend(fontsize=7, loc="lower left")
    return _save(fig, folder, "dice_vs_eps")


def figure_history(hist, folder: Path, value: str, stem: str, ylabel: str) -> list[str]:
    if hist.empty or hist[value].isna().all():
        return []
    fig, axes = _figure(1, 6.0, 3.8)
    ax = axes[0]
    for i, ((src, key), g) in enumerate(hist.groupby(["source", "grid_key"], sort=False)):
        if g["steps"].isna().all() or g[value].isna().all():
            continue
        m = g.groupby("step")[value].mean()
        ax.plot(m.index, m.to_numpy(), marker=MARKERS[i % len(MARKERS)], ms=3,
                label=f"{src} · {g.iloc[0]['attack_label']}")
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, folder, stem)


def figure_k_vs_eps(cls, folder: Path) -> list[str]:
    wb = whitebox(cls)
    cols = [c for c in ("k1_acc", "k3_acc") if c in wb and wb[c].notna().any()]
    fig, axes = _figure(len(cols))
    any_line = False
    for ax, c in zip(axes, cols):
        for i, ((model, fam), (xs, ms, _)) in enumerate(_eps_series(wb, c).items()):
            ax.plot(xs, ms, marker=MARKERS[i % len(MARKERS)], label=f"{model} · {fam}")
            any_line = True
        ax.set_title(f"top-{c[1]} robust accuracy")
        ax.set_xlabel("ε (fraction of intensity range)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    if not any_line:
        return []
    axes[-1].legend(fontsize=7)
    return _save(fig, folder, "k_robust_accuracy_vs_eps")


# --------------------------------------------------------------------------- the report


def _csv(df, path: Path) -> None:
    atomic_write(path, lambda f: df.to_csv(f, index=False))


def _num(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return f"{v:.{digits}f}"


def _ms(m, sd, digits=3) -> str:
    if m is None or math.isnan(m):
        return "–"
    return _num(m, digits) if sd is None or math.isnan(sd) else f"{m:.{digits}f} ± {sd:.{digits}f}"


def build_report(out: str | Path) -> dict:
    """(Re)build every table, figure and the report of study folder ``out``; returns the paths."""
    out = Path(out)
    meta = json.loads((out / "study.json").read_text())
    cfg = meta["config"]
    df, hist = load_rows(out)
    files: dict[str, str] = {}
    figdir = out / "figures"
    figdir.mkdir(exist_ok=True)
    doc = Doc()
    title = cfg.get("title") or "Robustness study"
    doc.h(1, title)
    ds = meta["dataset"]
    n_done = df["case"].nunique() if not df.empty else 0
    doc.p(f"Dataset: `{ds['root']}` ({ds['kind']}, {n_done} of {ds['n_cases']} cases stored). {ds.get('note', '')}")
    doc.p("Models: " + ", ".join(f"`{m}` ({(c or '')[:19]})" for m, c in meta["models"].items())
          + ("; transfer: every adversarial image is also evaluated on every other model" if cfg.get("transfer") else ""))
    doc.p("Grid: " + ", ".join(f"`{k}`" for k in meta["grid"]) + f"; seed {cfg['seed']}; perturbation "
          + ("on the non-zero support of skull-stripped images" if cfg.get("roi") == "auto" else "everywhere") + ".")
    if meta.get("command"):
        doc.p("Reproduce with:")
        doc.code(meta["command"])
    if df.empty:
        doc.p("No case has finished yet.")
        return _write_doc(doc, out, title, files)
    _csv(df, out / "per_case.csv")
    files["per_case_csv"] = str(out / "per_case.csv")
    atomic_write(out / "per_case.parquet", lambda f: df.to_parquet(f, index=False))  # pyarrow is required
    files["per_case_parquet"] = str(out / "per_case.parquet")
    if not hist.empty:
        _csv(hist, out / "history.csv")
        files["history_csv"] = str(out / "history.csv")
    links = ["[per_case.csv](per_case.csv)"] + (["[per_case.parquet](per_case.parquet)"] if "per_case_parquet" in files
                                                 else []) + (["[history.csv](history.csv)"] if not hist.empty else [])
    all_tests: list[dict] = []
    seg = df[df["task"] == "segmentation"]
    cls = df[df["task"] == "classification"]
    if not seg.empty:
        import pandas as pd

        fixed, reached, matched = split_matched(seg)
        seg_ok = pd.concat([fixed, reached]) if not matched.empty else seg  # targets not reached left out
        tests = attack_tests(fixed)
        all_tests += tests
        summ = segmentation_summary(fixed, tests)
        _csv(summ, out / "summary_segmentation.csv")
        files["summary_segmentation"] = str(out / "summary_segmentation.csv")
        links.append("[summary_segmentation.csv](summary_segmentation.csv)")
        if matched.empty or (summ["grid_key"] != NO_ATTACK).any():  # else the matched section has it all
            _segmentation_section(doc, summ)
        if not matched.empty:
            all_tests += _matched_section(doc, out, fixed, reached, matched, figdir, files, links)
        seg = seg_ok
        base = cfg.get("baseline_model") or cfg["models"][0]
        mt = model_tests(seg, base)
        if mt:
            all_tests += mt
            mdf = pd.DataFrame(mt)
            _csv(mdf, out / "model_comparison.csv")
            files["model_comparison"] = str(out / "model_comparison.csv")
            links.append("[model_comparison.csv](model_comparison.csv)")
            doc.h(2, f"Models compared with `{base}` (Liu et al. 2021, Table 2)")
            doc.p(f"Each model attacked with its own gradients; Wilcoxon signed-rank test of its Dice vs "
                  f"`{base}`'s on the same cases under the same attack, Bonferroni-corrected over all "
                  f"{int(mdf.groupby('region')['p'].count().max())} model × attack comparisons of a region. "
                  "Δ = mean difference (model − baseline).")
            keys = _grid_order(whitebox(seg))
            for k in keys:
                rows = []
                label = whitebox(seg)[whitebox(seg)["grid_key"] == k].iloc[0]["attack_label"]
                bsub = whitebox(seg)[(whitebox(seg)["target"] == base) & (whitebox(seg)["grid_key"] == k)]
                dk = dice_keys(whitebox(seg))
                rows.append([base + " (baseline)"] + [S.fmt_mean_sd(bsub[f"dice_{x}"]) for x in dk] + [""] * len(dk))
                for m in [m for m in dict.fromkeys(whitebox(seg)["target"]) if m != base]:
                    sub = whitebox(seg)[(whitebox(seg)["target"] == m) & (whitebox(seg)["grid_key"] == k)]
                    cells, ps = [], []
                    for x in dk:
                        t = next((t for t in mt if t["model"] == m and t["grid_key"] == k and t["region"] == x), None)
                        cells.append(S.fmt_mean_sd(sub[f"dice_{x}"]) + (t["stars"] if t else ""))
                        ps.append("–" if t is None else f"Δ {t['mean'] - t['reference_mean']:+.3f}, p={S.fmt_p(t['p'])}, "
                                                        f"adj {S.fmt_p(t['p_adj'])}")
                    rows.append([m] + cells + ps)
                doc.table(["model"] + [f"Dice {key_name(x)}" for x in dk] + [f"{key_name(x)} vs baseline" for x in dk],
                          rows, caption=label)
        figs = figure_dice_vs_eps(seg, figdir)
        figs_it = figure_history(hist[hist["source"].isin(set(seg["source"]))] if not hist.empty else hist, figdir,
                                 "dice_fg", "dice_vs_iterations", "Dice (foreground: whole tumour for BraTS) vs reference")
        figs_ps = figure_history(hist[hist["source"].isin(set(seg["source"]))] if not hist.empty else hist, figdir,
                                 "psnr", "psnr_vs_iterations", "PSNR of the iterate (dB)")
        if figs or figs_it or figs_ps:
            doc.h(2, "Curves")
        for names, alt in ((figs, "Dice vs ε"), (figs_it, "Dice vs iterations"), (figs_ps, "PSNR vs iterations")):
            if names:
                doc.img(names[0], alt)
                doc.p(f"{alt}: [PNG]({names[0]}), [SVG]({names[1]})")
                files[alt] = str(out / names[0])
        for k, mat in transfer_matrices(seg, "dice_WT").items():
            _transfer_section(doc, out, mat, k, "Dice WT", files, links)
    if not cls.empty:
        names = meta["dataset"].get("class_names") or []
        summ = classification_summary(cls, names)
        _csv(summ, out / "summary_classification.csv")
        files["summary_classification"] = str(out / "summary_classification.csv")
        links.append("[summary_classification.csv](summary_classification.csv)")
        doc.h(2, "Classifiers under attack (Ghamizi et al. 2023, Table 5)")
        doc.p("k-robust accuracy: |top-k(adversarial) ∩ top-k(ground truth)| / k, mean over cases (Ghamizi "
              "definitions 1-2). AUC of the adversarial probabilities vs the labels (mean over classes). MSE and "
              "BCE between adversarial and clean probabilities. RISK = M(x*) · C(ŷ*) with C the inverse label "
              "co-occurrence matrix of this dataset's labels. Success rate: top-1 class changed.")
        has3 = "k3_robust_accuracy" in summ
        rows = [[r["model"], r["attack"], r["n"], _num(r["k1_robust_accuracy"])]
                + ([_num(r["k3_robust_accuracy"])] if has3 else [])
                + [_num(r["auc"]), _num(r["mse"], 4), _num(r["bce"], 4), _num(r["risk"]), _num(r["success_rate"])]
                for _, r in summ.iterrows()]
        doc.table(["model", "attack", "n", "top-1 k-robust acc"] + (["top-3 k-robust acc"] if has3 else [])
                  + ["AUC", "MSE", "BCE", "RISK", "success rate"], rows)
        if not has3:
            doc.p("Top-3 robust accuracy needs at least 3 classes; these models have fewer.")
        figs = figure_k_vs_eps(cls, figdir)
        if figs:
            doc.img(figs[0], "k-robust accuracy vs ε")
            files["k vs eps"] = str(out / figs[0])
        for k, mat in transfer_matrices(cls, "k1_acc").items():
            _transfer_section(doc, out, mat, k, "top-1 robust accuracy", files, links)
    if all_tests:
        import pandas as pd

        _csv(pd.DataFrame(all_tests), out / "stats.csv")
        files["stats"] = str(out / "stats.csv")
        links.append("[stats.csv](stats.csv)")
    doc.h(2, "Data")
    doc.p("Tables: " + ", ".join(links) + ". Per-case raw results: `cases/*.json` (one file per case, "
          "written when the case finished).")
    return _write_doc(doc, out, title, files)


def _segmentation_section(doc: Doc, summ) -> None:
    """Liu Table 1: one table per model (white box), fixed-parameter grid points."""
    doc.h(2, "Segmentation under attack (Liu et al. 2021, Table 1)")
    doc.p("Dice vs ground truth, mean ± sd over cases, for each model attacked with its own gradients "
          "(white box). Stars: Wilcoxon signed-rank test vs no attack, paired by case, Bonferroni-corrected "
          "over the attack conditions of each model and region (* p<0.05, ** p<0.01, *** p<0.001). "
          "PSNR/SSIM/RMSE compare the attacked input with the clean one, each channel on its own range "
          "(PSNR from the channels' mean normalised MSE; SSIM and RMSE: mean over channels).")
    for model, g in summ.groupby("model", sort=False):
        rows = []
        dk = dice_keys(g)
        for _, r in g.iterrows():
            rows.append([r["attack"], r["n"]]
                        + [_ms(r[f"dice_{x}_mean"], r[f"dice_{x}_sd"]) + r[f"stars_{x}"] for x in dk]
                        + [S.fmt_p(r[f"p_adj_{x}"]) for x in dk]
                        + [_ms(r["psnr_mean"], r["psnr_sd"], 2) if r["grid_key"] != NO_ATTACK else "∞",
                           _ms(r["ssim_mean"], r["ssim_sd"], 4), _ms(r["rmse_mean"], r["rmse_sd"], 4)])
        doc.table(["attack", "n"] + [f"Dice {key_name(x)}" for x in dk] + [f"p adj {key_name(x)}" for x in dk]
                  + ["PSNR dB", "SSIM", "RMSE"], rows, caption=f"model {model}")


def _matched_section(doc: Doc, out: Path, fixed, reached, matched, figdir: Path, files: dict,
                     links: list) -> list[dict]:
    """Dice at matched image quality: curves, per-source tables with tests vs no attack, and
    adversarial vs other sources at equal quality. Returns the tests for ``stats.csv``."""
    import pandas as pd

    clean = fixed[fixed["grid_key"] == NO_ATTACK]
    tests = attack_tests(pd.concat([clean, reached]), comparison="matched quality vs no attack")
    summ = matched_summary(matched, reached, tests)
    _csv(summ, out / "summary_matched_quality.csv")
    files["summary_matched_quality"] = str(out / "summary_matched_quality.csv")
    links.append("[summary_matched_quality.csv](summary_matched_quality.csv)")
    comp = matched_comparison_tests(reached)
    if comp:
        _csv(pd.DataFrame(comp), out / "comparison_matched_quality.csv")
        files["comparison_matched_quality"] = str(out / "comparison_matched_quality.csv")
        links.append("[comparison_matched_quality.csv](comparison_matched_quality.csv)")
    metrics = list(dict.fromkeys(summ["metric"]))
    doc.h(2, "Adversarial attacks and natural MR artifacts at matched image quality")
    doc.p("Each perturbation source is set, per case, to the knob value (ε of an attack, severity of an MR "
          "artifact) that brings the input to the target " + " / ".join(m.upper() for m in metrics)
          + " (over the channels, each on its own range: PSNR from their mean normalised MSE, SSIM their mean), found by a bracketing + Brent search "
          "(`napari_medadv.core.matching`). Only the cases where the target was reached within the tolerance "
          "enter the means and tests; *reached* counts them (a source whose strongest setting stays above "
          "the target gives its closest value, shown in brackets). Adversarial sources: solid lines, filled "
          "markers; natural MR artifacts (torchio): dashed, open markers.")
    for metric in metrics:
        names = figure_dice_vs_quality(reached, clean, metric, figdir)
        if names:
            doc.img(names[0], f"Dice vs {metric.upper()}")
            doc.p(f"Dice vs {metric.upper()} (mean ± sd over the cases that reached each target; x = "
                  f"{metric.upper()} reached, mean, sources dodged by {DODGE[metric]:g} for legibility): "
                  f"[PNG]({names[0]}), [SVG]({names[1]})")
            files[f"Dice vs {metric.upper()}"] = str(out / names[0])
    cwb = whitebox(clean)
    for model, g in summ.groupby("model", sort=False):
        base = cwb[cwb["target"] == model]
        targets = list(dict.fromkeys(zip(g["metric"], g["target"])))
        sources = list(dict.fromkeys(zip(g["source"], g["kind"])))
        head = [f"{m.upper()} {t:g}" + (" dB" if m == "psnr" else "") for m, t in targets]
        for r in dice_keys(g):
            fam = max((t["m"] for t in tests if t["model"] == model and t["region"] == r), default=0)
            def dice_cell(x, m, t, r=r):
                if x["n_reached"] == 0:
                    return "not reached"
                return (_ms(x[f"dice_{r}_mean"], x[f"dice_{r}_sd"]) + x[f"stars_{r}"]
                        + ("" if x["n_reached"] == x["n"] else f" ({x['n_reached']}/{x['n']})"))

            rows = [[src, SOURCE_KINDS[kind]] + cells for (src, kind), cells in
                    zip(sources, _matched_cells(g, sources, targets, dice_cell))]
            doc.table(["source", "type"] + head, rows,
                      caption=f"model {model}: Dice {key_name(r)}, mean ± sd (no attack: {S.fmt_mean_sd(base[f'dice_{r}'])}); "
                              f"stars: Wilcoxon vs no attack, Bonferroni over the {fam} matched conditions with cases; "
                              "(k/n): only k of the n cases reached the target")
        def knob_cell(x, m, t):
            digits = 2 if m == "psnr" else 4
            if x["n_reached"] == 0:
                return f"0/{x['n']} (closest {_num(x['unreached_achieved_mean'], digits)})"
            more = "" if x["n_reached"] == x["n"] else f" (others {_num(x['unreached_achieved_mean'], digits)})"
            return (f"{x['n_reached']}/{x['n']} · {'ε' if x['knob'] == 'eps' else x['knob']} "
                    f"{_ms(x['knob_mean'], x['knob_sd'], 3)} · {_num(x['achieved_mean'], digits)}{more}")

        rows = [[src] + cells for (src, _), cells in zip(sources, _matched_cells(g, sources, targets, knob_cell))]
        doc.table(["source"] + head, rows,
                  caption=f"model {model}: reached / cases · knob found (mean ± sd) · quality reached (mean)")
    if comp:
        cdf = pd.DataFrame(comp)
        doc.h(3, "Adversarial vs the other sources at equal image quality")
        doc.p("Wilcoxon signed-rank test of Dice under each adversarial source vs each natural (or random) "
              "source at the same target, paired by case over the cases where both reached it; "
              "Bonferroni-corrected over the "
              f"{int(cdf.groupby(['model', 'region'])['p'].count().max())} comparisons of a model and region. "
              "Δ = mean Dice (adversarial − other); negative: the attack costs more Dice at the same image "
              "quality.")
        for (model, src), g in cdf.groupby(["model", "source"], sort=False):
            targets = list(dict.fromkeys(zip(g["metric"], g["target"])))
            head = [f"{m.upper()} {t:g}" + (" dB" if m == "psnr" else "") for m, t in targets]
            for r in dict.fromkeys(g["region"]):
                rows = []
                for other in dict.fromkeys(g["reference_source"]):
                    cells = []
                    for m, t in targets:
                        hit = g[(g["reference_source"] == other) & (g["metric"] == m) & (g["target"] == t)
                                & (g["region"] == r)]
                        if hit.empty or hit.iloc[0]["n"] == 0:
                            cells.append("–")
                            continue
                        x = hit.iloc[0]
                        cells.append(f"Δ {x['mean'] - x['reference_mean']:+.3f}{x['stars']} "
                                     f"(adj p {S.fmt_p(x['p_adj'])}, n={x['n']})")
                    rows.append([other] + cells)
                doc.table([f"{src} vs"] + head, rows, caption=f"model {model}: Dice {key_name(r)}")
    return tests + comp


def _transfer_section(doc: Doc, out: Path, mat, key: str, what: str, files: dict, links: list):
    stem = "transfer_" + "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    atomic_write(out / f"{stem}.csv", lambda f: mat.to_csv(f))
    files[stem] = str(out / f"{stem}.csv")
    links.append(f"[{stem}.csv]({stem}.csv)")
    doc.h(3, f"Transfer matrix, {key} (Ghamizi et al. 2023, Table 2)")
    doc.p(f"{what} (mean over cases): rows = source model (the attack's gradients), columns = target model.")
    doc.table(["source \\ target"] + [str(c) for c in mat.columns],
              [[str(i)] + [_num(v) for v in row] for i, row in zip(mat.index, mat.to_numpy())])


def _write_doc(doc: Doc, out: Path, title: str, files: dict) -> dict:
    md, page = doc.markdown(), doc.html(title)
    atomic_write(out / "report.md", lambda f: Path(f).write_text(md))
    atomic_write(out / "report.html", lambda f: Path(f).write_text(page))
    files["report_md"] = str(out / "report.md")
    files["report_html"] = str(out / "report.html")
    return files
