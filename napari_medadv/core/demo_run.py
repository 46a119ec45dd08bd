"""``medadv demo --headless``: every attack once on the shipped sample data with the demo models.

Writes one ``medadv attack``-style folder per run, ``summary.json``/``summary.md`` with the key
numbers, and ``demo_figure.png`` (image, overlays, perturbation, diff, Dice and PSNR per attack).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .data.paths import sample_data_dir
from .io import read_image
from .models import load_model
from .outcome import AttackOutcome
from .pipeline import run_attack, write_outcome

SEG_RUNS = [  # (attack, params, target label value)
    ("fgsm", {"eps": 0.05}, None),
    ("ifgsm", {"eps": 0.05, "steps": 10}, None),
    ("tifgsm", {"eps": 0.05, "steps": 10}, 1),
    ("pgd", {"eps": 0.05, "steps": 10}, None),
    ("noise", {"eps": 0.05}, None),
]


def _pick_cxr_case(folder: Path) -> Path:
    with open(folder / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:  # a case with both findings shows the most
        if r.get("nodule") == "1" and r.get("opacity") == "1":
            return folder / r["file"]
    return folder / rows[0]["file"]


def dgde_class(probs) -> int:
    """The finding DGDE tries to hide: the least confident positive one (probability >= 0.5).

    DGDE flips a positive decision below 0.5 (as in the paper). A diffuse opacity at 0.998 does
    not move under a few hundred changed pixels, while a nodule does, so the demo picks the
    positive finding closest to the threshold (the most probable class when none is positive).
    """
    probs = np.asarray(probs, dtype=float)
    positive = np.flatnonzero(probs >= 0.5)
    if positive.size == 0:
        return int(np.argmax(probs))
    return int(positive[np.argmin(probs[positive])])


def run_headless_demo(out: str | Path, *, device: str = "auto", quick: bool = False,
                      log: Callable[[str], None] = print, seed: int = 0) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sd = sample_data_dir()
    t0 = time.perf_counter()
    steps = 3 if quick else 10
    case = read_image(sd / "glioma" / "glioma_001")
    outcomes: list[tuple[str, AttackOutcome]] = []

    def do(tag: str, image, model, attack, params, target=None, labels=None):
        log(f"{tag}: {attack} {params}")
        o = run_attack(image, model, attack, params=params, labels=labels, target=target, seed=seed)
        write_outcome(o, out / tag, command=["medadv", "demo", "--headless"])
        outcomes.append((tag, o))
        return o

    m3 = load_model("demo:unet3d", device=device)
    for attack, params, target in SEG_RUNS:
        params = {**params, **({"steps": steps} if "steps" in params else {})}
        do(f"unet3d-{attack}", case, m3, attack, params, target, labels=case.labels)
    m2 = load_model("demo:unet2d", device=device)
    do("unet2d-fgsm", case, m2, "fgsm", {"eps": 0.05}, labels=case.labels)
    do("unet2d-ifgsm", case, m2, "ifgsm", {"eps": 0.05, "steps": steps}, labels=case.labels)

    cxr_path = _pick_cxr_case(sd / "cxr" / "heldout")
    cxr = read_image(cxr_path)
    mc = load_model("demo:cxr", device=device)
    do("cxr-fgsm", cxr, mc, "fgsm", {"eps": 0.02})
    do("cxr-pgd", cxr, mc, "pgd", {"eps": 0.02, "steps": steps})
    probs = mc.probabilities(mc.forward(cxr.array))[0].cpu().numpy()
    do("cxr-dgde", cxr, mc, "dgde", {"max_queries": 300 if quick else 2000,
                                      "class_index": dgde_class(probs)})

    summary = {"out": str(out), "seconds": round(time.perf_counter() - t0, 1), "runs": {}}
    for tag, o in outcomes:
        summary["runs"][tag] = _summary_row(o)
    fig_path = out / "demo_figure.png"
    make_demo_figure(outcomes, fig_path)
    summary["figure"] = str(fig_path)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "summary.md").write_text(_summary_markdown(summary))
    log(f"done in {summary['seconds']} s")
    return summary


def _summary_row(o: AttackOutcome) -> dict:
    m = o.metrics
    row = {"attack": o.attack, "model": o.model.spec, "input": str(o.image.source.name),
           "eps": m["eps"], "psnr": round(m["image_quality"]["psnr"], 2),
           "ssim": round(m["image_quality"]["ssim"], 4), "l0": m["image_quality"]["l0"],
           "seconds": m["seconds"]}
    if "dice" in m:
        ref = m["dice"].get("ground_truth_vs_adversarial") or m["dice"]["clean_vs_adversarial"]
        row["dice_adv"] = {k: round(v, 4) for k, v in ref.get("regions", {"fg": ref["foreground"]}).items()}
        if "ground_truth_vs_clean" in m["dice"]:
            cl = m["dice"]["ground_truth_vs_clean"]
            row["dice_clean"] = {k: round(v, 4) for k, v in cl.get("regions", {"fg": cl["foreground"]}).items()}
    if "probabilities" in m:
        row["probabilities"] = {k: [round(v["clean"], 4), round(v["adversarial"], 4)] for k, v in m["probabilities"].items()}
    if "dgde_l0" in m:
        row["dgde_l0"] = m["dgde_l0"]
        row["success"] = m.get("success")
    return row


def _summary_markdown(summary: dict) -> str:
    lines = ["# napari-medadv headless demo", "",
             "| run | ε | PSNR dB | SSIM | L0 | Dice clean → adversarial / probabilities |",
             "|---|---|---|---|---|---|"]
    for tag, r in summary["runs"].items():
        if "dice_adv" in r:
            clean = r.get("dice_clean", {})
            what = ", ".join(f"{k} {clean.get(k, float('nan')):.3f}→{v:.3f}" for k, v in r["dice_adv"].items())
        else:
            what = ", ".join(f"{k} {a:.3f}→{b:.3f}" for k, (a, b) in r["probabilities"].items())
            if "dgde_l0" in r:
                what += f" (L0 {r['dgde_l0']} px, success {r['success']})"
        lines.append(f"| {tag} | {r['eps']:g} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['l0']} | {what} |")
    lines += ["", f"Total time: {summary['seconds']} s.", ""]
    return "\n".join(lines)


BRATS_COLORS = {1: (0.85, 0.15, 0.15), 2: (0.2, 0.75, 0.3), 4: (1.0, 0.85, 0.1)}


def label_overlay(gray: np.ndarray, labels: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """RGB image of ``gray`` (normalised) with BraTS label colours blended in."""
    g = gray.astype(np.float32)
    lo, hi = np.percentile(g, [1, 99.5])
    g = np.clip((g - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(g[..., None], 3, axis=-1)
    for value, color in BRATS_COLORS.items():
        m = labels == value
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(color)
    return rgb


def _to_ras(affine: np.ndarray):
    """A function reorienting a stored volume to RAS+ voxel order (flips and axis permutations
    only, by nibabel's orientation tools; obliques go to the closest RAS axes)."""
    import nibabel.orientations as nio

    ornt = nio.io_orientation(affine)
    return lambda a: nio.apply_orientation(np.asarray(a), ornt)


def make_demo_figure(outcomes: list[tuple[str, AttackOutcome]], path: str | Path) -> Path:
    """Summary figure (matplotlib's object API with the Agg canvas: no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # matplotlib: only for the figure
    from matplotlib.figure import Figure

    by_tag = dict(outcomes)
    seg = by_tag.get("unet3d-ifgsm") or next(o for _, o in outcomes if o.seg_clean is not None)
    cxr = by_tag.get("cxr-dgde")
    fig = Figure(figsize=(16, 10), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(3, 5)
    _segmentation_panels(fig, gs, seg)
    _dice_panel(fig.add_subplot(gs[1, 1:3]), outcomes)
    _psnr_panel(fig.add_subplot(gs[1, 3:5]), outcomes)
    if cxr is not None:
        _radiograph_panels(fig, gs, cxr)
    fig.suptitle("napari-medadv — adversarial attacks on the shipped phantoms and demo models", fontsize=13)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)
    return path


def _axial_slicer(seg: AttackOutcome) -> Callable[[np.ndarray], np.ndarray]:
    """``volume -> 2-D slice``: the axial slice with the most labelled voxels, in radiological
    convention whatever the file's storage order (rows run anterior -> posterior, columns patient's
    right -> left, so left is on screen right); 2-D images pass through."""
    lab = seg.labels if seg.labels is not None else seg.seg_clean
    to_ras = _to_ras(seg.image.geometry.affine) if lab.ndim == 3 else None
    z = int(np.argmax((to_ras(lab) != 0).sum(axis=(0, 1)))) if to_ras is not None else None

    def sl(a):
        return to_ras(a)[::-1, ::-1, z].T if z is not None else a

    return sl


def _segmentation_panels(fig, gs, seg: AttackOutcome) -> None:
    """Top row: FLAIR, ground truth, clean and adversarial predictions, the perturbation; then the
    diff map of the predictions below the first."""
    fl = seg.image.channel_names.index("flair") if "flair" in seg.image.channel_names else 0
    lab = seg.labels if seg.labels is not None else seg.seg_clean
    sl = _axial_slicer(seg)
    panels = [
        ("FLAIR (clean; radiological: L on right)", label_overlay(sl(seg.image.array[fl]), np.zeros_like(sl(lab)))),
        ("ground truth", label_overlay(sl(seg.image.array[fl]), sl(lab))),
        ("prediction (clean)", label_overlay(sl(seg.image.array[fl]), sl(seg.seg_clean))),
        (f"prediction ({seg.attack}, ε={seg.result.eps:g})", label_overlay(sl(seg.adversarial[fl]), sl(seg.seg_adv))),
    ]
    for i, (title, img) in enumerate(panels):
        ax = fig.add_subplot(gs[0, i])
        ax.imshow(img)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    ax = fig.add_subplot(gs[0, 4])
    pert = sl(seg.perturbation[fl])
    vmax = float(np.abs(pert).max()) or 1.0
    im = ax.imshow(pert, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    ax.set_title("perturbation (FLAIR, native units)", fontsize=10)
    ax.axis("off")
    fig.colorbar(im, ax=ax, shrink=0.7)

    # diff map: gained / lost / changed class
    ax = fig.add_subplot(gs[1, 0])
    c, a = sl(seg.seg_clean), sl(seg.seg_adv)
    diff = np.zeros(c.shape + (3,))
    diff[(c == 0) & (a != 0)] = (0.1, 0.6, 1.0)
    diff[(c != 0) & (a == 0)] = (1.0, 0.3, 0.2)
    diff[(c != 0) & (a != 0) & (c != a)] = (1.0, 0.9, 0.2)
    ax.imshow(diff)
    ax.set_title("diff: gained (blue), lost (red),\nchanged (yellow)", fontsize=9)
    ax.axis("off")


def _dice_panel(ax, outcomes: list[tuple[str, AttackOutcome]]) -> None:
    """Bars of the 3-D UNet's Dice per region, clean and under each attack."""
    seg_runs = [(t, o) for t, o in outcomes if o.seg_clean is not None and o.model.spec == "demo:unet3d"]
    regions = ["WT", "TC", "ET"]
    width = 0.8 / (len(seg_runs) + 1)
    clean_block = seg_runs[0][1].metrics["dice"].get("ground_truth_vs_clean")
    if clean_block:
        ax.bar(np.arange(3) - 0.4 + width / 2, [clean_block["regions"][r] for r in regions], width, label="clean",
               color="0.6")
    for k, (tag, o) in enumerate(seg_runs, start=1):
        block = o.metrics["dice"].get("ground_truth_vs_adversarial") or o.metrics["dice"]["clean_vs_adversarial"]
        ax.bar(np.arange(3) - 0.4 + width / 2 + k * width, [block["regions"][r] for r in regions], width,
               label=o.attack)
    ax.set_xticks(np.arange(3), regions)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice vs ground truth")
    ax.set_title("3-D UNet: Dice per region under each attack (ε = 5 % of range)", fontsize=10)
    ax.legend(fontsize=8, ncol=3)


def _psnr_panel(ax, outcomes: list[tuple[str, AttackOutcome]]) -> None:
    """Horizontal bars of each run's input PSNR."""
    tags = [t for t, _ in outcomes]
    ax.barh(tags, [o.metrics["image_quality"]["psnr"] for _, o in outcomes], color="tab:purple")
    ax.set_xlabel("input PSNR (dB, all channels)")
    ax.set_title("image quality of each perturbed input", fontsize=10)
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=8)


def _radiograph_panels(fig, gs, cxr: AttackOutcome) -> None:
    """Bottom row: the radiograph, DGDE's changed pixels, the probabilities, DGDE's L0 history."""
    img = cxr.image.array[0]
    ax = fig.add_subplot(gs[2, 0])
    ax.imshow(img, cmap="gray")
    ax.set_title("chest radiograph (clean)", fontsize=10)
    ax.axis("off")
    ax = fig.add_subplot(gs[2, 1])
    ax.imshow(cxr.adversarial[0], cmap="gray")
    ys, xs = np.nonzero(np.abs(cxr.perturbation[0]) > 0)
    ax.scatter(xs, ys, s=40, facecolors="none", edgecolors="red", linewidths=1)
    ax.set_title(f"DGDE adversarial: {len(xs)} pixels changed", fontsize=10)
    ax.axis("off")
    ax = fig.add_subplot(gs[2, 2])
    names = list(cxr.metrics["probabilities"])
    pc = [cxr.metrics["probabilities"][n]["clean"] for n in names]
    pa = [cxr.metrics["probabilities"][n]["adversarial"] for n in names]
    xs_ = np.arange(len(names))
    ax.bar(xs_ - 0.2, pc, 0.4, label="clean", color="0.6")
    ax.bar(xs_ + 0.2, pa, 0.4, label="DGDE", color="tab:red")
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xticks(xs_, names)
    ax.set_ylim(0, 1)
    ax.set_title("classifier probabilities", fontsize=10)
    ax.legend(fontsize=8)
    hist = cxr.result.extra.get("l0_history", [[]])[0]
    if hist:
        ax = fig.add_subplot(gs[2, 3:5])
        ax.plot(np.arange(len(hist)), hist, marker=".")
        if min(hist) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("DGDE generation")
        ax.set_ylabel("perturbed pixels (L0)")
        ax.set_title("DGDE: L0 never increases", fontsize=10)
