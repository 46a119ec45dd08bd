"""Models the project did not train, built inside the tests: every one gets a correct result or
one clear error, never a silently wrong answer (issue 10).

* a traced network ending in softmax, on images larger and smaller than its ROI (sliding window);
* a MONAI bundle declaring its inputs ``T1c, T1, T2, FLAIR`` whose network passes one named
  channel through, proving which contrast reached which input;
* tuple- and dict-output networks; a 2-D classifier returning probabilities;
* a binary (non-BraTS) model: no WT/TC/ET, per-label Dice under its label name;
* constant images, huge NIfTI headers and a model that fails inside its forward.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from napari_medadv.cli import main
from napari_medadv.core.attacks import ATTACKS, MRArtifact
from napari_medadv.core.errors import InputFileError, ModelError
from napari_medadv.core.io import read_image
from napari_medadv.core.models import load_model
from napari_medadv.core.models.base import ModelInfo
from napari_medadv.core.models.channels import ChannelMismatch, canonical_contrast, match_channels
from napari_medadv.core.models.registry import register_scheme
from napari_medadv.core.pipeline import run_attack, write_outcome

AFFINE = np.diag([1.2, 1.0, 1.5, 1.0])
GRADIENT_ATTACKS = [n for n, s in ATTACKS.items() if not s.gradient_free and n != "pgd-risk"]
SEG_ATTACKS = GRADIENT_ATTACKS + ["noise"]
CLS_ATTACKS = [n for n, s in ATTACKS.items() if not issubclass(s.cls, MRArtifact)]
SMALL = {"steps": 2}  # iterative attacks: 2 steps keep the test fast


def _params(name: str, eps: float = 0.03) -> dict:
    accepted = {p.name for p in ATTACKS.get_spec(name).params}
    p = {"eps": eps} if "eps" in accepted else {}
    if "steps" in accepted:
        p["steps"] = 2
    if "max_queries" in accepted:
        p["max_queries"] = 60
    if "restarts" in accepted:
        p["restarts"] = 1
    return p


def write_case(folder: Path, shape=(16, 16, 12), names=("t1", "t1ce", "t2", "flair"), seed=0) -> Path:
    """A BraTS-like case folder; ``t1ce`` is bright in the left half (x < mid), every other
    contrast in the right half, so a segmentation of 't1ce > 0' shows which channel was read."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    mid = shape[0] // 2
    for n in names:
        v = rng.normal(0.0, 0.2, shape).astype(np.float32)
        sign = np.where(np.arange(shape[0]) < mid, 1.0, -1.0)[:, None, None]
        v += (sign if n in ("t1ce", "t1c") else -sign).astype(np.float32)
        nib.save(nib.Nifti1Image(v, AFFINE), folder / f"{folder.name}_{n}.nii.gz")
    return folder


# ----------------------------------------------------------------------------- channel matching
@pytest.mark.parametrize("a, canon", [("T1", "T1"), ("t1n", "T1"), ("T1w", "T1"), ("T1-native", "T1"),
                                      ("T1c", "T1c"), ("t1ce", "T1c"), ("t1gd", "T1c"), ("T1Gd", "T1c"),
                                      ("T1-contrast", "T1c"), ("T1post", "T1c"), ("T2", "T2"), ("t2w", "T2"),
                                      ("T2w", "T2"), ("FLAIR", "FLAIR"), ("t2f", "FLAIR"), ("T2-FLAIR", "FLAIR"),
                                      ("ADC", None), ("image", None)])
def test_contrast_synonyms(a, canon):
    assert canonical_contrast(a) == canon


def test_match_by_name_reorders_and_selects():
    m = match_channels(["t1", "t1ce", "t2", "flair"], ["T1c", "T1", "T2", "FLAIR"], 4)
    assert m.order == (1, 0, 2, 3) and m.how == "by name"
    assert "T1c <- t1ce" in m.describe()
    one = match_channels(["t1", "t1ce", "t2", "flair"], ["T2-FLAIR"], 1)
    assert one.order == (3,) and one.unused == ["t1", "t1ce", "t2"]
    assert match_channels(["channel0", "channel1"], None, 2).how == "file order"
    assert match_channels(["t1", "t1ce", "t2", "flair"], ["T1c", "T1", "T2", "FLAIR"], 4,
                          given=["t1ce", 0, "T2w", "flair"]).order == (1, 0, 2, 3)


@pytest.mark.parametrize("image, model, n, given, message", [
    (["t1", "t1ce", "t2", "flair"], ["T1c", "T1", "T2", "ADC"], 4, None, r"no unique channel for ADC"),
    (["channel0", "channel1", "channel2", "channel3"], ["T1c", "T1", "T2", "FLAIR"], 4, None,
     r"\[T1c, T1, T2, FLAIR\].*\[channel0, channel1, channel2, channel3\]"),
    (["t1"], ["FLAIR"], 1, None, r"input is FLAIR but the image's channel is t1"),
    (["t1", "t2"], None, 1, None, r"declares no channel names"),
    (["t1", "t2"], ["T1"], 1, ["pd"], r"'pd' .* not one of the image's channels"),
    (["t1", "t2"], ["T1", "T2"], 2, ["t1", "t1"], r"uses an image channel twice"),
    (["t1", "t2"], ["T1", "T2"], 2, [0], r"has 1 entries but the model takes 2"),
])
def test_mismatch_is_a_clear_error_with_both_lists(image, model, n, given, message):
    with pytest.raises(ChannelMismatch, match=message):
        match_channels(image, model, n, given)


def test_fewer_image_channels_than_inputs_says_what_is_missing():
    with pytest.raises(ModelError, match=r"expects 4 channel\(s\) \(T1c, T1, T2, FLAIR\) but the image has 1"):
        match_channels(["flair"], ["T1c", "T1", "T2", "FLAIR"], 4)


BUNDLE_METADATA = {
    "name": "channel-routing bundle (test)",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MR", "num_channels": 4,
                             "spatial_shape": ["4*n", "4*n", "4*n"],
                             "channel_def": {"0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"}}},
        "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                             "spatial_shape": ["4*n", "4*n", "4*n"],
                             "channel_def": {"0": "background", "1": "enhancing"}}},
    },
}
BUNDLE_INFERENCE = {
    "network_def": {"_target_": "torch.nn.Conv3d", "in_channels": 4, "out_channels": 2, "kernel_size": 1},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True}]},
}


def write_routing_bundle(root: Path, metadata=BUNDLE_METADATA) -> Path:
    """A 1x1x1 convolution whose class-1 logit is its input 0 (declared T1c) and nothing else."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
    (root / "configs" / "inference.json").write_text(json.dumps(BUNDLE_INFERENCE))
    (root / "configs" / "medadv.json").write_text(json.dumps({"normalization": "none"}))
    w = torch.zeros(2, 4, 1, 1, 1)
    w[1, 0] = 4.0
    torch.save({"weight": w, "bias": torch.zeros(2)}, root / "models" / "model.pt")
    return root


def test_bundle_declaring_t1c_first_gets_t1ce_at_input_0(tmp_path):
    case = write_case(tmp_path / "case")
    image = read_image(case)
    assert image.channel_names == ["t1", "t1ce", "t2", "flair"]
    model = load_model(f"bundle:{write_routing_bundle(tmp_path / 'bundle')}", trust_code=True, device="cpu")
    assert model.info.channel_names == ["T1c", "T1", "T2", "FLAIR"]
    o = run_attack(image, model, "fgsm", params={"eps": 0.02}, seed=0)
    assert o.channel_mapping.order == (1, 0, 2, 3)
    # class 1 wherever the *t1ce* image is positive: the left half. File order (t1 at input 0)
    # would segment the right half.
    left = np.zeros(image.spatial_shape, bool)
    left[: image.spatial_shape[0] // 2] = True
    assert np.array_equal(o.seg_clean == 1, image.array[1] > 0)
    assert (o.seg_clean[left] == 1).mean() > 0.95 and (o.seg_clean[~left] == 1).mean() < 0.05
    # the reordering is inside the model: perturbation, layers and files stay in image order,
    # and only t1ce (the one channel this network reads) moves
    pert = np.abs(o.adversarial - image.array).reshape(4, -1).max(1)
    assert pert[1] > 0 and np.all(pert[[0, 2, 3]] == 0)
    assert math.isfinite(o.metrics["image_quality"]["psnr"])
    assert o.metrics["image_quality"]["per_channel"]["t1"]["psnr"] == math.inf
    assert o.metrics["dice"]["clean_vs_adversarial"]["label_names"] == {"1": "enhancing"}
    assert "regions" not in o.metrics["dice"]["clean_vs_adversarial"]
    paths = write_outcome(o, tmp_path / "out")
    record = json.loads(Path(paths["record"]).read_text())
    assert record["channel_mapping"]["pairs"] == [["T1c", "t1ce"], ["T1", "t1"], ["T2", "t2"], ["FLAIR", "flair"]]
    assert json.loads(Path(paths["metrics"]).read_text())["channels"].startswith("matched by name")


def test_unmatched_names_refused_in_the_cli_with_the_override_named(tmp_path, capsys):
    meta = json.loads(json.dumps(BUNDLE_METADATA))
    meta["network_data_format"]["inputs"]["image"]["channel_def"] = {"0": "T1c", "1": "T1", "2": "T2", "3": "ADC"}
    bundle = write_routing_bundle(tmp_path / "bundle", meta)
    case = write_case(tmp_path / "case")
    argv = ["attack", str(case), "--model", f"bundle:{bundle}", "--trust-model-code", "--attack", "fgsm",
            "--eps", "0.02", "--out", str(tmp_path / "out"), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "[T1c, T1, T2, ADC]" in err and "[t1, t1ce, t2, flair]" in err and "--channels" in err
    assert not (tmp_path / "out").exists()
    # the override the message names works
    assert main(argv + ["--channels", "t1ce,t1,t2,flair"]) == 0
    record = json.loads((tmp_path / "out" / "record.json").read_text())
    assert record["channel_mapping"]["how"] == "given" and record["channel_mapping"]["order"] == [1, 0, 2, 3]


def test_model_without_channel_names_gets_file_order_on_record(tmp_path):
    case = write_case(tmp_path / "case")
    meta = json.loads(json.dumps(BUNDLE_METADATA))
    del meta["network_data_format"]["inputs"]["image"]["channel_def"]
    model = load_model(f"bundle:{write_routing_bundle(tmp_path / 'b', meta)}", trust_code=True, device="cpu")
    o = run_attack(read_image(case), model, "fgsm", params={"eps": 0.02}, seed=0)
    assert o.channel_mapping.how == "file order" and o.channel_mapping.order == (0, 1, 2, 3)
    assert o.metrics["channels"].startswith("file order (the model declares no channel names)")


def test_one_contrast_model_reads_its_channel_of_a_case(tmp_path):
    """A FLAIR-only model on a 4-contrast case: it reads (and the attack perturbs) FLAIR alone,
    and the image PSNR stays finite although three channels are untouched."""
    case = write_case(tmp_path / "case")
    net = nn.Conv3d(1, 2, 3, padding=1)
    info = ModelInfo(task="segmentation", spatial_dims=3, in_channels=1, output="softmax",
                     normalization="zscore", channel_names=["T2-FLAIR"], label_names={"1": "lesion"})
    model = _wrap(net, info)
    o = run_attack(read_image(case), model, "ifgsm", params={"eps": 0.03, "steps": 2}, seed=0)
    assert o.channel_mapping.order == (3,) and o.channel_mapping.unused == ["t1", "t1ce", "t2"]
    iq = o.metrics["image_quality"]
    assert [iq["per_channel"][c]["psnr"] for c in ("t1", "t1ce", "t2")] == [math.inf] * 3
    assert math.isfinite(iq["psnr"]) and iq["per_channel"]["flair"]["psnr"] < math.inf
    # all-channel PSNR = 10 log10(1 / mean normalised MSE): only flair contributes, a quarter of its MSE
    assert iq["psnr"] == pytest.approx(iq["per_channel"]["flair"]["psnr"] + 10 * math.log10(4), abs=1e-3)


# ----------------------------------------------------------------------------- outputs, tiling
class SoftmaxNet(nn.Module):
    """A segmentation network whose graph ends in softmax (returns probabilities)."""

    def __init__(self, cin=4, k=3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(cin, k, 3, padding=1)

    def forward(self, x):
        return torch.softmax(self.conv(x), dim=1)


def _wrap(net, info, **kw):
    from napari_medadv.core.models.base import LoadedModel, NativeInputModel

    module = NativeInputModel(net.eval(), info, **kw)
    for p in module.parameters():
        p.requires_grad_(False)
    return LoadedModel(module=module, info=info, spec="test:foreign")


def _scripted_softmax(tmp_path: Path, roi) -> str:
    ts = torch.jit.trace(SoftmaxNet().eval(), torch.zeros(1, 4, *roi))
    path = tmp_path / "softmax_net.pt"
    ts.save(str(path))
    (tmp_path / "softmax_net.json").write_text(json.dumps({
        "task": "segmentation", "spatial_dims": 3, "in_channels": 4, "output": "probabilities",
        "normalization": "zscore-nonzero", "channel_names": ["T1", "T1c", "T2", "FLAIR"],
        "label_values": [0, 1, 2], "label_names": {"1": "core", "2": "oedema"}, "roi_size": list(roi)}))
    return f"torchscript:{path}"


@pytest.mark.parametrize("shape", [(20, 18, 12), (6, 6, 6)], ids=["larger-than-roi", "smaller-than-roi"])
@pytest.mark.parametrize("attack", SEG_ATTACKS)
def test_softmax_torchscript_with_sliding_window_runs_every_attack(tmp_path, shape, attack):
    model = load_model(_scripted_softmax(tmp_path, (8, 8, 8)), trust_code=True, device="cpu")
    image = read_image(write_case(tmp_path / "case", shape=shape))
    target = 1 if ATTACKS.get_spec(attack).targeted == "required" else None
    o = run_attack(image, model, attack, params=_params(attack), target=target, seed=0)
    rng = image.array.reshape(4, -1).max(1) - image.array.reshape(4, -1).min(1)
    assert np.all(np.abs(o.perturbation).reshape(4, -1).max(1) <= 0.03 * rng + 1e-4)
    assert np.isfinite(o.metrics["image_quality"]["psnr"]) or attack == "noise"
    block = o.metrics["dice"]["clean_vs_adversarial"]
    assert set(block["label_names"].values()) == {"core", "oedema"} and "regions" not in block
    assert all(np.isfinite(v) for v in block["per_label"].values())


def test_tiled_gradient_equals_untiled_when_the_roi_covers_the_image():
    """One padded window (ROI larger than the image): the sliding-window path's input gradient
    equals the plain forward's to 1e-5 (float32 Gaussian weighting divides out exactly up to
    rounding)."""
    info = ModelInfo(task="segmentation", spatial_dims=3, in_channels=4, output="probabilities",
                     roi_size=[12, 12, 12])
    net = SoftmaxNet()
    tiled, plain = _wrap(net, info).module, _wrap(net, info, sliding_window=False).module
    x = torch.randn(1, 4, 10, 9, 8, generator=torch.Generator().manual_seed(1))
    grads = []
    for m in (tiled, plain):
        xi = x.clone().requires_grad_(True)
        out = m(xi)
        (out[:, 1] * torch.linspace(0, 1, out[:, 1].numel()).reshape(out[:, 1].shape)).sum().backward()
        grads.append(xi.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


class DeepSupervision(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(4, 3, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y, nn.functional.avg_pool3d(y, 2)  # full resolution first, then a coarser head


class DictOut(DeepSupervision):
    def forward(self, x):
        y = self.conv(x)
        return {"aux": y.mean((2, 3, 4)), "out": y}


SEG3 = dict(task="segmentation", spatial_dims=3, in_channels=4, output="softmax", normalization="zscore",
            channel_names=["t1", "t1ce", "t2", "flair"], label_values=[0, 1, 2])


@pytest.mark.parametrize("net", [DeepSupervision(), DictOut()], ids=["tuple", "dict"])
@pytest.mark.parametrize("roi", [None, [8, 8, 8]], ids=["whole", "windows"])
def test_tuple_and_dict_outputs_pick_the_prediction(tmp_path, net, roi):
    model = _wrap(net, ModelInfo(**SEG3, roi_size=roi))
    image = read_image(write_case(tmp_path / "case"))
    for attack in ("fgsm", "pgd"):
        o = run_attack(image, model, attack, params=_params(attack), seed=0)
        assert o.clean_output.shape[1:] == (3, *image.spatial_shape)
        assert all(np.isfinite(v) for v in o.metrics["dice"]["clean_vs_adversarial"]["per_label"].values())


def test_ambiguous_and_declared_outputs(tmp_path):
    class TwoFull(DeepSupervision):
        def forward(self, x):
            y = self.conv(x)
            return y, -y

    image = read_image(write_case(tmp_path / "case"))
    with pytest.raises(ModelError, match=r"returned 2 outputs .* output_index"):
        run_attack(image, _wrap(TwoFull(), ModelInfo(**SEG3)), "fgsm", params={"eps": 0.02}, seed=0)
    o1 = run_attack(image, _wrap(TwoFull(), ModelInfo(**SEG3, output_index=1)), "fgsm", params={"eps": 0.02}, seed=0)
    o0 = run_attack(image, _wrap(TwoFull(), ModelInfo(**SEG3, output_index=0)), "fgsm", params={"eps": 0.02}, seed=0)
    torch.testing.assert_close(o1.clean_output, -o0.clean_output)

    class Keys(DeepSupervision):
        def forward(self, x):
            y = self.conv(x)
            return {"a": y, "b": y}

    with pytest.raises(ModelError, match=r"keys \['a', 'b'\].*output_key"):
        run_attack(image, _wrap(Keys(), ModelInfo(**SEG3)), "fgsm", params={"eps": 0.02}, seed=0)
    run_attack(image, _wrap(Keys(), ModelInfo(**SEG3, output_key="b")), "fgsm", params={"eps": 0.02}, seed=0)


# ----------------------------------------------------------------------------- classifier
class ProbClassifier(nn.Module):
    """A 2-D multi-label classifier whose forward ends in sigmoid (returns probabilities)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 3, 5, stride=2)
        self.head = nn.Linear(3, 3)

    def forward(self, x):
        return torch.sigmoid(self.head(self.conv(x).amax((2, 3))))


@pytest.mark.parametrize("attack", CLS_ATTACKS)
def test_2d_classifier_returning_probabilities_runs_every_attack(tmp_path, attack):
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    img = (rng.random((48, 40)) * 200 + 20).astype(np.uint8)
    iio.imwrite(tmp_path / "cr.png", img)
    info = ModelInfo(task="classification", spatial_dims=2, in_channels=1, output="probabilities",
                     normalization="minmax", channel_names=["radiograph"], class_names=["a", "b", "c"],
                     roi_size=[32, 32])
    model = _wrap(ProbClassifier(), info)
    image = read_image(tmp_path / "cr.png")
    params = _params(attack, eps=0.05)
    if attack == "pgd-risk":  # Ghamizi's inverse co-occurrence matrix of the three findings
        params["cooccurrence"] = np.array([[0.0, 1.0, 0.5], [1.0, 0.0, 0.5], [0.5, 0.5, 0.0]])
    target = 0 if ATTACKS.get_spec(attack).targeted == "required" else None
    o = run_attack(image, model, attack, params=params, target=target, seed=0)
    if attack != "dgde":  # DGDE is an L0 attack: its pixels may take any value in the range
        assert np.abs(o.perturbation).max() <= 0.05 * 200 + 1e-3
    probs = o.metrics["probabilities"]
    assert set(probs) == {"a", "b", "c"}
    assert all(0 <= p["clean"] <= 1 and 0 <= p["adversarial"] <= 1 for p in probs.values())


# ----------------------------------------------------------------------------- labels follow the model
def test_binary_model_gets_per_label_dice_named_and_no_brats_regions(tmp_path):
    info = ModelInfo(task="segmentation", spatial_dims=3, in_channels=4, output="softmax",
                     normalization="zscore", channel_names=["t1", "t1ce", "t2", "flair"],
                     label_values=[0, 1], label_names={"1": "brain"})
    image = read_image(write_case(tmp_path / "case"))
    labels = (image.array[1] > 0).astype(np.int32)
    o = run_attack(image, _wrap(nn.Conv3d(4, 2, 1), info), "fgsm", params={"eps": 0.02}, labels=labels, seed=0)
    for block in o.metrics["dice"].values():
        assert "regions" not in block
        assert block["label_names"] == {"1": "brain"} and set(block["per_label"]) == {"1"}


def test_sigmoid_binary_model_without_regions(tmp_path):
    """One sigmoid output channel (a common foreground model): label 1 where p > 0.5, no regions."""
    info = ModelInfo(task="segmentation", spatial_dims=3, in_channels=4, output="sigmoid",
                     normalization="zscore", channel_names=["t1", "t1ce", "t2", "flair"], label_names={"1": "fg"})
    image = read_image(write_case(tmp_path / "case"))
    labels = (image.array[1] > 0).astype(np.int32)
    o = run_attack(image, _wrap(nn.Conv3d(4, 1, 1), info), "ifgsm", params={"eps": 0.02, "steps": 2},
                   labels=labels, seed=0)
    assert set(np.unique(o.seg_clean)) <= {0, 1}
    assert "regions" not in o.metrics["dice"]["ground_truth_vs_clean"]
    assert o.metrics["dice"]["ground_truth_vs_clean"]["label_names"] == {"1": "fg"}


def test_brats_labelled_model_keeps_the_regions(tmp_path):
    info = ModelInfo(task="segmentation", spatial_dims=3, in_channels=4, output="softmax",
                     normalization="zscore", channel_names=["t1", "t1ce", "t2", "flair"], label_values=[0, 1, 2, 4])
    image = read_image(write_case(tmp_path / "case"))
    o = run_attack(image, _wrap(nn.Conv3d(4, 4, 1), info), "fgsm", params={"eps": 0.02}, seed=0)
    block = o.metrics["dice"]["clean_vs_adversarial"]
    assert set(block["regions"]) == {"WT", "TC", "ET"}
    assert block["label_names"] == {"1": "NCR/NET", "2": "ED", "4": "ET"}


# ----------------------------------------------------------------------------- hostile inputs
def test_constant_image_is_refused(tmp_path):
    folder = tmp_path / "blank"
    folder.mkdir()
    for n in ("t1", "t1ce", "t2", "flair"):
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), AFFINE), folder / f"blank_{n}.nii.gz")
    info = ModelInfo(**SEG3)
    with pytest.raises(InputFileError, match=r"blank: the image is constant \(every voxel 0\)"):
        run_attack(read_image(folder), _wrap(nn.Conv3d(4, 3, 1), info), "fgsm", params={"eps": 0.02}, seed=0)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_huge_nifti_header_is_refused_before_reading(tmp_path, suffix, capsys):
    import gzip

    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape((30000, 30000, 30000))
    header["vox_offset"] = 352
    payload = header.binaryblock + b"\0" * 4 + np.zeros(64, np.float32).tobytes()
    path = tmp_path / f"huge{suffix}"
    if suffix == ".nii.gz":
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)
    with pytest.raises(InputFileError, match=r"huge.*30000×30000×30000 voxels"):
        read_image(path)
    assert main(["attack", str(path), "--model", "demo:unet3d", "--attack", "fgsm", "--out",
                 str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "huge" in err and "Traceback" not in err


class Exploding(nn.Module):
    def forward(self, x):
        raise RuntimeError("CUDA error: device-side assert triggered\nCUDA kernel errors might be reported later")


register_scheme("exploding", lambda value, **kw: (Exploding(), ModelInfo(**SEG3), None))


def test_failure_inside_a_model_is_one_line_with_a_log(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDADV_LOG_DIR", str(tmp_path / "logs"))
    case = write_case(tmp_path / "case")
    rc = main(["attack", str(case), "--model", "exploding:x", "--attack", "fgsm", "--out", str(tmp_path / "o"),
               "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert err.startswith("medadv: internal error: RuntimeError: CUDA error: device-side assert triggered (details: ")
    log = Path(err.rsplit("(details: ", 1)[1].rstrip(")"))
    assert log.parent == tmp_path / "logs" and "Traceback" in log.read_text() and "exploding:x" in log.read_text()
    assert not (tmp_path / "o").exists()


def test_intensities_outside_the_declared_input_range_are_refused(tmp_path):
    """torchxrayvision-style models declare 8-bit input ([0, 255]); a 16-bit radiograph would be
    normalised to ±500 000 instead of ±1024 and every output would be meaningless."""
    import imageio.v3 as iio

    img16 = (np.random.default_rng(0).random((48, 40)) * 60000).astype(np.uint16)
    iio.imwrite(tmp_path / "cr16.png", img16)
    info = ModelInfo(task="classification", spatial_dims=2, in_channels=1, output="probabilities",
                     normalization="fixed", norm_mean=[127.5], norm_std=[255 / 2048], class_names=["a", "b", "c"],
                     extra={"input_range": [0, 255]})
    with pytest.raises(InputFileError, match=r"cr16.png: intensities .* outside the range 0..255"):
        run_attack(read_image(tmp_path / "cr16.png"), _wrap(ProbClassifier(), info), "fgsm",
                   params={"eps": 0.02}, seed=0)
    iio.imwrite(tmp_path / "cr8.png", (img16 // 256).astype(np.uint8))
    run_attack(read_image(tmp_path / "cr8.png"), _wrap(ProbClassifier(), info), "fgsm", params={"eps": 0.02}, seed=0)


def test_image_channel_names_from_a_sidecar_and_from_the_file_name(tmp_path):
    """A 4-D NIfTI names its channels in a JSON sidecar (scan.json beside scan.nii.gz); a
    single-contrast file names its one channel in its file name (BIDS sub-01_FLAIR, BraTS -t2f)."""
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(10, 10, 8, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, AFFINE), tmp_path / "scan.nii.gz")
    assert read_image(tmp_path / "scan.nii.gz").channel_names == ["channel0", "channel1", "channel2", "channel3"]
    (tmp_path / "scan.json").write_text(json.dumps({"channel_names": ["T1Gd", "T1w", "T2w", "FLAIR"]}))
    image = read_image(tmp_path / "scan.nii.gz")
    assert image.channel_names == ["T1Gd", "T1w", "T2w", "FLAIR"]
    assert match_channels(image.channel_names, ["t1", "t1ce", "t2", "flair"], 4).order == (1, 0, 2, 3)
    (tmp_path / "scan.json").write_text(json.dumps({"channel_names": ["T1"]}))
    with pytest.raises(InputFileError, match=r"scan.json: channel_names must list 4 name"):
        read_image(tmp_path / "scan.nii.gz")
    for name, expected in (("sub-01_FLAIR.nii.gz", "FLAIR"), ("BraTS-GLI-00001-000-t2f.nii.gz", "t2f"),
                           ("case_t1ce.nii.gz", "t1ce"), ("brain.nii.gz", "image")):
        nib.save(nib.Nifti1Image(vol[..., 0], AFFINE), tmp_path / name)
        assert read_image(tmp_path / name).channel_names == [expected], name
    flair_model = _wrap(nn.Conv3d(1, 2, 1), ModelInfo(task="segmentation", spatial_dims=3, in_channels=1,
                                                       channel_names=["FLAIR"], label_values=[0, 1]))
    run_attack(read_image(tmp_path / "sub-01_FLAIR.nii.gz"), flair_model, "fgsm", params={"eps": 0.02}, seed=0)
    with pytest.raises(ChannelMismatch, match=r"input is FLAIR but the image's channel is t1ce"):
        run_attack(read_image(tmp_path / "case_t1ce.nii.gz"), flair_model, "fgsm", params={"eps": 0.02}, seed=0)
