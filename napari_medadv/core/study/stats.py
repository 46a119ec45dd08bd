"""Statistics for robustness studies: paired Wilcoxon signed-rank tests (scipy), Bonferroni
correction, significance stars, mean ± sd, AUC.

Conventions (as in Liu et al. 2021, Tables 1-3):

* tests are *paired by case*: the same case's Dice under attack vs without attack (or defended
  vs undefended model under the same attack) — ``scipy.stats.wilcoxon(x, y)``, two-sided,
  zero differences dropped (scipy's default ``zero_method="wilcox"``);
* when every paired difference is zero there is nothing to rank: the p-value is reported as 1.0
  (no evidence of a difference) instead of scipy's warning/NaN;
* Bonferroni: ``p_adj = min(1, p · m)`` with m the number of tests in the family (computed by hand:
  it is one multiplication; the family is stated next to every table);
* stars on the *adjusted* p-value: ``*`` < 0.05, ``**`` < 0.01, ``***`` < 0.001 (Liu print one
  star for p < 0.05; the extra levels only add resolution);
* standard deviations are sample standard deviations (``ddof=1``), as tables of means ± sd report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

STAR_LEVELS = ((0.001, "***"), (0.01, "**"), (0.05, "*"))


def wilcoxon_paired(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, int]:
    """Two-sided Wilcoxon signed-rank test of paired samples: ``(statistic, p, n_pairs)``.

    Pairs where either value is NaN are dropped. ``(nan, nan, 0)`` when no pair is left;
    ``(0.0, 1.0, n)`` when all differences are 0 (nothing to rank).
    """
    from scipy.stats import wilcoxon  # deferred: scipy.stats takes ~0.5 s to import; only the report tests

    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    if n == 0:
        return math.nan, math.nan, 0
    if np.all(a - b == 0):
        return 0.0, 1.0, n
    res = wilcoxon(a, b)
    return float(res.statistic), float(res.pvalue), n


def bonferroni(pvalues: Sequence[float], m: int | None = None) -> list[float]:
    """``min(1, p · m)``, m defaulting to the number of (non-NaN) p-values given."""
    ps = [float(p) for p in pvalues]
    if m is None:
        m = sum(1 for p in ps if not math.isnan(p))
    return [p if math.isnan(p) else min(1.0, p * max(m, 1)) for p in ps]


def stars(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return ""
    for level, mark in STAR_LEVELS:
        if p < level:
            return mark
    return ""


def mean_sd(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample sd (ddof=1; NaN for one value) and count of the finite values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, 0
    sd = float(v.std(ddof=1)) if v.size > 1 else math.nan
    return float(v.mean()), sd, int(v.size)


def fmt_mean_sd(values: Sequence[float], digits: int = 3) -> str:
    m, s, n = mean_sd(values)
    if n == 0:
        return "–"
    if math.isnan(s):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def fmt_p(p: float) -> str:
    if p is None or math.isnan(p):
        return "–"
    if p >= 0.001:
        return f"{p:.4f}"
    return f"{p:.3e}"


def auc(scores: Sequence[float], labels: Sequence[float]) -> float:
    """Area under the ROC curve = Mann-Whitney U / (n_pos · n_neg) (scipy); NaN if one class is absent."""
    from scipy.stats import mannwhitneyu  # deferred, as in wilcoxon_paired

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels) > 0.5
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        return math.nan
    return float(mannwhitneyu(pos, neg).statistic / (pos.size * neg.size))
