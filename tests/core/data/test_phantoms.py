"""Phantom generators (napari_medadv.core.data: glioma, cxr, seeds) and the files shipped under
sample_data/.

Tests of the shipped files need neither nilearn nor pydicom-data; tests of the generators skip
without them (CI installs both). A module-wide fixture blocks sockets, so any attempt to
download fails the test instead of quietly fetching.
"""

from __future__ import annotations

import csv
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_medadv.core.data import cxr as C
from napari_medadv.core.data import glioma as G
from napari_medadv.core.data import seeds as S

SAMPLE = Path(__file__).resolve().parents[3] / "sample_data"
GLIOMA_DIR = SAMPLE / "glioma"
CXR_DIR = SAMPLE / "cxr"
QUANT = G.GLIOMA_INT16_SLOPE / 2 + 1e-6  # int16 storage error bound


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("phantom code tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _have_pydicom_data() -> bool:
    try:
        from pydicom.data import get_testdata_file

        return get_testdata_file("RG1_UNCR.dcm", download=False) is not None
    except ImportError:
        return False


needs_pydicom_data = pytest.mark.skipif(not _have_pydicom_data(), reason="needs pip install pydicom-data")


# --------------------------------------------------------------------------------------------
# module hygiene
# --------------------------------------------------------------------------------------------


def test_import_is_light():
    code = (
        "import sys, napari_medadv.core.data.glioma, napari_medadv.core.data.cxr\n"
        "bad = [m for m in ('nilearn', 'pydicom', 'napari', 'qtpy', 'magicgui', 'torch', 'matplotlib.pyplot')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr


def test_grid_affine_hand_computed():
    g = G.GLIOMA_GRID
    assert g.shape == (64, 80, 64) and all(n % 16 == 0 for n in g.shape)
    # first voxel centre = centre - (n - 1) / 2 * spacing
    expected = np.array(
        [
            [2.5, 0, 0, 0.0 - 31.5 * 2.5],
            [0, 2.5, 0, -17.0 - 39.5 * 2.5],
            [0, 0, 2.5, 5.0 - 31.5 * 2.5],
            [0, 0, 0, 1],
        ]
    )
    np.testing.assert_allclose(g.affine, expected)
    np.testing.assert_allclose(expected[:3, 3], [-78.75, -115.75, -73.75])
    # the grid centre maps back to center_mm
    mid = g.affine @ np.r_[(np.array(g.shape) - 1) / 2, 1]
    np.testing.assert_allclose(mid[:3], g.center_mm)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"shape": (64, 80)}, "shape"),
        ({"shape": (4, 80, 64)}, "shape"),
        ({"spacing_mm": 0.0}, "spacing"),
        ({"spacing_mm": -1.0}, "spacing"),
    ],
)
def test_grid_ill_opts(kwargs, match):
    with pytest.raises(ValueError, match=match):
        G.Grid(**kwargs)


def test_negative_seed_rejected():
    with pytest.raises(ValueError, match="seed"):
        S.stream_rng(-1, 0)


# --------------------------------------------------------------------------------------------
# shipped files (no nilearn / pydicom-data needed)
# --------------------------------------------------------------------------------------------


def _glioma_case_ids():
    with open(GLIOMA_DIR / "cases.csv") as fh:
        return list(csv.DictReader(fh))


def test_sample_data_size_budget():
    weights = {".pt", ".pth", ".ckpt", ".onnx", ".safetensors"}
    total = sum(f.stat().st_size for f in SAMPLE.rglob("*") if f.is_file() and f.suffix not in weights)
    assert total < 20 * 1024 * 1024, f"sample_data is {total / 2**20:.1f} MiB"


def test_shipped_glioma_manifest_lists_heldout_seeds():
    rows = _glioma_case_ids()
    assert [int(r["seed"]) for r in rows] == list(S.GLIOMA_HELDOUT_SEEDS)
    assert all(int(r["seed"]) < S.TRAIN_SEED_START for r in rows)


@pytest.mark.parametrize("row", _glioma_case_ids(), ids=lambda r: r["case_id"])
def test_shipped_glioma_case(row):
    import nibabel as nib

    case_id = row["case_id"]
    for ch in G.GLIOMA_CHANNELS:
        img = nib.load(GLIOMA_DIR / case_id / f"{case_id}_{ch}.nii.gz")
        assert img.get_data_dtype() == np.int16
        assert img.dataobj.slope == pytest.approx(G.GLIOMA_INT16_SLOPE)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    channels, seg, affine = G.read_brats_case(GLIOMA_DIR / case_id, case_id)
    assert seg.dtype == np.uint8 and seg.shape == G.GLIOMA_GRID.shape
    np.testing.assert_allclose(affine, G.GLIOMA_GRID.affine, atol=1e-4)
    assert set(np.unique(seg).tolist()) == {0, 1, 2, 4}
    for lab in (1, 2, 4):
        assert (seg == lab).sum() == int(row[f"voxels_label{lab}"])
    brain = channels["t1"] > 0
    for ch in G.GLIOMA_CHANNELS:
        assert channels[ch].shape == G.GLIOMA_GRID.shape
        assert np.array_equal(channels[ch] > 0, brain), "all contrasts share the skull-stripped mask"
    assert brain[seg > 0].all(), "tumour inside the brain"
    assert 1.2e6 < brain.sum() * 2.5**3 < 2.2e6, "brain volume (mm^3) of an adult"
    # relative intensities (documented in glioma._TISSUE/_LESION)
    normal = brain & (seg == 0)
    m = {ch: {lab: channels[ch][seg == lab].mean() for lab in (1, 2, 4)} for ch in G.GLIOMA_CHANNELS}
    assert m["flair"][2] > channels["flair"][normal].mean()
    assert m["t2"][2] > channels["t2"][normal].mean()
    assert m["t1ce"][4] > m["t1ce"][1]
    assert m["t1ce"][4] > channels["t1ce"][normal].mean()
    assert m["t1"][1] < channels["t1"][normal].mean()
    assert m["t2"][1] > channels["t2"][normal].mean()


def _cxr_labels():
    with open(CXR_DIR / "heldout" / "labels.csv") as fh:
        return list(csv.DictReader(fh))


def test_shipped_cxr_files():
    import imageio.v3 as iio

    base = iio.imread(CXR_DIR / "chest_pa.png")
    assert base.dtype == np.uint16 and base.shape == (C.CXR_BASE_SIZE, C.CXR_BASE_SIZE)
    rows = _cxr_labels()
    assert [r["file"] for r in rows] == [f"case_{s:02d}.png" for s in S.CXR_HELDOUT_SEEDS]
    assert list(rows[0]) == ["file", *C.CXR_FINDINGS]
    for r in rows:
        img = iio.imread(CXR_DIR / "heldout" / r["file"])
        assert img.dtype == np.uint16 and img.shape == (C.CXR_CLASSIFIER_SIZE,) * 2
        assert {r[k] for k in C.CXR_FINDINGS} <= {"0", "1"}
    # both findings occur, and not in every case
    for k in C.CXR_FINDINGS:
        assert 0 < sum(int(r[k]) for r in rows) < len(rows)


def test_cxr_cases_regenerate_from_shipped_png_without_pydicom_data():
    """Training needs only the repository: the shipped 16-bit base gives the same cases."""
    base = C.read_base_cxr_png(CXR_DIR / "chest_pa.png")
    rows = _cxr_labels()
    for seed, r in zip(S.CXR_HELDOUT_SEEDS[:4], rows):
        img, labels = C.make_cxr_case(seed, base=base)
        shipped = C.read_base_cxr_png(CXR_DIR / "heldout" / r["file"])
        assert labels == {k: int(r[k]) for k in C.CXR_FINDINGS}
        # 16-bit quantisation of the base and of the case
        np.testing.assert_allclose(img, shipped, atol=5e-5)


def test_cxr_lung_mask_on_shipped_base():
    base = C.read_base_cxr_png(CXR_DIR / "chest_pa.png")
    mask = C.cxr_lung_mask(base)
    n = base.shape[0]
    lab, k = ndi.label(mask)
    assert k == 2, "right and left lung"
    assert 0.15 < mask.mean() < 0.4
    rows, cols = np.nonzero(mask)
    margin = 0.05 * n
    assert rows.min() > margin and rows.max() < n - margin
    assert cols.min() > margin and cols.max() < n - margin
    centres = sorted(ndi.center_of_mass(mask, lab, [1, 2]), key=lambda c: c[1])
    assert centres[0][1] < n / 2 < centres[1][1], "one lung in each half"
    # lungs are dark: darker than the mediastinum strip in the middle
    mid = base[n // 4 : 3 * n // 4, n // 2 - n // 32 : n // 2 + n // 32]
    assert base[mask].mean() < mid.mean() - 0.2


# --------------------------------------------------------------------------------------------
# glioma generator (needs nilearn)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def anat():
    pytest.importorskip("nilearn")
    return G.load_mni_anatomy()


@pytest.fixture(scope="module")
def cases(anat):
    seeds = list(S.GLIOMA_HELDOUT_SEEDS) + [S.TRAIN_SEED_START, S.TRAIN_SEED_START + 1]
    return {s: G.make_glioma_case(s) for s in seeds}


def test_mni_anatomy(anat):
    assert anat.t1.shape == anat.gm.shape == anat.brain.shape == G.GLIOMA_GRID.shape
    assert not anat.t1.flags.writeable
    np.testing.assert_allclose((anat.gm + anat.wm + anat.csf)[anat.brain], 1.0, atol=1e-5)
    assert (anat.gm[~anat.brain] == 0).all() and (anat.wm[~anat.brain] == 0).all()
    # world coordinates preserved: brain bounding box matches the 1 mm MNI brain (x -72..72,
    # y -107..73, z -72..82 mm) to within a voxel or two
    idx = np.argwhere(anat.brain)
    lo = G.GLIOMA_GRID.affine[:3, :3] @ idx.min(0) + G.GLIOMA_GRID.affine[:3, 3]
    hi = G.GLIOMA_GRID.affine[:3, :3] @ idx.max(0) + G.GLIOMA_GRID.affine[:3, 3]
    np.testing.assert_allclose(lo, [-72, -107, -72], atol=5)
    np.testing.assert_allclose(hi, [72, 73, 82], atol=5)
    # left-right symmetric template: the centre of mass sits near x = 0
    com = G.GLIOMA_GRID.affine[:3, :3] @ np.array(ndi.center_of_mass(anat.brain)) + G.GLIOMA_GRID.affine[:3, 3]
    assert abs(com[0]) < 3


def test_glioma_deterministic(cases):
    ch, seg, aff = G.make_glioma_case(2)
    ref_ch, ref_seg, ref_aff = cases[2]
    assert np.array_equal(seg, ref_seg) and np.array_equal(aff, ref_aff)
    for k in G.GLIOMA_CHANNELS:
        assert np.array_equal(ch[k], ref_ch[k])
    other = cases[3]
    assert not np.array_equal(other[1], ref_seg)


def test_glioma_outputs(cases, anat):
    for seed, (ch, seg, aff) in cases.items():
        assert set(ch) == set(G.GLIOMA_CHANNELS)
        assert all(a.dtype == np.float32 and a.shape == G.GLIOMA_GRID.shape for a in ch.values())
        assert seg.dtype == np.uint8
        assert set(np.unique(seg).tolist()) == {0, 1, 2, 4}, f"seed {seed}"
        np.testing.assert_array_equal(aff, G.GLIOMA_GRID.affine)
        brain = ch["t1"] > 0
        assert brain[seg > 0].all()
        # skull-stripped like BraTS: zero exactly outside the MNI brain mask
        assert np.array_equal(brain, anat.brain)
        p = G.sample_glioma_params(seed)
        c = np.linalg.inv(aff) @ np.r_[p.center_mm, 1]
        assert anat.brain[tuple(np.round(c[:3]).astype(int))]
        assert 11 - 1e-9 <= p.edema_radius_mm <= 35 + 1e-9


def test_glioma_tumours_vary(cases):
    sizes = [(seg > 0).sum() for _, seg, _ in cases.values()]
    centres = [G.sample_glioma_params(s).center_mm for s in cases]
    assert max(sizes) > 3 * min(sizes)
    assert len({tuple(np.round(c, -1)) for c in centres}) == len(centres)


def test_glioma_contrasts_ordered(cases, anat):
    for seed, (ch, seg, _) in cases.items():
        far = (seg == 0) & ~ndi.binary_dilation(seg > 0, iterations=4)
        wm = far & (anat.wm > 0.9)
        gm = far & (anat.gm > 0.8)
        csf = far & (anat.csf > 0.9)
        mean = {k: {n: ch[k][m].mean() for n, m in (("wm", wm), ("gm", gm), ("csf", csf))} for k in ch}
        for lab in (1, 2, 4):
            for k in ch:
                mean[k][lab] = ch[k][seg == lab].mean()
        t1, t1ce, t2, flair = (mean[k] for k in G.GLIOMA_CHANNELS)
        assert t1["wm"] > t1["gm"] > t1["csf"], seed
        assert t2["csf"] > t2["gm"] > t2["wm"], seed
        assert flair["gm"] > flair["wm"] > flair["csf"], seed
        assert flair[2] > flair["gm"] and flair[2] > flair["wm"], seed
        assert t2[2] > t2["wm"], seed
        assert t1ce[4] > t1ce[1] and t1ce[4] > t1ce["wm"], seed
        assert t1[1] < t1["gm"] and t2[1] > t2["wm"], seed
        assert t1ce[1] < t1ce["wm"], "necrosis does not enhance"


@pytest.mark.parametrize("row", _glioma_case_ids(), ids=lambda r: r["case_id"])
def test_shipped_glioma_matches_generator(row, cases):
    seed = int(row["seed"])
    ch, seg, aff = cases[seed]
    f_ch, f_seg, f_aff = G.read_brats_case(GLIOMA_DIR / row["case_id"], row["case_id"])
    np.testing.assert_array_equal(f_seg, seg)
    np.testing.assert_allclose(f_aff, aff, atol=1e-4)
    for k in G.GLIOMA_CHANNELS:
        np.testing.assert_allclose(f_ch[k], ch[k], rtol=0, atol=QUANT + 1e-6 * np.abs(ch[k]).max())


def test_write_read_roundtrip(tmp_path, cases):
    ch, seg, aff = cases[1]
    paths = G.write_brats_case(tmp_path, "x", ch, seg, aff)
    assert sorted(p.name for p in paths.values()) == sorted(f"x_{k}.nii.gz" for k in (*G.GLIOMA_CHANNELS, "seg"))
    r_ch, r_seg, r_aff = G.read_brats_case(tmp_path, "x")
    assert np.array_equal(r_seg, seg)
    np.testing.assert_allclose(r_aff, aff, atol=1e-4)
    for k in G.GLIOMA_CHANNELS:
        assert np.abs(r_ch[k] - ch[k]).max() <= QUANT
    bad = seg.copy()
    bad[0, 0, 0] = 3
    with pytest.raises(ValueError, match="labels"):
        G.write_brats_case(tmp_path, "bad", ch, bad, aff)


# --------------------------------------------------------------------------------------------
# chest radiograph generator (needs pydicom-data)
# --------------------------------------------------------------------------------------------


@needs_pydicom_data
def test_base_cxr():
    base = C.load_base_cxr()
    assert base.dtype == np.float32 and base.shape == (512, 512)
    assert base.min() == 0.0 and base.max() == 1.0
    base[0, 0] = -1.0  # a copy: the cached image is not touched
    assert C.load_base_cxr()[0, 0] >= 0.0
    small = C.load_base_cxr(256)
    assert small.shape == (256, 256)
    # the shipped 16-bit PNG is this image
    shipped = C.read_base_cxr_png(CXR_DIR / "chest_pa.png")
    np.testing.assert_allclose(shipped, C.load_base_cxr(), atol=0.5 / 65535 + 1e-7)
    with pytest.raises(ValueError):
        C.load_base_cxr(4)


@needs_pydicom_data
def test_cxr_deterministic_and_labelled():
    a, la = C.make_cxr_case(5)
    b, lb = C.make_cxr_case(5)
    assert np.array_equal(a, b) and la == lb
    assert a.dtype == np.float32 and a.shape == (256, 256) and 0 <= a.min() and a.max() <= 1
    c, _ = C.make_cxr_case(6)
    assert not np.array_equal(a, c)
    assert C.make_cxr_case(5, size=224)[0].shape == (224, 224)
    seeds = range(S.TRAIN_SEED_START, S.TRAIN_SEED_START + 40)
    labels = [C.sample_cxr_params(s).labels for s in seeds]
    for k in C.CXR_FINDINGS:
        frac = np.mean([lab[k] for lab in labels])
        assert 0.25 < frac < 0.75, (k, frac)  # p = 0.5 each


@needs_pydicom_data
@pytest.mark.parametrize("seed", [1, 2, 8, 1001])
def test_cxr_findings_are_local_and_inside_lungs(seed):
    base = C.load_base_cxr()
    p = C.sample_cxr_params(seed, base)
    full = C.sample_cxr_params(seed, base, findings={"nodule": True, "opacity": True})
    assert replace(full, nodule=p.nodule, opacity=p.opacity) == p, "presence changes nothing else"
    lungs = C._augmented_lung_mask(p, base)
    size = C.CXR_CLASSIFIER_SIZE
    scale = size / C.CXR_BASE_SIZE
    clean, lab0 = C.render_cxr_case(replace(p, nodule=None, opacity=None), size, base)
    assert lab0 == {"nodule": 0, "opacity": 0}
    yy, xx = np.mgrid[0:size, 0:size]
    for lesion in (full.nodule, full.opacity):
        if lesion is None:
            continue
        only = replace(
            p, nodule=lesion if lesion.kind == "nodule" else None, opacity=lesion if lesion.kind == "opacity" else None
        )
        img, lab = C.render_cxr_case(only, size, base)
        assert lab == {k: int(k == lesion.kind) for k in C.CXR_FINDINGS}
        diff = np.abs(img - clean)
        cy, cx = (np.asarray(lesion.center_px) + 0.5) * scale - 0.5
        dist = np.hypot(yy - cy, xx - cx)
        # nothing changes beyond the lesion's support (+ the 2-px resize kernel)
        assert diff[dist > lesion.support_px * scale + 3].max() == 0.0
        # clearly visible, yet not saturating the image
        assert 0.1 < diff.max() < 0.9, diff.max()
        # inside the lung fields
        r, c = np.round(lesion.center_px).astype(int)
        assert lungs[r, c]
        if lesion.kind == "nodule":
            depth_mm = ndi.distance_transform_edt(lungs)[r, c] * C._CXR_MM_PER_PX
            assert depth_mm >= lesion.radius_mm
            assert 6.0 <= lesion.radius_mm <= 11.0
        else:
            assert 20 <= lesion.radius_mm <= 40


@needs_pydicom_data
@pytest.mark.parametrize("row", _cxr_labels(), ids=lambda r: r["file"])
def test_shipped_cxr_matches_generator(row):
    seed = int(row["file"][5:7])
    img, labels = C.make_cxr_case(seed)
    assert labels == {k: int(row[k]) for k in C.CXR_FINDINGS}
    shipped = C.read_base_cxr_png(CXR_DIR / "heldout" / row["file"])
    np.testing.assert_allclose(shipped, img, atol=0.5 / 65535 + 1e-7)


@pytest.mark.slow
def test_shipped_1mm_case_matches_generator():
    """sample_data/glioma_1mm: seed 1 on the MNI template's own 1 mm grid (about 20 s to generate)."""
    pytest.importorskip("nilearn")
    case_id = "glioma_1mm_001"
    ch, seg, aff = G.make_glioma_case(1, G.GLIOMA_1MM_GRID)
    f_ch, f_seg, f_aff = G.read_brats_case(GLIOMA_DIR.parent / "glioma_1mm" / case_id, case_id)
    assert f_seg.shape == (197, 233, 189) and sorted(np.unique(f_seg).tolist()) == [0, 1, 2, 4]
    np.testing.assert_array_equal(f_seg, seg)
    np.testing.assert_allclose(f_aff, aff, atol=1e-4)
    np.testing.assert_allclose(np.diag(f_aff)[:3], [1.0, 1.0, 1.0])
    for k in G.GLIOMA_CHANNELS:
        np.testing.assert_allclose(f_ch[k], ch[k], rtol=0, atol=QUANT + 1e-6 * np.abs(ch[k]).max())
