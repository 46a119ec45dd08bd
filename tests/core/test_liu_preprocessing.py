"""Liu et al.'s preprocessing inside the wrapped model (issue 13): N4 bias-field correction (fitted
on the clean image with SimpleITK, then held fixed) and a resize, differentiable, recorded in the
model info; the attack still perturbs the image the user loaded."""

import numpy as np
import pytest
import torch

from napari_medadv.core.data.paths import sample_data_dir
from napari_medadv.core.errors import ModelError
from napari_medadv.core.io import read_image
from napari_medadv.core.models import load_model
from napari_medadv.core.models.preprocess import n4_field, preprocessing_fields
from napari_medadv.core.pipeline import outcome_record, prepare_input, run_attack

CASE = sample_data_dir() / "glioma" / "glioma_001"


def test_n4_recovers_a_smooth_multiplicative_bias():
    flair = read_image(CASE).array[3]
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in flair.shape], indexing="ij")
    bias = np.exp(0.3 * x + 0.2 * z).astype(np.float32)  # a smooth field, ±35 %
    field, own = n4_field(flair * bias), n4_field(flair)  # the phantom has a bias of its own
    brain = flair > 0
    r = np.corrcoef(np.log(field[brain] / own[brain]), np.log(bias[brain]))[0, 1]
    assert r > 0.95  # N4 finds the field we put in (up to a constant factor): 0.997 measured
    cv = lambda a: a[brain].std() / a[brain].mean()  # noqa: E731
    assert cv(flair * bias / field) < cv(flair * bias)


def test_liu_preprocessing_is_inside_the_model_and_recorded():
    image = read_image(CASE)
    model = load_model("demo:unet3d", device="cpu", preprocess="liu",
                       info_overrides={"resize_to": [32, 40, 32]})  # small, for the test
    assert model.info.bias_correction == "n4" and model.info.resize_to == [32, 40, 32]
    x, _ = prepare_input(image, model)
    field = model.module.bias.field
    assert field.shape == x.shape and torch.all(field > 0)
    xg = x.clone().requires_grad_(True)
    out = model.module(xg)
    assert out.shape[2:] == x.shape[2:]  # resized back onto the user's grid
    (g,) = torch.autograd.grad(out[:, 1].sum(), xg)
    assert torch.isfinite(g).all() and g.abs().sum() > 0  # differentiable through x / field and the resize
    o = run_attack(image, model, "fgsm", params={"eps": 0.02}, seed=0)
    assert o.adversarial.shape == image.array.shape
    assert model.module.bias.field is field  # the clean image's field, not re-fitted per forward
    info = outcome_record(o)["model"]["info"]
    assert info["bias_correction"] == "n4" and info["resize_to"] == [32, 40, 32]


def test_preprocessing_is_refused_where_it_does_not_apply():
    with pytest.raises(ModelError, match="unknown preprocessing"):
        preprocessing_fields("n5", 3)
    with pytest.raises(ModelError, match="3-D"):
        load_model("demo:cxr", device="cpu", preprocess="liu")
