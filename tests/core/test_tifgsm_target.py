"""ti-FGSM's target "label 1" is BraTS's necrotic core on every model (Liu et al. 2021), whatever
its output layout: an index on softmax models, the multi-hot TC+WT (not ET) target on sigmoid
TC/WT/ET region models, where output index 1 would be WT (issue 13)."""

import numpy as np
import torch
from torch import nn

from napari_medadv.core.io import ImageData
from napari_medadv.core.io.geometry import Geometry
from napari_medadv.core.models.base import LoadedModel, ModelInfo, NativeInputModel
from napari_medadv.core.pipeline import run_attack, start_attack


def _model(output, **decl):
    torch.manual_seed(0)
    k = 3 if output == "sigmoid" else 4
    net = nn.Conv3d(4, k, 3, padding=1)
    info = ModelInfo(task="segmentation", spatial_dims=3, in_channels=4, output=output,
                     channel_names=["t1", "t1ce", "t2", "flair"], **decl)
    module = NativeInputModel(net.eval(), info)
    for p in module.parameters():
        p.requires_grad_(False)
    return LoadedModel(module=module, info=info, spec=f"test:{output}")


def _image():
    rng = np.random.default_rng(0)
    arr = rng.normal(100, 20, (4, 8, 8, 8)).astype(np.float32)
    return ImageData(arr, Geometry(np.eye(4)), ["t1", "t1ce", "t2", "flair"], "synthetic", "nifti")


def test_label_1_is_the_necrotic_core_on_a_sigmoid_region_model():
    model = _model("sigmoid", region_names=["TC", "WT", "ET"])
    s = start_attack(_image(), model, "tifgsm", params={"eps": 0.05, "steps": 2}, roi=None)
    target = s.target
    assert tuple(target.shape) == (1, 3, 8, 8, 8)  # multi-hot, per region, shaped like the output
    assert torch.all(target[0, 0] == 1) and torch.all(target[0, 1] == 1) and torch.all(target[0, 2] == 0)  # TC, WT, not ET
    o = run_attack(_image(), model, "tifgsm", params={"eps": 0.05, "steps": 2}, roi=None, seed=0)
    assert o.result.history and not o.result.cancelled
    mask = np.zeros((8, 8, 8), dtype=np.int16)
    mask[2:5] = 4  # a painted target on a sigmoid model: ET inside TC inside WT
    t = start_attack(_image(), model, "tifgsm", params={"eps": 0.05}, target=mask, roi=None).target
    assert tuple(t.shape) == (1, 3, 8, 8, 8) and torch.all(t[0, :, 2:5] == 1) and torch.all(t[0, :, :2] == 0)
    run_attack(_image(), model, "tifgsm", params={"eps": 0.05, "steps": 1}, target=mask, roi=None, seed=0)


def test_label_values_map_to_indices_on_a_softmax_model():
    model = _model("softmax", label_values=[0, 1, 2, 4])
    assert start_attack(_image(), model, "tifgsm", params={"eps": 0.05}, roi=None).target == 1
    assert start_attack(_image(), model, "tifgsm", params={"eps": 0.05, "target_label": 4}, roi=None).target == 3
    assert start_attack(_image(), model, "tifgsm", params={"eps": 0.05}, target=4, roi=None).target == 3
