"""The shared one-attack pipeline: ROI defaults, live ε, target resolution and label conventions."""

import numpy as np
import pytest

from napari_medadv.core.live import LiveEps
from napari_medadv.core.pipeline import content_roi, run_attack


def test_content_roi_on_skull_stripped_case(case):
    roi = content_roi(case)
    assert roi is not None and roi.shape == case.spatial_shape
    assert 0.1 < roi.mean() < 0.9


@pytest.mark.parametrize("attack, params", [("noise", {"eps": 0.05}), ("fgsm", {"eps": 0.05})])
def test_perturbations_stay_on_the_brain_by_default(case, unet3d, attack, params):
    o = run_attack(case, unet3d, attack, params=params, seed=0, labels=case.labels)
    changed = np.any(o.perturbation != 0, axis=0)
    assert not changed[~content_roi(case)].any()
    assert o.metrics["roi"].startswith("auto")
    everywhere = run_attack(case, unet3d, "noise", params={"eps": 0.05}, seed=0, roi=None)
    assert np.any(everywhere.perturbation != 0, axis=0)[~content_roi(case)].any()


def test_live_eps_equals_fgsm_run(case, unet3d):
    live = LiveEps(case, unet3d, labels=case.labels)
    adv, out = live.at(0.03)
    ref = run_attack(case, unet3d, "fgsm", params={"eps": 0.03}, labels=case.labels, seed=0)
    np.testing.assert_allclose(adv, ref.adversarial, atol=1e-6)
    assert out.shape[2:] == case.spatial_shape


def test_label_values_map_to_indices_and_back(unet3d, case):
    tgt = unet3d.label_map_to_target(case.labels)
    assert set(np.unique(tgt.numpy()).tolist()) <= {0, 1, 2, 3}
    assert unet3d.label_value_to_index(4) == 3
    with pytest.raises(ValueError, match="label 3"):
        unet3d.label_value_to_index(3)
    bad = case.labels.copy()
    bad[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"\[7\]"):
        unet3d.label_map_to_target(bad)


def test_target_mask_attack_moves_towards_mask(case, unet3d):
    mask = np.zeros(case.spatial_shape, dtype=np.int16)
    mask[20:40, 30:50, 25:40] = 2
    o = run_attack(case, unet3d, "tifgsm", params={"eps": 0.05, "steps": 3}, target=mask, seed=0)
    inside = mask == 2
    assert (o.seg_adv[inside] == 2).mean() > (o.seg_clean[inside] == 2).mean()


def test_written_artifact_says_what_it_is(case, unet3d, tmp_path):
    """A simulated MR artifact is labelled as such (not as an adversarial image) and its
    torchio parameters go into record.json; adversarial files keep 'NOT ORIGINAL' within the
    64 characters of a DICOM SeriesDescription."""
    import json

    import nibabel as nib

    from napari_medadv.core.pipeline import write_outcome

    o = run_attack(case, unet3d, "biasfield", params={"severity": 0.4}, seed=3, labels=case.labels)
    files = write_outcome(o, tmp_path / "bias", command=["test"])
    descrip = nib.load(files["adversarial"]).header["descrip"].tobytes().decode(errors="ignore")
    assert descrip.startswith("simulated MR artifact (biasfield severity=0.4)") and "NOT ORIGINAL" in descrip
    assert "adversarial" not in descrip
    record = json.loads((tmp_path / "bias" / "record.json").read_text())
    assert record["result"]["severity"] == 0.4 and record["result"]["torchio_params"]

    f = run_attack(case, unet3d, "fgsm", params={"eps": 0.0313725}, seed=0)
    write_outcome(f, tmp_path / "fgsm", command=["test"])
    descrip = nib.load(tmp_path / "fgsm" / "adversarial.nii.gz").header["descrip"].tobytes().decode(errors="ignore")
    assert "NOT ORIGINAL" in descrip[:64] and descrip.startswith("adversarially perturbed (fgsm")
