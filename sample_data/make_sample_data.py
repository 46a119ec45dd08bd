"""Rebuild every generated file under sample_data/ from fixed seeds (no network).

    pip install nilearn pydicom-data          # the two wheels the data come from
    python sample_data/make_sample_data.py            # rewrite the shipped files
    python sample_data/make_sample_data.py --check    # rebuild in a temp dir and compare

The generators live in ``napari_medadv.core.data`` (``glioma``, ``cxr``, ``seeds``); this script
only picks the seeds and the file names and prints the sizes. See PROVENANCE.md for what each file is.
"""

from __future__ import annotations

import argparse
import csv
import filecmp
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing the package

from napari_medadv.core.data import cxr, glioma  # noqa: E402
from napari_medadv.core.data.seeds import CXR_HELDOUT_SEEDS, GLIOMA_HELDOUT_SEEDS  # noqa: E402


GLIOMA_1MM_SEED = 1
GLIOMA_1MM_CASE = "glioma_1mm_001"


def glioma_case_id(seed: int) -> str:
    return f"glioma_{seed:03d}"


def cxr_case_file(seed: int) -> str:
    return f"case_{seed:02d}.png"


def build(out: Path) -> list[Path]:
    written: list[Path] = []

    gdir = out / "glioma"
    rows = []
    for seed in GLIOMA_HELDOUT_SEEDS:
        channels, seg, affine = glioma.make_glioma_case(seed)
        case_id = glioma_case_id(seed)
        # one folder per case, as BraTS distributes them (each folder opens as one 4-channel image)
        written += glioma.write_brats_case(gdir / case_id, case_id, channels, seg, affine).values()
        p = glioma.sample_glioma_params(seed)
        rows.append(
            {
                "case_id": case_id,
                "seed": seed,
                "voxels_label1": int((seg == 1).sum()),
                "voxels_label2": int((seg == 2).sum()),
                "voxels_label4": int((seg == 4).sum()),
                "center_x_mm": f"{p.center_mm[0]:.1f}",
                "center_y_mm": f"{p.center_mm[1]:.1f}",
                "center_z_mm": f"{p.center_mm[2]:.1f}",
                "core_radius_mm": f"{p.core_radius_mm:.1f}",
                "whole_tumour_radius_mm": f"{p.edema_radius_mm:.1f}",
            }
        )
    manifest = gdir / "cases.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    written.append(manifest)

    # the realistic 1 mm case for talks: seed 1 (glioma_001's tumour) on the template's 1 mm grid
    channels, seg, affine = glioma.make_glioma_case(GLIOMA_1MM_SEED, glioma.GLIOMA_1MM_GRID)
    case_id = GLIOMA_1MM_CASE
    written += glioma.write_brats_case(out / "glioma_1mm" / case_id, case_id, channels, seg, affine).values()

    cdir = out / "cxr"
    cdir.mkdir(parents=True, exist_ok=True)
    base = cxr.load_base_cxr(cxr.CXR_BASE_SIZE)
    cxr.write_base_cxr_png(cdir / "chest_pa.png", base)
    written.append(cdir / "chest_pa.png")
    hdir = cdir / "heldout"
    hdir.mkdir(parents=True, exist_ok=True)
    labels = []
    for seed in CXR_HELDOUT_SEEDS:
        img, lab = cxr.make_cxr_case(seed, size=cxr.CXR_CLASSIFIER_SIZE, base=base)
        name = cxr_case_file(seed)
        cxr.write_base_cxr_png(hdir / name, img)
        written.append(hdir / name)
        labels.append({"file": name, **{k: lab[k] for k in cxr.CXR_FINDINGS}})
    with open(hdir / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", *cxr.CXR_FINDINGS], lineterminator="\n")
        w.writeheader()
        w.writerows(labels)
    written.append(hdir / "labels.csv")
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE, help="output folder (default: this sample_data folder)")
    ap.add_argument("--check", action="store_true", help="rebuild into a temporary folder and compare bytes")
    args = ap.parse_args(argv)

    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            files = build(Path(tmp))
            bad = [
                f.relative_to(tmp) for f in files if not filecmp.cmp(f, args.out / f.relative_to(tmp), shallow=False)
            ]
        for f in bad:
            print(f"DIFFERS: {f}")
        print(f"{len(files) - len(bad)}/{len(files)} files byte-identical")
        return 1 if bad else 0

    files = build(args.out)
    total = 0
    for f in files:
        size = f.stat().st_size
        total += size
        print(f"{size / 1024:9.1f} KiB  {f.relative_to(args.out)}")
    print(f"{total / 1024 / 1024:9.2f} MiB  total ({len(files)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
