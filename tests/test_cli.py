"""``medadv`` end to end on the shipped data and demo models, and every bad input."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from napari_medadv.cli import main
from napari_medadv.core.data.paths import sample_data_dir
from napari_medadv.core.io import read_image

SD = sample_data_dir()
CASE = SD / "glioma" / "glioma_001"
CXR = SD / "cxr" / "heldout" / "case_01.png"


def run(args, capsys):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_attack_fgsm_on_brats_case(tmp_path, capsys):
    out = tmp_path / "fgsm"
    rc, stdout, err = run(["attack", CASE, "--model", "demo:unet3d", "--attack", "fgsm", "--eps", 0.05,
                           "--out", out, "--seed", 0, "--json", "--device", "cpu"], capsys)
    assert rc == 0, err
    metrics = json.loads(stdout)
    names = {p.name for p in out.iterdir()}
    assert names == {"adversarial.nii.gz", "perturbation.nii.gz", "segmentation_clean.nii.gz",
                     "segmentation_adversarial.nii.gz", "metrics.json", "record.json"}
    # geometry: every output overlays the source exactly
    src = nib.load(CASE / "glioma_001_t1.nii.gz")
    for n in ("adversarial.nii.gz", "perturbation.nii.gz", "segmentation_clean.nii.gz"):
        img = nib.load(out / n)
        np.testing.assert_allclose(img.affine, src.affine, atol=1e-5)
        assert img.shape[:3] == src.shape
    adv = nib.load(out / "adversarial.nii.gz")
    assert b"adversarially perturbed" in adv.header["descrip"].tobytes()
    # |δ| <= ε · range per channel, in native units
    clean = read_image(CASE)
    delta = np.moveaxis(adv.get_fdata(), -1, 0) - clean.array
    for c, name in enumerate(clean.channel_names):
        rng = clean.array[c].max() - clean.array[c].min()
        assert np.abs(delta[c]).max() <= 0.05 * rng + 1e-4
        assert metrics["eps_native"][name] == pytest.approx(0.05 * rng, rel=1e-5)
    d = metrics["dice"]
    assert set(d) == {"clean_vs_adversarial", "ground_truth_vs_clean", "ground_truth_vs_adversarial"}
    assert d["ground_truth_vs_adversarial"]["regions"]["WT"] < d["ground_truth_vs_clean"]["regions"]["WT"]
    assert {"psnr", "ssim", "rmse", "l0", "linf"} <= set(metrics["image_quality"])
    rec = json.loads((out / "record.json").read_text())
    assert rec["attack"] == {"name": "fgsm", "params": rec["attack"]["params"], "seed": 0}
    assert rec["model"]["checksum"].startswith("sha256:") and rec["input"]["checksum"].startswith("sha256:")
    assert rec["versions"]["torch"]


def test_attack_is_reproducible_from_record(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for o in (a, b):
        rc, _, err = run(["attack", CASE, "--model", "demo:unet3d", "--attack", "pgd", "--eps", 0.03,
                          "--steps", 2, "--seed", 7, "--out", o, "--quiet", "--device", "cpu"], capsys)
        assert rc == 0, err
    x = nib.load(a / "adversarial.nii.gz").get_fdata()
    y = nib.load(b / "adversarial.nii.gz").get_fdata()
    np.testing.assert_array_equal(x, y)


def test_tifgsm_target_and_2d_png_classifier(tmp_path, capsys):
    rc, out, err = run(["attack", CASE, "--model", "demo:unet3d", "--attack", "tifgsm", "--target", 1,
                        "--steps", 2, "--out", tmp_path / "ti", "--quiet", "--device", "cpu"], capsys)
    assert rc == 0, err
    rc, out, err = run(["attack", CXR, "--model", "demo:cxr", "--attack", "fgsm", "--eps", 0.02,
                        "--out", tmp_path / "cxr", "--json", "--device", "cpu"], capsys)
    assert rc == 0, err
    m = json.loads(out)
    assert set(m["probabilities"]) == {"nodule", "opacity"}
    assert (tmp_path / "cxr" / "adversarial.png").is_file()
    src = read_image(CXR)
    adv = read_image(tmp_path / "cxr" / "adversarial.png")
    assert adv.array.shape == src.array.shape and adv.meta.get("bit_depth") == src.meta.get("bit_depth")


def test_dgde_on_radiograph(tmp_path, capsys):
    rc, out, err = run(["attack", CXR, "--model", "demo:cxr", "--attack", "dgde",
                        "--max-queries", 300, "--seed", 0, "--out", tmp_path / "d", "--json", "--quiet",
                        "--device", "cpu"], capsys)
    assert rc == 0, err
    m = json.loads(out)
    assert m["model_calls"]["backward"] == 0
    assert "success" in m


def test_risk_pgd_with_training_cooccurrence_and_ordinal_loss(tmp_path, capsys):
    """``--cooccurrence-from`` builds C from a labels CSV (columns picked by the model's class names,
    here in the other order), ``--loss ol``; metrics.json says where C came from and gives RISK from
    the logits and the probabilities, k-accuracy and MLACC."""
    (tmp_path / "train.csv").write_text("file,opacity,nodule\na.png,1,0\nb.png,1,1\nc.png,0,1\nd.png,1,0\n")
    rc, out, err = run(["attack", CXR, "--model", "demo:cxr", "--attack", "pgd-risk", "--eps", 0.02, "--steps", 2,
                        "--cooccurrence-from", tmp_path / "train.csv", "--loss", "ol", "--seed", 0,
                        "--out", tmp_path / "r", "--json", "--quiet", "--device", "cpu"], capsys)
    assert rc == 0, err
    m = json.loads(out)
    c = m["classifier"]
    assert c["cooccurrence_source"] == f"labels CSV {tmp_path / 'train.csv'}"
    assert set(c["risk"]) == {"logits", "probabilities", "from_logits"} and c["risk"]["from_logits"]
    assert {"k1_accuracy", "mlacc", "mlacc_thresholds", "mse", "bce"} <= set(c)
    record = json.loads((tmp_path / "r" / "record.json").read_text())
    assert record["attack"]["params"]["loss"] == "ol" and record["attack"]["params"]["random_start"] is False
    # C in the model's order (nodule, opacity): counts nodule 2, opacity 3, both 1 -> rows [0, 1/2], [2/3, 0]
    p = [m["probabilities"][n]["clean"] for n in ("nodule", "opacity")]
    expected = [[0.0, 0.5], [1 - 1 / 3, 0.0]][int(np.argmax(p))]
    np.testing.assert_allclose(record["result"]["risk_target"][0], expected)


def test_lists(capsys):
    rc, out, _ = run(["attacks"], capsys)
    assert rc == 0 and "fgsm" in out and "dgde" in out and "--max-queries" in out
    rc, out, _ = run(["models"], capsys)
    assert rc == 0 and "demo:unet3d" in out and "torchscript:" in out


# ------------------------------------------------------------------ bad input: exit 2, one line


def _flair_only(tmp_path):
    p = tmp_path / "flair.nii.gz"
    shutil.copy(CASE / "glioma_001_flair.nii.gz", p)
    return p


def _truncated(tmp_path):
    data = (CASE / "glioma_001_t1.nii.gz").read_bytes()
    p = tmp_path / "truncated.nii.gz"
    p.write_bytes(data[: len(data) // 3])
    return p


def _nan_volume(tmp_path):
    img = nib.load(CASE / "glioma_001_t1.nii.gz")
    arr = np.asarray(img.dataobj, dtype=np.float32)
    arr[10, 10, 10] = np.nan
    p = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(arr, img.affine), p)
    return p


def _bad_labels(tmp_path):
    p = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.uint8), np.eye(4)), p)
    return p


def _not_an_image(tmp_path):
    p = tmp_path / "notes.nii.gz"
    p.write_bytes(gzip.compress(b"hello"))
    return p


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda t: ["attack", t / "missing.nii.gz", "--model", "demo:unet3d", "--attack", "fgsm"], "missing.nii.gz"),
        (lambda t: ["attack", _truncated(t), "--model", "demo:unet3d", "--attack", "fgsm"], "truncated.nii.gz"),
        (lambda t: ["attack", _not_an_image(t), "--model", "demo:unet3d", "--attack", "fgsm"], "notes.nii.gz"),
        (lambda t: ["attack", _flair_only(t), "--model", "demo:unet3d", "--attack", "fgsm"], "expects 4 channel"),
        (lambda t: ["attack", _nan_volume(t), "--model", "demo:unet2d", "--attack", "fgsm"], "nan.nii.gz"),
        (lambda t: ["attack", CASE, "--model", "demo:unet3d", "--attack", "fgsm", "--labels", _bad_labels(t)],
         "labels.nii.gz"),
        (lambda t: ["attack", CASE, "--model", "demo:unet3d", "--attack", "fgsm", "--eps", "-0.1"], "eps"),
        (lambda t: ["attack", CASE, "--model", "demo:unet3d", "--attack", "fgsm", "--steps", "3"], "--steps"),
        (lambda t: ["attack", CASE, "--model", "demo:unet3d", "--attack", "tifgsm", "--target", "3"], "label 3"),
        (lambda t: ["attack", CASE, "--model", "torchscript:" + str(t / "m.pt"), "--attack", "fgsm"],
         "trust-model-code"),
        (lambda t: ["attack", CASE, "--model", "demo:nope", "--attack", "fgsm"], "unknown demo model"),
        (lambda t: ["attack", t / "empty", "--model", "demo:unet3d", "--attack", "fgsm"], "empty"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, make_args, message):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    rc, stdout, err = run(make_args(tmp_path) + ["--out", out, "--device", "cpu", "--quiet"], capsys)
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("medadv: error:"), err
    assert message in lines[0]
    assert not out.exists()


def test_output_may_not_overwrite_input(tmp_path, capsys):
    case = tmp_path / "glioma_001"
    shutil.copytree(CASE, case)
    before = {p.name: p.read_bytes() for p in case.iterdir()}
    rc, _, err = run(["attack", case, "--model", "demo:unet3d", "--attack", "fgsm", "--out", case, "--quiet",
                      "--device", "cpu"], capsys)
    assert rc == 2 and "must not be the input" in err
    assert {p.name: p.read_bytes() for p in case.iterdir()} == before


def test_console_script_no_traceback(tmp_path):
    exe = shutil.which("medadv")
    cmd = [exe] if exe else [sys.executable, "-m", "napari_medadv.cli"]
    p = subprocess.run(cmd + ["attack", str(tmp_path / "nope.png"), "--model", "demo:cxr", "--attack", "fgsm",
                              "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and "nope.png" in p.stderr


def test_headless_demo(tmp_path, capsys):
    rc, out, err = run(["demo", "--headless", "--quick", "--out", tmp_path / "demo", "--device", "cpu"], capsys)
    assert rc == 0, err
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert {"unet3d-fgsm", "unet3d-ifgsm", "unet3d-tifgsm", "unet3d-pgd", "unet3d-noise", "unet2d-fgsm",
            "cxr-fgsm", "cxr-pgd", "cxr-dgde"} <= set(summary["runs"])
    fig = tmp_path / "demo" / "demo_figure.png"
    assert fig.stat().st_size > 50_000
    import imageio.v3 as iio

    img = iio.imread(fig)
    assert img.std() > 20  # not blank


def test_demo_without_display_falls_back_to_headless(monkeypatch):
    """Qt aborts the process when it finds no display: `medadv demo` must notice first."""
    import sys as _sys

    from napari_medadv import cli

    monkeypatch.setattr(_sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    assert "no display" in cli._no_display_reason()
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert cli._no_display_reason() is None
    monkeypatch.delenv("QT_QPA_PLATFORM")
    monkeypatch.setenv("DISPLAY", ":99")
    assert cli._no_display_reason() is None


def test_demo_dgde_hides_the_least_confident_positive_finding():
    from napari_medadv.core.demo_run import dgde_class

    assert dgde_class([0.966, 0.998]) == 0
    assert dgde_class([0.2, 0.7]) == 1
    assert dgde_class([0.1, 0.3]) == 1  # none positive: the most probable


def test_parser_start_up_stays_light():
    """`medadv --help` builds every command's options (the attack registry, the defense defaults);
    the readers, the phantom generators, monai and the GUI load only when a command runs."""
    code = ("import sys\nfrom napari_medadv.cli import build_parser\nbuild_parser()\n"
            "heavy = [m for m in ('scipy', 'nibabel', 'pydicom', 'imageio', 'monai', 'matplotlib', 'napari', 'qtpy')"
            " if m in sys.modules]\nassert not heavy, heavy\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
