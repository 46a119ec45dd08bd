"""``medadv attack ... --breaking-eps`` and the strong attacks on the command line (tiny models)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from napari_medadv.cli import main

sys.path.insert(0, str(Path(__file__).parent / "core"))
import _tiny_models  # noqa: E402  (registers the tiny: scheme)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = _tiny_models.make_small_cases(tmp_path_factory.mktemp("brk_cases"), names=("glioma_001",), size=24)
    return root / "glioma_001"


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_breaking_eps_written_to_metrics_json(case, tmp_path, capsys):
    from napari_medadv.core.breaking import breaking_eps
    from napari_medadv.core.io import read_image
    from napari_medadv.core.models import load_model

    out = tmp_path / "fgsm"
    rc, stdout, err = _run(["attack", case, "--model", "tiny:0", "--attack", "fgsm", "--eps", 0.05, "--seed", 0,
                            "--breaking-eps", "--break-max-eps", 0.12, "--out", out, "--quiet"], capsys)
    assert rc == 0, err
    assert "breaks at ε" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    brk = metrics["breaking_eps"]
    assert set(brk) == {"1", "2", "4", "WT", "TC", "ET"}
    assert metrics["breaking"]["threshold"] == 0.5 and metrics["breaking"]["eps_max"] == 0.12
    assert set(metrics["breaking"]["dice_auc"]) == set(brk)
    # the same figures as the core search on the same image (what the CLI read: the case with its labels)
    image = read_image(case)
    core = breaking_eps(image, load_model("tiny:0", device="cpu"), "fgsm", labels=image.labels, eps_max=0.12)
    assert brk == pytest.approx({k: v for k, v in core.breaking_eps.items()})


def test_strong_attack_with_its_own_option(case, tmp_path, capsys):
    out = tmp_path / "apgd"
    rc, stdout, err = _run(["attack", case, "--model", "tiny:0", "--attack", "apgd", "--eps", 0.03, "--steps", 3,
                            "--objective", "dlr", "--seed", 1, "--out", out, "--json", "--quiet"], capsys)
    assert rc == 0, err
    metrics = json.loads(stdout)
    assert metrics["attack"] == "apgd" and metrics["model_calls"]["backward"] == 4
    rec = json.loads((out / "record.json").read_text())
    assert rec["attack"]["params"]["objective"] == "dlr"


@pytest.mark.parametrize("extra, message", [
    (["--attack", "motion", "--breaking-eps"], "has none"),
    (["--attack", "fgsm", "--breaking-eps", "--break-threshold", 1.5], "between 0 and 1"),
    (["--attack", "fgsm", "--breaking-eps", "--break-max-eps", 0], "--break-max-eps"),
    (["--attack", "apgd", "--objective", "hinge"], "objective must be"),
    (["--attack", "segpgd", "--loss", "dice"], "cross-entropy"),
])
def test_bad_breaking_and_strong_attack_options_exit_2(case, tmp_path, capsys, extra, message):
    rc, _, err = _run(["attack", case, "--model", "tiny:0", *extra, "--out", tmp_path / "o", "--quiet"], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "o").exists()


def test_strong_attacks_in_a_study_grid(case, tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["study", case.parent, "--model", "tiny:0", "--attack", "segpgd", "--attack", "cospgd", "--attack", "apgd",
            "--eps", "0.05", "--steps", "2", "--sequential", "--out", out]
    rc, stdout, err = _run(argv, capsys)
    assert rc == 0, err
    md = (out / "report.md").read_text()
    for name in ("segpgd", "cospgd", "apgd"):
        assert f"{name}[eps=0.05,steps=2]" in md
