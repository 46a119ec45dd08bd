"""``medadv study`` and ``medadv train --defense`` on the command line (in-process, tiny models)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "core"))
import _tiny_models  # noqa: E402  (registers the tiny: scheme)

from napari_medadv.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return _tiny_models.make_small_cases(tmp_path_factory.mktemp("cli_cases"), names=("glioma_001", "glioma_002"),
                                         size=24)


def test_study_flags_sequential_and_resume(cases, tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["study", str(cases), "--model", "tiny:0", "--model", "tiny:1", "--attack", "fgsm", "--attack", "ifgsm",
            "--eps", "0.05", "--steps", "2", "--sequential", "--out", str(out)]
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert "2 cases (2 run, 0 already stored)" in cap.out
    assert "2/2 cases" in cap.err and "ETA" in cap.err
    md = (out / "report.md").read_text()
    assert "ifgsm[eps=0.05,steps=2]" in md and "medadv study" in md
    assert main(argv) == 0
    assert "(0 run, 2 already stored)" in capsys.readouterr().out


def test_study_from_yaml_with_threads_cluster(cases, tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"dataset: {cases}\nmodels: [tiny:0]\nattacks:\n  - attack: fgsm\n    eps: [0.02, 0.05]\n")
    out = tmp_path / "s"
    assert main(["study", "--grid", str(grid), "--workers", "2", "--threads", "--quiet", "--out", str(out)]) == 0
    assert (out / "summary_segmentation.csv").is_file()
    assert "2 cases (2 run" in capsys.readouterr().out


def test_study_matched_psnr_flags(cases, tmp_path, capsys):
    out = tmp_path / "m"
    argv = ["study", str(cases), "--model", "tiny:0", "--attack", "fgsm", "--attack", "noise", "--psnr", "35",
            "--match-tol", "0.25", "--no-iterations", "--sequential", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    assert "2 cases (2 run" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert "fgsm[psnr=35,tol=0.25]" in md and "noise[psnr=35,tol=0.25]" in md and "dice_vs_psnr.png" in md
    assert "--psnr 35.0 --match-tol 0.25" in md  # the replayable command line
    import pandas as pd

    df = pd.read_csv(out / "per_case.csv")
    m = df[df["grid_key"] != "none"]
    assert len(m) == 4 and m["match_reached"].all() and (abs(m["match_achieved"] - 35) <= 0.25).all()


def test_study_losses_and_training_cooccurrence_flags(tmp_path, capsys):
    """``--loss mse bce ol`` crosses the gradient attacks with Ghamizi's three losses (Table 5);
    ``--cooccurrence-from`` takes C from training labels, said in the report."""
    import imageio.v3 as iio
    import numpy as np
    import pandas as pd

    from napari_medadv.core.models.registry import register_scheme

    register_scheme("tinycls", _tiny_models.tiny_classifier_loader)
    rng = np.random.default_rng(0)
    rows = ["file,a,b,c"]
    for i in range(3):
        iio.imwrite(tmp_path / f"im{i}.png", (rng.random((16, 16)) * 255).astype(np.uint8))
        rows.append(f"im{i}.png,{i % 2},1,0")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "train.csv").write_text("file,c,b,a\nx,1,0,0\ny,0,1,1\nz,1,1,0\n")
    out = tmp_path / "s"
    argv = ["study", str(tmp_path), "--model", "tinycls:0", "--attack", "pgd-risk", "--eps", "0.05", "--steps", "2",
            "--loss", "mse", "bce", "ol", "--cooccurrence-from", str(tmp_path / "train.csv"), "--sequential",
            "--quiet", "--out", str(out)]
    assert main(argv) == 0
    df = pd.read_csv(out / "per_case.csv")
    keys = set(df["grid_key"]) - {"none"}
    assert keys == {f"pgd-risk[eps=0.05,loss={x},steps=2]" for x in ("mse", "bce", "ol")}
    md = (out / "report.md").read_text()
    assert f"training labels {tmp_path / 'train.csv'}" in md and "MLACC" in md and "RISK (logits)" in md
    assert "--loss mse bce ol" in md
    assert main(["study", str(tmp_path), "--model", "tinycls:0", "--attack", "pgd-risk", "--loss", "hinge",
                 "--out", str(tmp_path / "o")]) == 2
    assert "unknown loss hinge" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["study", "{tmp}/nowhere", "--model", "tiny:0", "--attack", "fgsm", "--out", "{tmp}/o"], "nowhere: dataset folder not found"),
    (["study", "{cases}", "--model", "tiny:0", "--attack", "nope", "--out", "{tmp}/o"], "unknown attack 'nope'"),
    (["study", "{cases}", "--model", "tiny:0", "--out", "{tmp}/o"], "give --attack"),
    (["study", "{cases}", "--model", "tiny:0", "--psnr", "35", "--out", "{tmp}/o"], "need --attack"),
    (["study", "{cases}", "--model", "tiny:0", "--attack", "fgsm", "--psnr", "-3", "--out", "{tmp}/o"],
     "psnr target -3.0 must be a finite PSNR"),
    (["study", "--grid", "{tmp}/missing.yaml", "--out", "{tmp}/o"], "missing.yaml: grid file not found"),
    (["study", "phantoms:glioma:999-1000", "--model", "tiny:0", "--attack", "fgsm", "--out", "{tmp}/o"],
     "held-out seeds"),
])
def test_study_errors_are_one_line(cases, tmp_path, capsys, argv, needle):
    argv = [a.format(tmp=tmp_path, cases=cases) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and err.startswith("medadv: error:") and "\n" not in err and "Traceback" not in err


def test_train_defense_options_parse(capsys):
    with pytest.raises(SystemExit):
        main(["train", "demo-unet3d", "--help"])
    text = capsys.readouterr().out
    for flag in ("--defense", "--temperature", "--beta", "--radius", "--eps"):
        assert flag in text
    assert main(["train", "demo-unet3d", "--defense", "adversarial", "--beta", "1.5", "--out", "/nonexistent-x"]) == 2
    assert "beta (weight of the adversarial loss) must be in [0, 1]" in capsys.readouterr().err
