"""nnU-Net v2 result folders as models (issue 12): ``nnunet:DIR[:FOLDS][:notta]``.

Small result folders are built offline (``_nnunet_folders.py``: plans, dataset.json, fingerprint and
checkpoints pickled as nnU-Net writes them) and checked against nnU-Net itself:

* the networks: key-for-key and output-equal to ``dynamic_network_architectures``' U-Nets;
* every step on its own (resampling, Gaussian, tile steps, each normalisation scheme) against
  nnU-Net's functions;
* the whole wrapped forward against ``nnUNetPredictor.predict_single_npy_array`` for 3-D full-res
  (MR z-score with the non-zero mask, a transpose, two folds, mirroring; CT with a ResEnc U-Net and
  anisotropic resampling; nnU-Net's torch resampling), a 2-D configuration over a volume, a
  region-based (BraTS) model and a 2-D natural-image model. nnU-Net accumulates its tiles in
  float16; against nnU-Net with that one accumulator switched to float32 the probabilities agree
  to 1e-5 (measured: at most 2.4e-7), against stock nnU-Net within its float16 rounding;
* gradients (finite differences through the whole chain), every registered attack, checkpoint
  safety, the errors, and the guide's example.

nnunetv2 and dynamic_network_architectures are test-only dependencies (``.ci/run`` installs them with
``--no-deps``); the comparisons skip where they are not installed.
"""

from __future__ import annotations

import inspect
import json
import pathlib
import pickle
import shlex
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _nnunet_folders import arch_kwargs, make_result_folder  # noqa: E402

from napari_medadv.core.attacks import ATTACKS  # noqa: E402
from napari_medadv.core.errors import ModelError  # noqa: E402
from napari_medadv.core.io import read_image  # noqa: E402
from napari_medadv.core.models import load_model  # noqa: E402
from napari_medadv.core.models.nnunet.folder import CHECKPOINT_SAFE_GLOBALS, load_checkpoint  # noqa: E402
from napari_medadv.core.models.nnunet.inference import gaussian_weights, sliding_window_steps  # noqa: E402
from napari_medadv.core.models.nnunet.networks import build_network  # noqa: E402
from napari_medadv.core.models.nnunet.resample import resample_default, resample_torch  # noqa: E402
from napari_medadv.core.pipeline import prepare_input, run_attack  # noqa: E402

SMALL = {"patch": (8, 8, 8), "n_stages": 2}
BRATS = ("Flair", "T1", "T1ce", "T2")  # nnU-Net's order differs from the case folder's t1, t1ce, t2, flair
Z4 = ("ZScoreNormalization",) * 4


def _needs(module: str):
    return pytest.importorskip(module, reason=f"{module} is a test-only dependency (.ci/run installs it)")


def write_case(folder: Path, shape=(12, 11, 10), affine=None, seed=0) -> Path:
    """A BraTS-like case folder with zero background around a box of tissue."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([1.0, 1.1, 0.8, 1.0]) if affine is None else affine
    for i, n in enumerate(("t1", "t1ce", "t2", "flair")):
        v = np.zeros(shape, np.float32)
        v[2:-1, 1:, :-2] = rng.normal(300 + 50 * i, 100, size=v[2:-1, 1:, :-2].shape)
        nib.save(nib.Nifti1Image(v, affine), folder / f"{folder.name}_{n}.nii.gz")
    return folder


# ----------------------------------------------------------------------------- nnU-Net's own predictor
@pytest.fixture(scope="module")
def nnunet_predict():
    """``predict(root, image, spacing, folds, mirroring, float32)`` -> nnU-Net's probabilities.

    ``float32=True`` runs nnU-Net with its tile accumulators (``torch.half`` in
    ``_internal_predict_sliding_window_return_logits``) switched to float32 and nothing else."""
    _needs("nnunetv2")
    import nnunetv2.inference.predict_from_raw_data as P
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    stock = P.nnUNetPredictor._internal_predict_sliding_window_return_logits
    src = textwrap.dedent(inspect.getsource(stock))
    assert src.count("dtype=torch.half") == 2, "nnU-Net's accumulator changed; update this fixture"
    ns: dict = {}
    exec(src.replace("dtype=torch.half", "dtype=torch.float32"), P.__dict__, ns)  # noqa: S102
    fp32 = ns["_internal_predict_sliding_window_return_logits"]

    def predict(root: Path, image: np.ndarray, spacing, folds, mirroring: bool, float32: bool):
        plans = json.loads((root / "plans.json").read_text())
        ds = json.loads((root / "dataset.json").read_text())
        pm = PlansManager(plans)
        cm = pm.get_configuration(next(iter(plans["configurations"])))
        lm = pm.get_label_manager(ds)
        ckpts = [torch.load(root / f"fold_{f}" / "checkpoint_final.pth", weights_only=False) for f in folds]
        net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                     cm.network_arch_init_kwargs_req_import, len(ds["channel_names"]),
                                     lm.num_segmentation_heads, allow_init=False, deep_supervision=False)
        pr = P.nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                               perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
        pr.manual_initialization(net, pm, cm, [c["network_weights"] for c in ckpts], ds, "nnUNetTrainer",
                                 ckpts[0]["inference_allowed_mirroring_axes"])
        P.nnUNetPredictor._internal_predict_sliding_window_return_logits = fp32 if float32 else stock
        try:
            _, probs = pr.predict_single_npy_array(image.astype(np.float32), {"spacing": list(spacing)},
                                                   None, None, True)
        finally:
            P.nnUNetPredictor._internal_predict_sliding_window_return_logits = stock
        return probs

    return predict


def _ours(model, image: np.ndarray, spacing) -> np.ndarray:
    model.module.set_input_spacing(spacing)
    out = model.forward(image)
    return (torch.sigmoid(out) if model.info.output == "sigmoid" else torch.softmax(out, 1))[0].numpy()


def _agree(ours: np.ndarray, theirs_fp32: np.ndarray, theirs_stock: np.ndarray) -> None:
    assert ours.shape == theirs_fp32.shape
    assert np.abs(ours - theirs_fp32).max() < 1e-5
    # stock nnU-Net sums the tiles in float16: a few voxels near tile corners, where the Gaussian
    # weights are float16 subnormals, move by up to ~0.06; the rest within its float16 rounding
    diff = np.abs(ours - theirs_stock)
    assert diff.mean() < 2e-3 and (diff > 0.01).mean() < 0.03


# nnU-Net array = ours with the spatial axes reversed (3-D); 2-D images get a leading slice axis
def _rev(a):
    return a.transpose(0, *range(a.ndim - 1, 0, -1))


CASES = {
    "3d-ct-resenc-aniso": (
        dict(channels=("CT",), schemes=("CTNormalization",), use_mask=(False,), residual=True,
             spacing=(4.0, 1.0, 1.0), **SMALL),
        (1, 12, 11, 7), (0.9, 0.9, 5.0), (0,), False),
    "3d-torch-resampling": (
        dict(channels=("CT",), schemes=("CTNormalization",), use_mask=(False,), spacing=(1.3, 1.0, 0.8),
             resampling="resample_torch_fornnunet", **SMALL),
        (1, 10, 11, 9), (1.0, 1.0, 1.0), (0,), False),
    "2d-config-over-a-volume": (
        dict(config="2d", patch=(8, 8), spacing=(0.8, 0.8), n_stages=2, use_mask=(True, False)),
        (2, 9, 12, 5), (0.9, 0.9, 3.0), (0,), True),
    "3d-brats-regions": (
        dict(labels={"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3},
             regions_class_order=[1, 2, 3], channels=BRATS, schemes=Z4, use_mask=(True,) * 4, **SMALL),
        (4, 10, 11, 9), (1.0, 1.0, 1.0), (0,), False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_forward_equals_nnunet_predictor(tmp_path, nnunet_predict, name):
    folder_kw, shape, spacing, folds, mirroring = CASES[name]
    root = make_result_folder(tmp_path / "m", folds=folds, **folder_kw)
    rng = np.random.default_rng(1)
    img = rng.normal(40, 200, size=shape).astype(np.float32)
    img[:, :2] = 0
    img[:, :, -1:] = 0  # zero background: nnU-Net crops it off
    model = load_model(f"nnunet:{root}:{','.join(map(str, folds))}" + ("" if mirroring else ":notta"), device="cpu")
    ours = _ours(model, img, spacing)
    args = (root, _rev(img), spacing[::-1], folds, mirroring)
    _agree(ours, _rev(nnunet_predict(*args, float32=True)), _rev(nnunet_predict(*args, float32=False)))


def test_forward_from_nifti_equals_nnunet_reading_the_files(tmp_path, nnunet_predict):
    """Our reader + pipeline (channels matched by name, geometry) against nnU-Net's SimpleITKIO on the
    same files: MR z-score in the non-zero mask, a transpose, resampling, two folds, mirroring."""
    _needs("SimpleITK")
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    root = make_result_folder(tmp_path / "m", folds=(0, 1), channels=BRATS, schemes=Z4, use_mask=(True,) * 4,
                              spacing=(1.3, 0.9, 1.0), transpose=(2, 0, 1), **SMALL)
    case = write_case(tmp_path / "case")
    image = read_image(case)
    model = load_model(f"nnunet:{root}", device="cpu")
    batch, mapping = prepare_input(image, model)
    assert mapping.how == "by name" and mapping.order == (3, 0, 1, 2)  # Flair <- flair, T1 <- t1, ...
    ours = torch.softmax(model.forward(batch), 1)[0].numpy()
    data, props = SimpleITKIO().read_images([str(case / f"case_{n}.nii.gz") for n in ("flair", "t1", "t1ce", "t2")])
    theirs = nnunet_predict(root, data, props["spacing"], (0, 1), True, float32=True)
    assert np.abs(ours - _rev(theirs)).max() < 1e-5


def test_reorienting_reader_follows_the_affine(tmp_path, nnunet_predict):
    """NibabelIOWithReorient: an LPS, axis-swapped NIfTI is reoriented to RAS before nnU-Net reads it."""
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIOWithReorient

    root = make_result_folder(tmp_path / "m", channels=("CT",), schemes=("CTNormalization",), use_mask=(False,),
                              reader="NibabelIOWithReorient", spacing=(1.0, 1.2, 0.9), **SMALL)
    affine = np.array([[0, -1.2, 0, 10], [-0.9, 0, 0, 5], [0, 0, 1.5, -3], [0, 0, 0, 1]], float)
    rng = np.random.default_rng(2)
    vol = rng.normal(40, 200, size=(11, 9, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "ct.nii.gz")
    image = read_image(tmp_path / "ct.nii.gz")
    model = load_model(f"nnunet:{root}:notta", device="cpu")
    batch, _ = prepare_input(image, model)
    ours = torch.softmax(model.forward(batch), 1)[0].numpy()
    data, props = NibabelIOWithReorient().read_images([str(tmp_path / "ct.nii.gz")])
    theirs = nnunet_predict(root, data, props["spacing"], (0,), False, float32=True)
    flips, perm, _ = model.module.layout(3)
    mapped = torch.from_numpy(ours).flip([f + 1 for f in flips]).permute(0, *[p + 1 for p in perm]).numpy()
    assert np.abs(mapped - theirs).max() < 1e-5


def test_natural_2d_image_equals_nnunet_predictor(tmp_path, nnunet_predict):
    root = make_result_folder(tmp_path / "m", config="2d", patch=(16, 16), spacing=(1.0, 1.0), n_stages=3,
                              reader="NaturalImage2DIO", median_shape=(1, 40, 40), channels=("R", "G", "B"),
                              schemes=("RGBTo01Normalization",) * 3, use_mask=(False,) * 3)
    img = np.random.default_rng(3).uniform(0, 255, size=(3, 20, 23)).astype(np.float32)
    model = load_model(f"nnunet:{root}", device="cpu")
    assert model.info.spatial_dims == 2
    ours = _ours(model, img, (0.2, 0.2))  # NaturalImage2DIO: nnU-Net ignores the pixel size
    theirs = nnunet_predict(root, img[:, None], (999, 1, 1), (0,), True, float32=True)[:, 0]
    assert np.abs(ours - theirs).max() < 1e-5


# ----------------------------------------------------------------------------- the steps, one by one
@pytest.mark.parametrize("name, dim, kw", [
    ("PlainConvUNet", 3, {}),
    ("ResidualEncoderUNet", 2, {}),
    ("ResidualEncoderUNet", 3, {"block": "BottleneckD", "bottleneck_channels": [2, 4, 4]}),
    ("PlainConvUNet", 2, {"nonlin_first": True, "dropout_op": "torch.nn.Dropout2d", "dropout_op_kwargs": {"p": 0.2},
                          "norm_op": "torch.nn.BatchNorm2d", "norm_op_kwargs": {"eps": 1e-5}}),
])
def test_networks_equal_dynamic_network_architectures(name, dim, kw):
    _needs("dynamic_network_architectures")
    import pydoc

    from dynamic_network_architectures.architectures import unet
    from dynamic_network_architectures.building_blocks.residual import BottleneckD

    args = {**arch_kwargs(dim, 3, residual=name != "PlainConvUNet"), **kw}
    torch.manual_seed(0)
    ours = build_network(name, args, 2, 3).eval()
    theirs_args = {k: (pydoc.locate(v) if k in ("conv_op", "norm_op", "dropout_op", "nonlin") and v else v)
                   for k, v in args.items()}
    if kw.get("block"):
        theirs_args["block"] = BottleneckD
    theirs = getattr(unet, name)(input_channels=2, num_classes=3, deep_supervision=False, **theirs_args).eval()
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    assert any(k.startswith("decoder.encoder.") for k in a)  # nnU-Net's checkpoints hold these
    theirs.load_state_dict(a, strict=True)
    x = torch.randn(2, 2, *([16] * dim))
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)


@pytest.mark.parametrize("shape, spacing, new_spacing, order", [
    ((2, 20, 24, 18), (1, 1, 1), (1.3, 0.8, 1.1), 3),   # isotropic: 3-D spline order 3
    ((2, 10, 24, 18), (4, 1, 1), (3, 0.7, 0.9), 3),     # anisotropic: in-plane order 3, z nearest
    ((1, 30, 24, 18), (1, 1, 1), (1, 1, 1.5), 1),       # order 1 (logits back to the image)
    ((2, 7, 24, 18), (1, 0.9, 0.9), (5, 1, 1), 3),      # anisotropic target spacing
])
def test_resampling_equals_nnunet(shape, spacing, new_spacing, order):
    _needs("nnunetv2")
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape, resample_data_or_seg_to_shape
    from nnunetv2.preprocessing.resampling.resample_torch import resample_torch_fornnunet

    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    new = compute_new_shape(shape[1:], spacing, new_spacing)
    ref = resample_data_or_seg_to_shape(x, new, spacing, new_spacing, is_seg=False, order=order, order_z=0,
                                        force_separate_z=None)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    out = resample_default(xt, new, spacing, new_spacing, order=order, order_z=0, force_separate_z=None)
    assert np.abs(out.detach().numpy() - ref).max() < 5e-7  # nnU-Net rounds its float64 result to float32
    out.square().sum().backward()
    assert torch.isfinite(xt.grad).all() and xt.grad.abs().sum() > 0
    ref_t = resample_torch_fornnunet(x, new, spacing, new_spacing, is_seg=False, force_separate_z=None)
    assert np.array_equal(resample_torch(torch.from_numpy(x), new, spacing, new_spacing).numpy(), ref_t)


def test_gaussian_and_tile_steps_equal_nnunet():
    _needs("nnunetv2")
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian, compute_steps_for_sliding_window

    for patch in ((8, 8, 8), (16, 12), (128, 128, 128)):
        ref = compute_gaussian(patch, sigma_scale=1 / 8, value_scaling_factor=10, device=torch.device("cpu"))
        assert torch.equal(gaussian_weights(patch), ref.float())
    for size, patch in (((20, 8, 31), (8, 8, 16)), ((110,), (64,)), ((240, 240, 155), (128, 128, 128))):
        assert sliding_window_steps(size, patch, 0.5) == compute_steps_for_sliding_window(size, patch, 0.5)


def test_every_normalisation_scheme_equals_nnunet(tmp_path):
    _needs("nnunetv2")
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
    from nnunetv2.preprocessing.normalization import default_normalization_schemes as S

    schemes = ("ZScoreNormalization", "ZScoreNormalization", "CTNormalization", "NoNormalization",
               "RescaleTo01Normalization", "RGBTo01Normalization")
    use_mask = (True, False, False, False, False, False)
    root = make_result_folder(tmp_path / "m", channels=tuple("abcdef"), schemes=schemes, use_mask=use_mask, **SMALL)
    module = load_model(f"nnunet:{root}", device="cpu").module
    rng = np.random.default_rng(4)
    data = rng.uniform(0, 255, size=(6, 14, 12, 10)).astype(np.float32)
    data[:, :3] = 0
    data[:, 6, 5, 4] = 0  # a hole inside the brain: in the (filled) mask
    data[0, 7, 5, 4] = 0  # zero in one channel only
    cropped, seg, _ = crop_to_nonzero(data.copy())
    nonzero = torch.from_numpy((data != 0).any(0))
    box = [(3, 14), (0, 12), (0, 10)]
    mask = module._norm_mask(nonzero, box)
    assert torch.equal(mask, torch.from_numpy(seg[0] >= 0))
    ours = module.normalize_channels(torch.from_numpy(cropped), mask).numpy()
    props = json.loads((root / "plans.json").read_text())["foreground_intensity_properties_per_channel"]
    for c, (scheme, m) in enumerate(zip(schemes, use_mask)):
        ref = getattr(S, scheme)(use_mask_for_norm=m, intensityproperties=props[str(c)]).run(cropped[c].copy(), seg[0])
        assert np.abs(ours[c] - ref).max() < 1e-5, scheme


# ----------------------------------------------------------------------------- gradients and attacks
def test_gradient_through_the_whole_chain_matches_finite_differences(tmp_path):
    root = make_result_folder(tmp_path / "m", channels=BRATS, schemes=Z4, use_mask=(True,) * 4,
                              spacing=(1.3, 0.9, 1.0), transpose=(2, 0, 1), **SMALL)
    model = load_model(f"nnunet:{root}", device="cpu")  # mirroring on: differentiates through all mirrors
    module = model.module.double()
    module.set_input_spacing((1.0, 1.1, 0.8))
    image = read_image(write_case(tmp_path / "case"))
    x = torch.tensor(image.array[None], dtype=torch.float64)
    v = torch.randn_like(x) * (x != 0)  # stays inside the crop box and the non-zero mask
    w = torch.randn(3, *x.shape[2:], dtype=torch.float64)

    def f(z):
        return (torch.log_softmax(module(z), 1)[0] * w).sum()

    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(xg), xg)  # each network call checkpointed (recomputed backwards)
    h = 1e-3
    with torch.no_grad():
        fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
    assert torch.isclose((grad * v).sum(), fd, rtol=1e-5)
    module.checkpoint = False
    (kept,) = torch.autograd.grad(f(xg), xg)
    assert torch.allclose(grad, kept, rtol=1e-9, atol=1e-12)
    assert pickle.loads(pickle.dumps(module)).plan.patch_size == (8, 8, 8)


@pytest.fixture(scope="module")
def attack_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nnunet_attacks")
    root = make_result_folder(tmp / "m", channels=BRATS, schemes=Z4, use_mask=(True,) * 4, **SMALL)
    image = read_image(write_case(tmp / "case"))
    model = load_model(f"nnunet:{root}:0:notta", device="cpu")
    labels = np.zeros(image.spatial_shape, np.int16)
    labels[4:9, 3:8, 2:6] = 1
    labels[6:8, 4:6, 3:5] = 2
    return image, model, labels


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_every_registered_attack_runs(attack_setup, attack):
    image, model, labels = attack_setup
    spec = ATTACKS.get_spec(attack)
    accepted = {p.name for p in spec.params}
    params = {k: v for k, v in {"eps": 0.03, "steps": 2, "max_queries": 24, "restarts": 1,
                                "population": 4, "init_tries": 2}.items() if k in accepted}
    target = 1 if spec.targeted == "required" else None
    if attack == "pgd-risk":  # multi-label classifiers only: refused with its reason, not a crash
        with pytest.raises(ValueError, match="co-occurrence|classifiers"):
            run_attack(image, model, attack, params=params, labels=labels, seed=0)
        return
    o = run_attack(image, model, attack, params=params, labels=labels, target=target, seed=0)
    assert o.adversarial.shape == image.array.shape and np.isfinite(o.adversarial).all()
    assert o.seg_clean.shape == image.spatial_shape and set(np.unique(o.seg_clean)) <= {0, 1, 2}
    if "eps" in accepted and not spec.gradient_free:
        rng = image.array.max(axis=(1, 2, 3)) - image.array.min(axis=(1, 2, 3))
        assert (np.abs(o.perturbation).max(axis=(1, 2, 3)) <= 0.03 * rng + 1e-3).all()
        assert np.abs(o.perturbation).max() > 0


def test_region_models_brats_and_others(tmp_path):
    """BraTS regions become the WT/TC/ET the rest of napari-medadv knows; other regions (KiTS-like)
    keep nnU-Net's labels and are painted in regions_class_order."""
    brats = make_result_folder(tmp_path / "b", channels=BRATS, schemes=Z4, use_mask=(True,) * 4,
                               labels={"background": 0, "whole_tumor": [1, 2, 3], "tumor core": [2, 3], "ET": 3},
                               regions_class_order=[1, 2, 3], **SMALL)
    info = load_model(f"nnunet:{brats}", device="cpu").info
    assert (info.output, info.region_names, info.region_labels) == ("sigmoid", ["WT", "TC", "ET"], None)
    assert info.brats_regions(3)
    kits = make_result_folder(tmp_path / "k", channels=("CT",), schemes=("CTNormalization",), use_mask=(False,),
                              labels={"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2},
                              regions_class_order=[1, 3, 2], **SMALL)
    model = load_model(f"nnunet:{kits}:notta", device="cpu")
    info = model.info
    assert info.region_names == ["kidney", "masses", "tumor"] and info.label_values == [1, 3, 2]
    assert info.region_labels == {"kidney": [1, 2, 3], "masses": [2, 3], "tumor": [2]} and not info.brats_regions(3)
    assert info.label_names == {"1": "kidney", "3": "masses", "2": "tumor"}
    probs = np.zeros((1, 3, 2, 2, 1), np.float32)
    probs[0, 0] = 1                   # kidney everywhere
    probs[0, 1, 1] = 1                # masses in the second row
    probs[0, 2, 1, 1] = 1             # tumour in one voxel
    logits = torch.logit(torch.from_numpy(probs).clamp(1e-4, 1 - 1e-4))
    lab = model.to_label_map(logits)
    assert lab[0, :, :, 0].tolist() == [[1, 1], [3, 2]]
    assert np.array_equal(model.label_map_to_target(lab).cpu().numpy(), (probs > 0.5).astype(np.float32))
    vol = np.random.default_rng(5).normal(40, 200, size=(12, 11, 10)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "ct.nii.gz")
    o = run_attack(read_image(tmp_path / "ct.nii.gz"), model, "fgsm", params={"eps": 0.02}, seed=0)
    assert set(np.unique(o.seg_clean)) <= {0, 1, 2, 3}
    assert set(o.metrics["dice"]["clean_vs_adversarial"]["per_label"]) <= {"1", "2", "3"}


# ----------------------------------------------------------------------------- folders, specs, safety
def test_checkpoints_load_with_weights_only_and_exactly_numpy_scalars_allowed(tmp_path):
    root = make_result_folder(tmp_path / "m", **SMALL)
    path = root / "fold_0" / "checkpoint_final.pth"
    with pytest.raises(Exception, match="numpy"):  # plain weights_only refuses the training log's scalars
        torch.load(path, weights_only=True)
    ckpt = load_checkpoint(path)
    assert isinstance(ckpt["logging"]["mean_fg_dice"][0], np.float64)
    assert {getattr(g, "__name__", None) for g in CHECKPOINT_SAFE_GLOBALS if not isinstance(g, tuple)} <= {
        "dtype", "Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType"}
    ckpt["init_args"]["somewhere"] = pathlib.PurePosixPath("/etc")  # any other pickled type
    torch.save(ckpt, path)
    with pytest.raises(ModelError, match=r"checkpoint_final\.pth: refused .*pathlib\.PurePosixPath"):
        load_model(f"nnunet:{root}", device="cpu")


def test_specs_folds_and_options(tmp_path):
    root = make_result_folder(tmp_path / "Dataset999_Toy" / "nnUNetTrainer__nnUNetPlans__3d_fullres",
                              folds=(0, 1, 3), **SMALL)
    everything = load_model(f"nnunet:{root}", device="cpu")
    assert everything.info.extra["folds"] == ["0", "1", "3"] and len(everything.module.net) == 3
    assert everything.module.use_mirroring and everything.info.extra["mirror_axes"] == (0, 1, 2)
    assert everything.checksum.startswith("sha256:")
    one = load_model(f"nnunet:{root}:1:notta", device="cpu")
    assert one.info.extra["folds"] == ["1"] and not one.module.use_mirroring
    assert one.info.channel_names == ["T1", "T2"] and one.info.label_names == {"0": "background", "1": "a", "2": "b"}
    with pytest.raises(ModelError, match="fold_2.*not found"):
        load_model(f"nnunet:{root}:0,2", device="cpu")
    with pytest.raises(ModelError, match="checkpoint_best.pth"):
        load_model(f"nnunet:{root}", weights="checkpoint_best.pth", device="cpu")
    with pytest.raises(ModelError, match="not a path"):
        load_model(f"nnunet:{root}", weights="/tmp/x.pth", device="cpu")
    with pytest.raises(ModelError, match="not found"):
        load_model(f"nnunet:{tmp_path / 'missing'}", device="cpu")
    with pytest.raises(ModelError, match="no fold_N/checkpoint_final.pth"):
        load_model(f"nnunet:{tmp_path / 'Dataset999_Toy'}", device="cpu")


@pytest.mark.parametrize("edit, message", [
    (lambda p, c: c.update(previous_stage="3d_lowres"), "cascade stage"),
    (lambda p, c: c["architecture"].update(network_class_name="my.Primus"), "'my.Primus' is not supported"),
    (lambda p, c: c["architecture"]["arch_kwargs"].update(nonlin="os.system"), "not a torch.nn class"),
    (lambda p, c: c.update(normalization_schemes=["MyNorm", "ZScoreNormalization"]), "normalization_schemes"),
    (lambda p, c: c.update(resampling_fn_data="my_resampling"), "resampling function 'my_resampling'"),
    (lambda p, c: p.update(image_reader_writer="MyIO"), "image_reader_writer 'MyIO'"),
    (lambda p, c: c["architecture"]["arch_kwargs"].update(features_per_stage=[4, 16]), "shape mismatch"),
])
def test_plans_that_cannot_be_reproduced_are_refused_clearly(tmp_path, edit, message):
    root = make_result_folder(tmp_path / "m", **SMALL)
    plans = json.loads((root / "plans.json").read_text())
    edit(plans, plans["configurations"]["3d_fullres"])
    (root / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ModelError, match=message):
        load_model(f"nnunet:{root}", device="cpu")


def test_old_plans_format_and_axis_layouts(tmp_path):
    root = make_result_folder(tmp_path / "m", **SMALL)
    plans = json.loads((root / "plans.json").read_text())
    conf = plans["configurations"]["3d_fullres"]
    kw = conf.pop("architecture")["arch_kwargs"]
    conf.update(UNet_class_name="PlainConvUNet", UNet_base_num_features=4, unet_max_num_features=8,
                n_conv_per_stage_encoder=kw["n_conv_per_stage"],
                n_conv_per_stage_decoder=kw["n_conv_per_stage_decoder"],
                conv_kernel_sizes=kw["kernel_sizes"], pool_op_kernel_sizes=kw["strides"])
    (root / "plans.json").write_text(json.dumps(plans))
    module = load_model(f"nnunet:{root}", device="cpu").module  # pre-2.3 plans, rebuilt as nnU-Net does
    assert module.layout(3) == ((), (2, 1, 0), False)  # NIfTI (i, j, k) -> SimpleITK's (k, j, i)
    assert module.layout(2) == ((), (0, 1), True)
    module.set_input_geometry(read_image(write_case(tmp_path / "c")).geometry, "dicom-series")
    assert module.layout(3) == ((), (0, 1, 2), False)  # (slice, row, column) already is


def test_guide_example_runs_through_the_cli(tmp_path, monkeypatch):
    """docs/models.md's nnU-Net example: a toy folder at the guide's path with the guide's
    dataset.json (BraTS regions, nnU-Net's channel names), its command run as written."""
    import re

    from napari_medadv import cli

    guide = (Path(__file__).resolve().parents[3] / "docs" / "models.md").read_text()
    text = guide[guide.index("## Example e: nnU-Net"):]
    text = text[:text.index("\n## ", 5)]
    dataset = json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))
    cmd = next(ln.strip() for ln in text.splitlines() if ln.strip().startswith("medadv attack"))
    argv = shlex.split(cmd)
    spec = argv[argv.index("--model") + 1]
    assert spec.startswith("nnunet:") and "--trust-model-code" not in argv
    folder = Path(spec[len("nnunet:"):])
    for name in (folder.name, "plans.json", "dataset.json", "fold_0/checkpoint_final.pth"):
        assert name in text  # the layout the guide shows is the one built here
    monkeypatch.chdir(tmp_path)
    channels = tuple(dataset["channel_names"][str(i)] for i in range(len(dataset["channel_names"])))
    make_result_folder(folder, channels=channels, schemes=Z4, use_mask=(True,) * 4,
                       labels=dataset["labels"], regions_class_order=dataset["regions_class_order"], **SMALL)
    write_case(tmp_path / "case")
    assert cli.main(argv[1:] + ["--quiet"]) == 0
    out = Path(argv[argv.index("--out") + 1])
    record = json.loads((out / "record.json").read_text())
    assert record["channel_mapping"]["how"] == "by name"
    assert "T1ce <- t1ce" in record["channel_mapping"]["text"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["dice"]["clean_vs_adversarial"]["regions"]) == {"WT", "TC", "ET"}
