"""The report of a reader study (``medadv reader-report reader_study.csv``): detection accuracy
per source × target PSNR with Wilson 95 % intervals, the PSNR at which readers detect each
source 75 % of the time, a table, a summary CSV and a figure.

* Wilson score interval: ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``
  (statsmodels' ``proportion_confint(method="wilson")`` gives the same numbers; statsmodels
  is not a dependency of this project).
* 75 % detection PSNR: the psychometric function
  ``P(correct | psnr) = chance + (1 - chance) · σ(a + b · psnr)`` fitted by maximum likelihood
  to the individual trials of a source (x = the PSNR each trial's image reached).
  Both designs are balanced, so a guessing reader scores ``chance = 0.5``, and 75 % is then the
  curve's midpoint, ``psnr_75 = -a / b`` — the usual 2AFC threshold. ``chance=0`` is plain
  logistic regression. The fit is hand-written (``scipy.optimize.minimize`` on the
  log-likelihood) because scipy has no logistic regression with a guess rate and statsmodels is
  not installed; ``tests/core/test_reader_report.py`` checks it against scikit-learn's logistic
  regression at ``chance=0`` and on data drawn from a known curve. The PSNR is ``None`` when
  the fitted curve does not cross 75 % inside the tested PSNR range, or when accuracy does not
  fall as PSNR rises.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import InputFileError
from ..files import atomic_write
from .log import COLUMNS, CONFIDENCE
from .trials import ALTERED, ORIGINAL

LEVEL = 0.75
CHANCE = 0.5
_ANSWERS = ("left", "right", ALTERED, ORIGINAL)


@dataclass
class CellSummary:
    source: str
    target_psnr: float
    n: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    mean_psnr: float
    mean_confidence: float
    mean_seconds: float


@dataclass
class Threshold:
    source: str
    psnr_75: float | None
    a: float
    b: float
    n: int
    psnr_range: tuple[float, float]
    note: str = ""


# --------------------------------------------------------------------------- reading


def read_results(path: str | Path) -> list[dict]:
    """The rows of a ``reader_study.csv``, typed; :class:`InputFileError` naming the file and
    the first problem (missing file, other columns, a bad value with its line number)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(path, f"cannot read it ({exc.__class__.__name__}: {exc})") from None
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None:
        raise InputFileError(path, "empty file: no header row")
    if tuple(c.strip() for c in reader.fieldnames) != COLUMNS:
        raise InputFileError(path, f"columns must be exactly {', '.join(COLUMNS)}; got "
                                   f"{', '.join(reader.fieldnames)}")
    rows = []
    for line, raw in enumerate(reader, start=2):
        try:
            rows.append(_typed(raw))
        except (TypeError, ValueError) as exc:
            raise InputFileError(path, f"line {line}: {exc}") from None
    if not rows:
        raise InputFileError(path, "no answered trials")
    return rows


def _typed(raw: dict) -> dict:
    if None in raw or any(v is None for v in raw.values()):
        raise ValueError("wrong number of fields")
    r = {k.strip(): v.strip() for k, v in raw.items()}
    out = {"trial": int(r["trial"]), "case": r["case"], "source": r["source"]}
    for k in ("target_psnr", "psnr", "seconds"):
        v = float(r[k])
        if not math.isfinite(v):
            raise ValueError(f"{k} is not a finite number: {r[k]!r}")
        out[k] = v
    if not out["source"] or not out["case"]:
        raise ValueError("empty case or source")
    for k in ("shown_left", "answer"):
        if r[k] not in _ANSWERS:
            raise ValueError(f"{k} must be one of {', '.join(_ANSWERS)}, got {r[k]!r}")
        out[k] = r[k]
    if r["shown_left"] not in (ALTERED, ORIGINAL):
        raise ValueError(f"shown_left must be altered or original, got {r['shown_left']!r}")
    if r["correct"] not in ("0", "1"):
        raise ValueError(f"correct must be 0 or 1, got {r['correct']!r}")
    out["correct"] = int(r["correct"])
    if r["answer"] in ("left", "right"):
        expected = (r["answer"] == "left") == (r["shown_left"] == ALTERED)
    else:
        expected = r["answer"] == r["shown_left"]
    if out["correct"] != int(expected):
        raise ValueError(f"correct={out['correct']} does not follow from shown_left={r['shown_left']} and "
                         f"answer={r['answer']}")
    out["confidence"] = int(r["confidence"])
    if out["confidence"] not in CONFIDENCE:
        raise ValueError(f"confidence must be 1-5, got {r['confidence']!r}")
    return out


# --------------------------------------------------------------------------- statistics


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of ``k`` successes in ``n`` trials."""
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def summarise(rows: Sequence[dict]) -> list[CellSummary]:
    """One :class:`CellSummary` per source × target PSNR (sources in order of appearance, PSNRs
    ascending), pooled over cases and readers."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["source"], r["target_psnr"]), []).append(r)
    order = {s: i for i, s in enumerate(dict.fromkeys(r["source"] for r in rows))}
    out = []
    for (source, target), g in sorted(groups.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        n, k = len(g), sum(r["correct"] for r in g)
        lo, hi = wilson(k, n)
        out.append(CellSummary(source, target, n, k, k / n, lo, hi, float(np.mean([r["psnr"] for r in g])),
                               float(np.mean([r["confidence"] for r in g])),
                               float(np.mean([r["seconds"] for r in g]))))
    return out


def psychometric(psnr, a: float, b: float, chance: float = CHANCE):
    """``chance + (1 - chance) · σ(a + b · psnr)``."""
    z = a + b * np.asarray(psnr, dtype=np.float64)
    return chance + (1.0 - chance) / (1.0 + np.exp(-z))


def fit_psychometric(psnr: Sequence[float], correct: Sequence[int], chance: float = CHANCE) -> tuple[float, float]:
    """Maximum-likelihood ``(a, b)`` of :func:`psychometric` for 0/1 outcomes ``correct``.

    The PSNR is centred and scaled for the optimiser; the scaled slope is bounded (|b·sd| ≤ 30)
    so perfectly separated data give a steep, finite curve instead of diverging."""
    from scipy.optimize import minimize

    x = np.asarray(psnr, dtype=np.float64)
    y = np.asarray(correct, dtype=np.float64)
    if x.size < 2 or not 0.0 <= chance < 1.0:
        raise ValueError("a psychometric fit needs at least 2 trials and 0 <= chance < 1")
    mu, sd = float(x.mean()), float(x.std()) or 1.0
    xs = (x - mu) / sd

    def nll(theta):
        p = np.clip(psychometric(xs, theta[0], theta[1], chance), 1e-12, 1 - 1e-12)
        return -float(np.sum(y * np.log(p) + (1 - y) * np.log1p(-p)))

    res = minimize(nll, np.zeros(2), method="L-BFGS-B", bounds=[(-30.0, 30.0), (-30.0, 30.0)])
    a_s, b_s = (float(v) for v in res.x)
    return a_s - b_s * mu / sd, b_s / sd  # back to dB


def threshold(source: str, psnr: Sequence[float], correct: Sequence[int], *, level: float = LEVEL,
              chance: float = CHANCE) -> Threshold:
    """The PSNR at which the fitted detection accuracy is ``level`` (see the module docstring)."""
    x = np.asarray(psnr, dtype=np.float64)
    rng = (float(x.min()), float(x.max()))
    if len(set(np.round(x, 6))) < 2:
        return Threshold(source, None, math.nan, math.nan, len(x), rng, "one PSNR level only: no curve to fit")
    a, b = fit_psychometric(x, correct, chance)
    if not b < 0:
        return Threshold(source, None, a, b, len(x), rng, "accuracy does not fall as PSNR rises")
    z = math.log((level - chance) / (1.0 - level))  # σ(z) = (level - chance) / (1 - chance)
    at = (z - a) / b
    if not rng[0] <= at <= rng[1]:
        side = "above" if at > rng[1] else "below"
        return Threshold(source, None, a, b, len(x), rng,
                         f"the fit crosses {100 * level:.0f} % at {at:.1f} dB, {side} the tested range")
    return Threshold(source, float(at), a, b, len(x), rng)


def thresholds(rows: Sequence[dict], *, level: float = LEVEL, chance: float = CHANCE) -> list[Threshold]:
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["source"], []).append(r)
    return [threshold(s, [r["psnr"] for r in g], [r["correct"] for r in g], level=level, chance=chance)
            for s, g in by.items()]


# --------------------------------------------------------------------------- outputs


def table_text(cells: Sequence[CellSummary], fits: Sequence[Threshold]) -> str:
    """The table ``medadv reader-report`` prints."""
    lines = [f"{'source':12s} {'target dB':>9s} {'PSNR dB':>8s} {'n':>4s} {'correct':>7s} {'accuracy':>8s} "
             f"{'Wilson 95 % CI':>16s} {'conf':>5s} {'sec':>6s}"]
    for c in cells:
        lines.append(f"{c.source:12s} {c.target_psnr:9.1f} {c.mean_psnr:8.2f} {c.n:4d} {c.correct:7d} "
                     f"{100 * c.accuracy:7.1f}% {100 * c.ci_low:7.1f}-{100 * c.ci_high:5.1f} % "
                     f"{c.mean_confidence:5.2f} {c.mean_seconds:6.2f}")
    lines.append("")
    lines.append(f"PSNR at which readers detect each source {100 * LEVEL:.0f} % of the time "
                 f"(psychometric fit, chance {100 * CHANCE:.0f} %):")
    for f in fits:
        val = f"{f.psnr_75:.2f} dB" if f.psnr_75 is not None else f"None ({f.note})"
        lines.append(f"  {f.source:12s} {val}")
    return "\n".join(lines)


def write_summary(path: str | Path, cells: Sequence[CellSummary], fits: Sequence[Threshold]) -> Path:
    """``reader_summary.csv``: the cells, each with its source's 75 % PSNR (empty when None)."""
    by = {f.source: f for f in fits}
    fields = [*CellSummary.__dataclass_fields__, "psnr_75"]

    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
            w.writeheader()
            for c in cells:
                p = by[c.source].psnr_75 if c.source in by else None
                w.writerow({**{k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(c).items()},
                            "psnr_75": "" if p is None else round(p, 4)})

    return atomic_write(path, write)


def plot(path: str | Path, cells: Sequence[CellSummary], fits: Sequence[Threshold], rows: Sequence[dict]) -> Path:
    """PNG: detection accuracy vs target PSNR per source, Wilson 95 % intervals as error bars,
    the fitted curve (dashed), chance and the 75 % level."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # only when a figure is drawn
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    sources = list(dict.fromkeys(c.source for c in cells))
    by = {f.source: f for f in fits}
    span = [min(r["psnr"] for r in rows), max(r["psnr"] for r in rows)]
    for i, s in enumerate(sources):
        cs = [c for c in cells if c.source == s]
        x = np.array([c.target_psnr for c in cs]) + 0.15 * (i - (len(sources) - 1) / 2)  # dodge
        acc = np.array([c.accuracy for c in cs])
        err = np.array([acc - [c.ci_low for c in cs], [c.ci_high for c in cs] - acc])
        line = ax.errorbar(x, 100 * acc, yerr=100 * err, marker="os^Dv<>ph*"[i % 10], capsize=3, linestyle="none",
                           label=s)
        f = by.get(s)
        if f is not None and math.isfinite(f.a):
            xx = np.linspace(span[0], span[1], 200)
            ax.plot(xx, 100 * psychometric(xx, f.a, f.b), "--", color=line[0].get_color(), linewidth=1)
            if f.psnr_75 is not None:
                ax.plot([f.psnr_75], [100 * LEVEL], "x", color=line[0].get_color(), markersize=9)
    ax.axhline(100 * CHANCE, color="0.6", linewidth=0.8, linestyle=":")
    ax.axhline(100 * LEVEL, color="0.4", linewidth=0.8, linestyle="-.")
    ax.set_xlabel("PSNR of the altered image (dB)")
    ax.set_ylabel("detection accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("Reader study: detection vs PSNR (Wilson 95 % CI; dashed: fit; x: 75 %)", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    meta = {"Software": None}
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, metadata=meta))


def report(csv_path: str | Path, out_dir: str | Path | None = None) -> tuple[str, dict[str, Path]]:
    """Read ``csv_path``, write ``reader_summary.csv`` and ``reader_report.png`` to ``out_dir``
    (default: the CSV's folder); returns the table text and the written paths."""
    rows = read_results(csv_path)
    cells, fits = summarise(rows), thresholds(rows)
    out = Path(out_dir) if out_dir is not None else Path(csv_path).parent
    paths = {"summary": write_summary(out / "reader_summary.csv", cells, fits),
             "figure": plot(out / "reader_report.png", cells, fits, rows)}
    return table_text(cells, fits), paths
