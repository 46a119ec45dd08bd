"""The report as a document: :class:`Doc` (renders the same calls to Markdown and to HTML), number
formatting, and the report's sections — each adds its headings, paragraphs and tables to a
:class:`Doc` and writes the CSVs and figures it links."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import pandas as pd

from ...files import atomic_write
from .. import stats as S
from ..store import NO_ATTACK, safe_name
from .figures import (
    DODGE,
    figure_dgde_history,
    figure_dice_vs_eps,
    figure_dice_vs_quality,
    figure_history,
    figure_k_vs_eps,
)
from .tables import (
    SOURCE_KINDS,
    attack_tests,
    classification_summary,
    dgde_summary,
    dice_keys,
    grid_order,
    key_name,
    matched_comparison_tests,
    matched_summary,
    transfer_matrices,
    whitebox,
)


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
    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    return re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r"<a href='\2'>\1</a>", t)


# --------------------------------------------------------------------------- formatting


def write_csv(df, path: Path) -> None:
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


# --------------------------------------------------------------------------- sections


def header_section(doc: Doc, title: str, meta: dict, df) -> None:
    """Title, dataset, models, grid and the command that reproduces the study."""
    cfg = meta["config"]
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


def failed_section(doc: Doc, failures: list[dict]) -> None:
    """The cases that raised on every try: left out of every table below (a re-run tries them again)."""
    doc.h(2, "Failed cases")
    doc.p(f"{len(failures)} case(s) raised an error on every try and are left out of every table below; "
          "re-running the same command tries them again.")
    doc.table(["case", "error", "tries"],
              [[f["case"], f["error"], "" if f.get("tries") is None else str(f["tries"])] for f in failures])


def model_section(doc: Doc, seg, base: str, mt: list[dict], n_tests: int) -> None:
    """Liu Table 2: each model vs the baseline model ``base`` under the same attack, one table per
    grid point (``mt``: :func:`~.tables.model_tests`; ``n_tests``: the largest family's size)."""
    doc.h(2, f"Models compared with `{base}` (Liu et al. 2021, Table 2)")
    doc.p(f"Each model attacked with its own gradients; Wilcoxon signed-rank test of its Dice vs "
          f"`{base}`'s on the same cases under the same attack, Bonferroni-corrected over all "
          f"{n_tests} model × attack comparisons of a region. "
          "Δ = mean difference (model − baseline).")
    keys = grid_order(whitebox(seg))
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


def curves_section(doc: Doc, out: Path, seg, hist, figdir: Path, files: dict) -> None:
    """Dice vs ε, Dice vs iterations and PSNR vs iterations of the segmentation rows."""
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


def classification_section(doc: Doc, out: Path, cls, class_names: list[str], figdir: Path, files: dict,
                           links: list, cooccurrence_source: str | None = None) -> None:
    """Ghamizi Table 5 (k-robust accuracy, AUC, MSE/BCE, RISK, success rate), the k-robust
    accuracy vs ε figure and the transfer matrices of the classifier rows."""
    summ = classification_summary(cls, class_names)
    write_csv(summ, out / "summary_classification.csv")
    files["summary_classification"] = str(out / "summary_classification.csv")
    links.append("[summary_classification.csv](summary_classification.csv)")
    doc.h(2, "Classifiers under attack (Ghamizi et al. 2023, Table 5)")
    doc.p("k-robust accuracy: |top-k(adversarial) ∩ top-k(ground truth)| / k, mean over cases (Ghamizi "
          "definitions 1-2; labels tied in the binary ground truth are matched with the prediction where they "
          "can be, so k = 1 is the standard top-1 accuracy). AUC of the adversarial probabilities vs the labels "
          "(mean over classes). MSE and BCE between adversarial and clean probabilities. MLACC: fraction of "
          "labels where the thresholded adversarial prediction agrees with the labels, one threshold per label "
          "(Youden's J of each model's clean predictions on these cases, as Cohen et al. calibrate; no training "
          "predictions are at hand). RISK = M(x*) · C(ŷ*) from the logits as in the paper, and from the "
          f"probabilities; C: the inverse label co-occurrence matrix of {cooccurrence_source or 'no labels'}. "
          "Success rate: top-1 class changed.")
    has3 = "k3_robust_accuracy" in summ
    rows = [[r["model"], r["attack"], r["n"], _num(r["k1_robust_accuracy"])]
            + ([_num(r["k3_robust_accuracy"])] if has3 else [])
            + [_num(r["auc"]), _num(r["mse"], 4), _num(r["bce"], 4), _num(r.get("mlacc")), _num(r["risk"]),
               _num(r.get("risk_prob")), _num(r["success_rate"])]
            for _, r in summ.iterrows()]
    doc.table(["model", "attack", "n", "top-1 k-robust acc"] + (["top-3 k-robust acc"] if has3 else [])
              + ["AUC", "MSE", "BCE", "MLACC", "RISK (logits)", "RISK (probabilities)", "success rate"], rows)
    if not has3:
        doc.p("Top-3 robust accuracy needs at least 3 classes; these models have fewer.")
    figs = figure_k_vs_eps(cls, figdir)
    if figs:
        doc.img(figs[0], "k-robust accuracy vs ε")
        files["k vs eps"] = str(out / figs[0])
    for k, mat in transfer_matrices(cls, "k1_acc").items():
        transfer_section(doc, out, mat, k, "top-1 robust accuracy (k = 1)", files, links)
    if has3:
        for k, mat in transfer_matrices(cls, "k3_acc").items():
            transfer_section(doc, out, mat, k, "top-3 robust accuracy (k = 3)", files, links, suffix="_k3")


def dgde_section(doc: Doc, out: Path, df, hist, figdir: Path, files: dict, links: list) -> None:
    """DGDE 2024: Table 2 (success rate and changed pixels over the successes) and Figs. 3-4."""
    summ = dgde_summary(df)
    if summ.empty:
        return
    write_csv(summ, out / "summary_dgde.csv")
    files["summary_dgde"] = str(out / "summary_dgde.csv")
    links.append("[summary_dgde.csv](summary_dgde.csv)")
    doc.h(2, "Minimal-pixel attack (DGDE 2024, Table 2)")
    doc.p("Success: the attacked finding's probability crossed 0.5 (segmentation: Dice below the threshold). "
          "Changed pixels (L0) over the successful cases only — a failure has no L0 and is never counted as "
          "0 pixels; % of image: L0 / pixels of the image, mean over the successes.")
    rows = [[r["model"], r["attack"], r["n"], _num(r["success_rate"]), _num(r["l0_max"], 0), _num(r["l0_min"], 0),
             _num(r["l0_mean"], 1), _num(r["l0_sd"], 1), _num(r["l0_median"], 1), _num(r["l0_percent_mean"], 4)]
            for _, r in summ.iterrows()]
    doc.table(["model", "attack", "n", "success rate", "L0 max", "L0 min", "L0 mean", "L0 sd", "L0 median",
               "% of image"], rows)
    figs = figure_dgde_history(hist, figdir)
    for col, alt in (("l0", "DGDE: changed pixels vs iteration (Fig. 3)"),
                     ("probability", "DGDE: attacked-class probability vs iteration (Fig. 4)")):
        if figs.get(col):
            doc.img(figs[col][0], alt)
            doc.p(f"{alt}: [PNG]({figs[col][0]}), [SVG]({figs[col][1]})")
            files[alt] = str(out / figs[col][0])


def segmentation_section(doc: Doc, summ) -> None:
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


def matched_section(doc: Doc, out: Path, fixed, reached, matched, figdir: Path, files: dict,
                    links: list) -> list[dict]:
    """Dice at matched image quality: curves, per-source tables with tests vs no attack, and
    adversarial vs other sources at equal quality. Returns the tests for ``stats.csv``."""
    clean = fixed[fixed["grid_key"] == NO_ATTACK]
    tests = attack_tests(pd.concat([clean, reached]), comparison="matched quality vs no attack")
    summ = matched_summary(matched, reached, tests)
    write_csv(summ, out / "summary_matched_quality.csv")
    files["summary_matched_quality"] = str(out / "summary_matched_quality.csv")
    links.append("[summary_matched_quality.csv](summary_matched_quality.csv)")
    comp = matched_comparison_tests(reached)
    if comp:
        write_csv(pd.DataFrame(comp), out / "comparison_matched_quality.csv")
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
        _comparison_tables(doc, pd.DataFrame(comp))
    return tests + comp


def _comparison_tables(doc: Doc, cdf) -> None:
    """Adversarial vs each other source at the same matched target (``cdf``: the tests of
    :func:`~.tables.matched_comparison_tests`): one table per model, source and region."""
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


def transfer_section(doc: Doc, out: Path, mat, key: str, what: str, files: dict, links: list, suffix: str = ""):
    """A source × target transfer matrix (Ghamizi Table 2) as a CSV and a table."""
    stem = "transfer_" + safe_name(key) + suffix
    atomic_write(out / f"{stem}.csv", lambda f: mat.to_csv(f))
    files[stem] = str(out / f"{stem}.csv")
    links.append(f"[{stem}.csv]({stem}.csv)")
    doc.h(3, f"Transfer matrix, {key}{' (k = 3)' if suffix == '_k3' else ''} (Ghamizi et al. 2023, Table 2)")
    doc.p(f"{what} (mean over cases): rows = source model (the attack's gradients), columns = target model.")
    doc.table(["source \\ target"] + [str(c) for c in mat.columns],
              [[str(i)] + [_num(v) for v in row] for i, row in zip(mat.index, mat.to_numpy())])


def write_doc(doc: Doc, out: Path, title: str, files: dict) -> dict:
    """Write ``report.md`` and ``report.html``; adds them to ``files`` and returns it."""
    md, page = doc.markdown(), doc.html(title)
    atomic_write(out / "report.md", lambda f: Path(f).write_text(md))
    atomic_write(out / "report.html", lambda f: Path(f).write_text(page))
    files["report_md"] = str(out / "report.md")
    files["report_html"] = str(out / "report.html")
    return files
