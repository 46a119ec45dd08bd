"""The figures of a study report (PNG + SVG under ``OUT/figures/``): Dice vs ε, Dice vs
PSNR/SSIM at matched quality (one line per source, adversarial solid, natural dashed), Dice and
PSNR vs iterations, k-robust accuracy vs ε.

Matplotlib is used through ``Figure``/``FigureCanvasAgg`` objects (no pyplot state, no rc
changes), and imported only when a figure is drawn, so running cases (in a Dask worker) never
loads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...files import atomic_write
from ..store import NO_ATTACK
from .tables import source_name, dice_keys, key_name, source_kind, whitebox

MARKERS = "osD^v<>ph*"
DODGE = {"psnr": 0.12, "ssim": 0.0015}  # horizontal offset between sources in the curves (dB / SSIM)
_KIND_SHORT = {"adversarial": "adversarial", "natural": "MR artifact", "random": "random"}
# line styles of the Dice-vs-quality curves: adversarial solid, natural dashed, random dotted
KIND_STYLE = {"adversarial": ("-", True), "natural": ("--", False), "random": (":", False)}


def _save(fig, folder: Path, stem: str) -> list[str]:
    names = []
    for fmt in ("png", "svg"):
        path = folder / f"{stem}.{fmt}"
        # no creation date / software stamp in the files: a re-run that changes nothing rewrites
        # identical figures (committed reports stay clean in git)
        # (and a fixed salt for the SVG element ids, random by default)
        meta = {"svg": {"Date": None, "Creator": None}, "png": {"Software": None}}.get(fmt)

        def write(f, fmt=fmt, meta=meta):
            import matplotlib  # deferred: see the module docstring

            with matplotlib.rc_context({"svg.hashsalt": "napari-medadv"}):
                fig.savefig(f, format=fmt, dpi=110, bbox_inches="tight", metadata=meta)

        atomic_write(path, write)
        names.append(f"figures/{path.name}")
    return names


def _figure(ncols: int, width: float = 4.2, height: float = 3.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # deferred: see the module docstring
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


def figure_dice_vs_quality(reached, clean, metric: str, folder: Path) -> list[str]:
    """Dice (mean ± sd over the cases that reached each target) vs the input quality reached
    (mean), one line per perturbation source; adversarial solid with filled markers, natural MR
    artifacts dashed with open markers, random noise dotted; one row of WT/TC/ET panels per
    model; the clean Dice as a grey line. Higher quality (less degradation) on the left. Points
    of different sources are dodged horizontally by :data:`DODGE` per source so their error bars
    stay apart."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # deferred: see the module docstring
    from matplotlib.figure import Figure

    wb = whitebox(reached[reached["match_metric"] == metric])
    if wb.empty:
        return []
    models = list(dict.fromkeys(wb["target"]))
    keys = dice_keys(wb)
    fig = Figure(figsize=(4.6 * len(keys), 3.8 * len(models)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(models), len(keys), squeeze=False)
    from matplotlib import colormaps  # deferred: see the module docstring

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
                            elinewidth=1, label=f"{source_name(sub.iloc[0])} · {_KIND_SHORT[kind]}")
            ax.set_title(f"Dice {key_name(r)}" + (f" · {model}" if len(models) > 1 else ""))
            ax.set_xlabel(f"{metric.upper()} of the perturbed input" + (" (dB)" if metric == "psnr" else ""))
            ax.set_ylim(-0.02, 1.02)
            ax.invert_xaxis()  # from mild (left) to severe (right), like Dice vs ε
            ax.grid(alpha=0.3)
        row[0].set_ylabel("Dice vs ground truth (mean ± sd)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside: no line hidden
    return _save(fig, folder, f"dice_vs_{metric}")


DGDE_CASES_SHOWN = 15  # the paper's Figs. 3-4 show 15 randomly chosen samples


def figure_dgde_history(hist, folder: Path) -> dict[str, list[str]]:
    """DGDE 2024, Fig. 3 (changed pixels vs iteration) and Fig. 4 (the attacked class's
    probability vs iteration): one line per case (its accepted solutions, held between them as
    steps; the first :data:`DGDE_CASES_SHOWN` successful cases in case order), one panel per
    model × DGDE grid point, white box. ``{"l0": files, "probability": files}``; empty without
    DGDE history."""
    if hist is None or hist.empty or "l0" not in hist:
        return {}
    h = hist[hist["l0"].notna()]  # history rows are the source's own (white box) runs
    if h.empty:
        return {}
    panels = list(dict.fromkeys(zip(h["source"], h["grid_key"])))
    out = {}
    for col, stem, ylabel in (("l0", "dgde_l0_vs_iteration", "changed pixels (L0)"),
                              ("probability", "dgde_probability_vs_iteration",
                               "probability of the attacked class")):
        fig, axes = _figure(len(panels), width=4.6, height=3.6)
        for ax, (src, key) in zip(axes, panels):
            g = h[(h["source"] == src) & (h["grid_key"] == key)]
            for case in list(dict.fromkeys(g["case"]))[:DGDE_CASES_SHOWN]:
                c = g[g["case"] == case].sort_values("step")
                ax.step(c["step"], c[col], where="post", lw=1.2, label=str(case))
            if col == "probability":
                ax.axhline(0.5, color="0.4", ls="--", lw=1)  # the paper's success threshold
            else:
                ax.set_yscale("log")
            ax.set_title(f"{src} · {g.iloc[0]['attack_label']}", fontsize=9)
            ax.set_xlabel("iteration (decrease step or DE generation)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        out[col] = _save(fig, folder, stem)
    return out
