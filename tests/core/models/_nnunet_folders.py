"""Small nnU-Net v2 result folders built offline: plans.json, dataset.json, dataset_fingerprint.json
and fold_N/checkpoint_final.pth with random weights, laid out and pickled as nnU-Net writes them
(``nnUNetTrainer.save_checkpoint``: network weights, optimizer state, a training log of numpy
scalars, ``init_args`` with a ``torch.device``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from napari_medadv.core.models.nnunet.networks import build_network

CT_PROPS = {"max": 1500.0, "mean": 60.0, "median": 55.0, "min": -1000.0, "percentile_00_5": -120.0,
            "percentile_99_5": 240.0, "std": 45.0}
MR_PROPS = {"max": 900.0, "mean": 300.0, "median": 280.0, "min": 0.0, "percentile_00_5": 20.0,
            "percentile_99_5": 800.0, "std": 110.0}


def arch_kwargs(dim: int, n_stages: int = 3, residual: bool = False, features=None) -> dict:
    feats = list(features) if features else [4 * 2 ** i for i in range(n_stages)]
    kw = {
        "n_stages": n_stages, "features_per_stage": feats, "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
        "kernel_sizes": [[3] * dim] * n_stages, "strides": [[1] * dim] + [[2] * dim] * (n_stages - 1),
        "n_conv_per_stage_decoder": [1] * (n_stages - 1), "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }
    if residual:
        kw["n_blocks_per_stage"] = [1, 2, 2][:n_stages] + [2] * max(0, n_stages - 3)
    else:
        kw["n_conv_per_stage"] = [2] * n_stages
    return kw


def configuration(dim: int, patch, spacing, schemes, use_mask, residual=False, n_stages=3,
                  resampling="resample_data_or_seg_to_shape", features=None) -> dict:
    torch_rs = resampling == "resample_torch_fornnunet"
    data_kw = ({"is_seg": False, "force_separate_z": None, "memefficient_seg_resampling": False} if torch_rs
               else {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None})
    prob_kw = ({"is_seg": False, "force_separate_z": None} if torch_rs
               else {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None})
    cls = "ResidualEncoderUNet" if residual else "PlainConvUNet"
    return {
        "data_identifier": f"nnUNetPlans_{dim}d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": list(patch), "median_image_size_in_voxels": list(patch), "spacing": list(spacing),
        "normalization_schemes": list(schemes), "use_mask_for_norm": list(use_mask),
        "resampling_fn_data": resampling, "resampling_fn_seg": resampling,
        "resampling_fn_data_kwargs": data_kw, "resampling_fn_seg_kwargs": {**data_kw, "is_seg": True},
        "resampling_fn_probabilities": resampling, "resampling_fn_probabilities_kwargs": prob_kw,
        "architecture": {"network_class_name": f"dynamic_network_architectures.architectures.unet.{cls}",
                         "arch_kwargs": arch_kwargs(dim, n_stages, residual, features),
                         "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": False,
    }


def _checkpoint(net: torch.nn.Module, plans: dict, dataset: dict, config: str, fold, mirror_axes) -> dict:
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    return {
        "network_weights": net.state_dict(),
        "optimizer_state": opt.state_dict(),
        "grad_scaler_state": None,
        "logging": {"mean_fg_dice": [np.float64(0.5), np.float64(0.6)], "ema_fg_dice": [np.float64(0.5)],
                    "dice_per_class_or_region": [[np.float64(0.4), np.float32(0.7)]],
                    "train_losses": [np.float32(-0.3)], "val_losses": [np.float64(-0.2)], "lrs": [0.01],
                    "epoch_start_timestamps": [1.0], "epoch_end_timestamps": [2.0]},
        "_best_ema": np.float64(0.61),
        "current_epoch": 1000,
        "init_args": {"plans": plans, "configuration": config, "fold": fold, "dataset_json": dataset,
                      "device": torch.device("cpu")},
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": mirror_axes,
    }


def make_result_folder(root: Path, *, config: str = "3d_fullres", channels=("T1", "T2"),
                       schemes=("ZScoreNormalization", "ZScoreNormalization"), use_mask=(False, False),
                       labels=None, regions_class_order=None, patch=(16, 16, 16), spacing=(1.0, 1.0, 1.0),
                       transpose=(0, 1, 2), folds=(0,), residual=False, seed=0, reader="SimpleITKIO",
                       median_shape=(40, 40, 40), props=None, mirror_axes=None,
                       resampling="resample_data_or_seg_to_shape", n_stages=3, features=None) -> Path:
    """Write ``root`` = ``.../nnUNetTrainer__nnUNetPlans__<config>`` and return it."""
    labels = labels or {"background": 0, "a": 1, "b": 2}
    dim = len(patch)
    root.mkdir(parents=True, exist_ok=True)
    tb = [int(i) for i in np.argsort(transpose)]
    props = props or {str(i): (CT_PROPS if s == "CTNormalization" else MR_PROPS) for i, s in enumerate(schemes)}
    plans = {
        "dataset_name": "Dataset999_Toy", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [999.0, 1.0, 1.0] if dim == 2 and median_shape[0] == 1 else [1.0] * 3,
        "original_median_shape_after_transp": list(median_shape), "image_reader_writer": reader,
        "transpose_forward": list(transpose), "transpose_backward": tb,
        "configurations": {config: configuration(dim, patch, spacing, schemes, use_mask, residual, n_stages,
                                                 resampling, features)},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": props,
    }
    dataset = {"channel_names": {str(i): c for i, c in enumerate(channels)}, "labels": labels,
               "numTraining": 10, "file_ending": ".png" if reader == "NaturalImage2DIO" else ".nii.gz"}
    if regions_class_order is not None:
        dataset["regions_class_order"] = list(regions_class_order)
    fingerprint = {"foreground_intensity_properties_per_channel": props, "spacings": [[1.0] * 3] * 3,
                   "shapes_after_crop": [list(median_shape)] * 3, "median_relative_size_after_cropping": 1.0}
    (root / "plans.json").write_text(json.dumps(plans, indent=1))
    (root / "dataset.json").write_text(json.dumps(dataset, indent=1))
    (root / "dataset_fingerprint.json").write_text(json.dumps(fingerprint, indent=1))
    n_out = (len([k for k, v in labels.items() if k != "background" and v != 0]) if regions_class_order is not None
             else len([k for k in labels if k != "ignore"]))
    axes = mirror_axes if mirror_axes is not None else tuple(range(dim))
    arch = plans["configurations"][config]["architecture"]
    for k, fold in enumerate(folds):
        torch.manual_seed(seed * 100 + k)
        net = build_network(arch["network_class_name"], arch["arch_kwargs"], len(channels), n_out)
        with torch.no_grad():  # random, the affine norms and biases too (not nnU-Net's initialisation)
            for p in net.parameters():
                p.normal_(0.0, 0.3)
            seg = net.decoder.seg_layers[-1]  # every class somewhere: zero bias, larger weights
            seg.bias.zero_()
            seg.weight.mul_(4.0)
        (root / f"fold_{fold}").mkdir(exist_ok=True)
        torch.save(_checkpoint(net, plans, dataset, config, fold, axes), root / f"fold_{fold}" / "checkpoint_final.pth")
    return root
