"""``medadv attack ... --sanity``: the sanity block in metrics.json and one stderr line per failed check."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from napari_medadv.cli import main

sys.path.insert(0, str(Path(__file__).parent / "core"))
import _tiny_models  # noqa: E402  (registers the tiny: and masked: schemes)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = _tiny_models.make_small_cases(tmp_path_factory.mktemp("sanity_cases"), names=("glioma_001",), size=24)
    return root / "glioma_001"


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_sanity_block_and_warnings(case, tmp_path, capsys):
    out = tmp_path / "masked"
    rc, stdout, err = _run(["attack", case, "--model", "masked:round", "--attack", "fgsm", "--eps", 0.03, "--seed", 0,
                            "--sanity", "--sanity-source", "tiny:0", "--out", out], capsys)
    assert rc == 0, err  # failed checks warn; the exit code is the attack's
    sanity = json.loads((out / "metrics.json").read_text())["sanity"]
    assert sanity["passed"] is False and "zero_gradients" in sanity["failed"]
    assert sanity["settings"]["source_model"] == "tiny:0" and "transfer_eps" in sanity["tables"]
    lines = [ln for ln in err.splitlines() if ln.startswith("medadv: warning: sanity check")]
    assert len(lines) == len(sanity["failed"]) and "possible gradient masking" in lines[0]
    assert "sanity:" in stdout and "checks failed" in stdout


def test_sanity_quiet_on_a_plain_model_and_bad_usage(case, tmp_path, capsys):
    out = tmp_path / "tiny"
    rc, stdout, err = _run(["attack", case, "--model", "tiny:0", "--attack", "fgsm", "--eps", 0.03, "--seed", 0,
                            "--sanity", "--out", out, "--quiet"], capsys)
    assert rc == 0, err
    assert "sanity check" not in err and "checks passed" in stdout
    assert json.loads((out / "metrics.json").read_text())["sanity"]["passed"] is True
    rc, _, err = _run(["attack", case, "--model", "tiny:0", "--attack", "fgsm", "--sanity-source", "tiny:1",
                       "--out", tmp_path / "x"], capsys)
    assert rc == 2 and "--sanity-source needs --sanity" in err
