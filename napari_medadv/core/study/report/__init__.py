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
  MSE/BCE (vs the clean prediction), MLACC (per-label thresholds), RISK (logits; probabilities),
  success rate;
* ``summary_dgde.csv`` — DGDE 2024 Table 2: success rate and changed pixels (max, min, mean, sd,
  median, % of the image) over the successful cases, with ``figures/dgde_l0_vs_iteration.*`` and
  ``figures/dgde_probability_vs_iteration.*`` (its Figs. 3-4);
* ``summary_matched_quality.csv`` — matched image quality: Dice per perturbation source
  (adversarial or natural MR artifact) × target PSNR/SSIM, the knob found, the quality reached,
  Wilcoxon vs no attack (Bonferroni, stars); ``comparison_matched_quality.csv`` — each
  adversarial source vs each other source at the same target (Wilcoxon, Bonferroni);
* ``transfer_*.csv`` — source → target matrices (Ghamizi Table 2; classifiers at k = 1 and, ``*_k3.csv``, k = 3);
* ``stats.csv`` — every test (statistic, p, adjusted p, family size);
* ``figures/*.png|svg`` — Dice vs ε, Dice vs PSNR/SSIM at matched quality (one line per source,
  adversarial solid, natural dashed), Dice vs iterations, PSNR vs iterations, k-robust accuracy vs ε;
* ``report.md`` and ``report.html`` linking them.

``tables`` computes the tables and tests, ``figures`` draws, ``document`` renders the sections;
:func:`build_report` puts them together in the report's order.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ...files import atomic_write
from ..store import NO_ATTACK, load_failures, load_rows
from .document import (
    failed_section,
    Doc,
    classification_section,
    curves_section,
    dgde_section,
    header_section,
    matched_section,
    model_section,
    segmentation_section,
    transfer_section,
    write_csv,
    write_doc,
)
from ...errors import MedadvError
from ..config import StudyConfig
from ..robustness import add_dice_auc, load_sanity
from .robustness import auc_section, breaking_section, sanity_section
from .tables import attack_tests, model_tests, segmentation_summary, split_matched, transfer_matrices

__all__ = ["build_report"]


def build_report(out: str | Path) -> dict:
    """(Re)build every table, figure and the report of study folder ``out``; returns the paths."""
    out = Path(out)
    meta = json.loads((out / "study.json").read_text())
    cfg = meta["config"]
    df, hist = load_rows(out)
    df = add_dice_auc(df)
    files: dict[str, str] = {}
    figdir = out / "figures"
    figdir.mkdir(exist_ok=True)
    doc = Doc()
    title = cfg.get("title") or "Robustness study"
    header_section(doc, title, meta, df)
    failures = load_failures(out)
    if failures:
        failed_section(doc, failures)
    if df.empty:
        doc.p("No case has finished yet.")
        return write_doc(doc, out, title, files)
    links = _write_rows(out, df, hist, files)
    all_tests: list[dict] = []
    seg = df[df["task"] == "segmentation"]
    cls = df[df["task"] == "classification"]
    if not seg.empty:
        all_tests += _segmentation_part(doc, out, seg, hist, cfg, figdir, files, links)
    if not cls.empty:
        classification_section(doc, out, cls, meta["dataset"].get("class_names") or [], figdir, files, links,
                               meta["dataset"].get("cooccurrence_source"))
    dgde_section(doc, out, df, hist, figdir, files, links)
    _robustness_part(doc, out, df, cfg, files, links)
    if all_tests:
        write_csv(pd.DataFrame(all_tests), out / "stats.csv")
        files["stats"] = str(out / "stats.csv")
        links.append("[stats.csv](stats.csv)")
    doc.h(2, "Data")
    doc.p("Tables: " + ", ".join(links) + ". Per-case raw results: `cases/*.json` (one file per case, "
          "written when the case finished).")
    return write_doc(doc, out, title, files)


def _robustness_part(doc: Doc, out: Path, df, cfg: dict, files: dict, links: list) -> None:
    """Breaks at ε, Dice-vs-ε AUC and the evaluation sanity checks (issue 14), where the study has them."""
    breaking = None
    if cfg.get("breaking_eps") not in (None, False):
        try:
            breaking = StudyConfig(**cfg).breaking()
        except (TypeError, MedadvError):  # a study.json from another version: the table still shows
            breaking = None
    breaking_section(doc, out, df, breaking, files, links)
    auc_section(doc, out, df, files, links)
    stored = load_sanity(out)
    if stored:
        sanity = cfg.get("sanity") if isinstance(cfg.get("sanity"), dict) else {}
        sanity_section(doc, out, stored, sanity, files, links)


def _write_rows(out: Path, df, hist, files: dict) -> list[str]:
    """``per_case.csv``/``.parquet`` and ``history.csv``; returns their links for the Data section."""
    write_csv(df, out / "per_case.csv")
    files["per_case_csv"] = str(out / "per_case.csv")
    atomic_write(out / "per_case.parquet", lambda f: df.to_parquet(f, index=False))  # pyarrow is required
    files["per_case_parquet"] = str(out / "per_case.parquet")
    if not hist.empty:
        write_csv(hist, out / "history.csv")
        files["history_csv"] = str(out / "history.csv")
    return ["[per_case.csv](per_case.csv)"] + (["[per_case.parquet](per_case.parquet)"] if "per_case_parquet" in files
                                               else []) + (["[history.csv](history.csv)"] if not hist.empty else [])


def _segmentation_part(doc: Doc, out: Path, seg, hist, cfg: dict, figdir: Path, files: dict,
                       links: list) -> list[dict]:
    """The segmentation sections: Liu Table 1, matched image quality, models vs the baseline
    (Liu Table 2), curves and transfer matrices. Returns their tests for ``stats.csv``."""
    all_tests: list[dict] = []
    fixed, reached, matched = split_matched(seg)
    seg_ok = pd.concat([fixed, reached]) if not matched.empty else seg  # targets not reached left out
    tests = attack_tests(fixed)
    all_tests += tests
    summ = segmentation_summary(fixed, tests)
    write_csv(summ, out / "summary_segmentation.csv")
    files["summary_segmentation"] = str(out / "summary_segmentation.csv")
    links.append("[summary_segmentation.csv](summary_segmentation.csv)")
    if matched.empty or (summ["grid_key"] != NO_ATTACK).any():  # else the matched section has it all
        segmentation_section(doc, summ)
    if not matched.empty:
        all_tests += matched_section(doc, out, fixed, reached, matched, figdir, files, links)
    seg = seg_ok
    base = cfg.get("baseline_model") or cfg["models"][0]
    mt = model_tests(seg, base)
    if mt:
        all_tests += mt
        mdf = pd.DataFrame(mt)
        write_csv(mdf, out / "model_comparison.csv")
        files["model_comparison"] = str(out / "model_comparison.csv")
        links.append("[model_comparison.csv](model_comparison.csv)")
        model_section(doc, seg, base, mt, int(mdf.groupby("region")["p"].count().max()))
    curves_section(doc, out, seg, hist, figdir, files)
    for k, mat in transfer_matrices(seg, "dice_WT").items():
        transfer_section(doc, out, mat, k, "Dice WT", files, links)
    return all_tests
