"""User-supplied model loaders: TorchScript, MONAI bundles, factories, torchxrayvision (faked).

Everything is written into ``tmp_path`` by the tests; nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import pickle
import runpy
import sys
import types
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

from napari_medadv.core.errors import ModelError

# registry._ensure_loaders() skips importing its loader modules once *any* scheme is registered, so
# whichever of adapters/demo is imported first (the training package imports demo) hides the other: import both.
from napari_medadv.core.models import adapters, demo, known_schemes, load_model  # noqa: F401
from napari_medadv.core.models.base import ModelInfo, Normalize, file_checksum

SEG2D_INFO = {"task": "segmentation", "spatial_dims": 2, "in_channels": 2, "output": "softmax",
              "normalization": "zscore", "label_values": [0, 1, 2]}


def tiny_unet2d():
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(spatial_dims=2, in_channels=2, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=1).eval()


def reference_output(net: nn.Module, info: ModelInfo, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(Normalize(info)(x))


def test_all_schemes_registered():
    assert {"torchscript", "bundle", "factory", "xrv"} <= set(known_schemes())


# ----------------------------------------------------------------------------- torchscript
@pytest.fixture
def scripted(tmp_path):
    net = tiny_unet2d()
    path = tmp_path / "model.pt"
    torch.jit.script(net).save(str(path))
    (tmp_path / "model.json").write_text(json.dumps(SEG2D_INFO))
    return net, path


def test_torchscript_loads_and_matches_original_on_normalised_input(scripted):
    net, path = scripted
    loaded = load_model(f"torchscript:{path}", trust_code=True, device="cpu")
    assert loaded.info.task == "segmentation" and loaded.info.normalization == "zscore"
    assert loaded.checksum == file_checksum(path)
    x = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(0)) * 30 + 100
    torch.testing.assert_close(loaded.forward(x), reference_output(net, loaded.info, x), rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in loaded.module.parameters())


def test_torchscript_accepts_pt_json_sidecar(scripted):
    _, path = scripted
    (path.parent / "model.json").rename(path.parent / "model.pt.json")
    assert load_model(f"torchscript:{path}", trust_code=True, device="cpu").info.in_channels == 2


def test_torchscript_missing_sidecar_explains_fields(scripted):
    _, path = scripted
    (path.parent / "model.json").unlink()
    with pytest.raises(ModelError, match=r"model\.json.*task.*spatial_dims.*in_channels.*output"):
        load_model(f"torchscript:{path}", trust_code=True, device="cpu")


def test_torchscript_missing_file(tmp_path):
    with pytest.raises(ModelError, match=r"nope\.pt: TorchScript file not found"):
        load_model(f"torchscript:{tmp_path / 'nope.pt'}", trust_code=True, device="cpu")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_torchscript_corrupt_file(scripted, damage):
    _, path = scripted
    data = path.read_bytes()
    path.write_bytes(os.urandom(2048) if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"model\.pt: not a TorchScript archive"):
        load_model(f"torchscript:{path}", trust_code=True, device="cpu")


def test_torchscript_rejects_a_state_dict_file(scripted):
    net, path = scripted
    torch.save(net.state_dict(), path)
    with pytest.raises(ModelError, match=r"not a TorchScript archive.*factory"):
        load_model(f"torchscript:{path}", trust_code=True, device="cpu")


# ----------------------------------------------------------------------------- MONAI bundles
BRATS_METADATA = {  # the shape of MONAI model-zoo brats_mri_segmentation configs/metadata.json
    "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
    "version": "0.3.0",
    "name": "BraTS MRI segmentation (test copy)",
    "task": "Multimodal Brain Tumor segmentation",
    "network_data_format": {
        "inputs": {"image": {
            "type": "image", "format": "magnitude", "modality": "MR", "num_channels": 4,
            "spatial_shape": ["8*n", "8*n", "8*n"], "dtype": "float32", "value_range": [],
            "is_patch_data": True, "channel_def": {"0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"}}},
        "outputs": {"pred": {
            "type": "image", "format": "segmentation", "num_channels": 3,
            "spatial_shape": ["8*n", "8*n", "8*n"], "dtype": "float32", "value_range": [0, 1],
            "is_patch_data": True,
            "channel_def": {"0": "Tumor core", "1": "Whole tumor", "2": "Enhancing tumor"}}},
    },
}

BRATS_INFERENCE = {
    "bundle_root": ".",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "network_def": {"_target_": "SegResNet", "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1],
                    "init_filters": 4, "in_channels": 4, "out_channels": 3, "dropout_prob": 0.2,
                    "norm": ["GROUP", {"num_groups": 2}]},  # (init_filters=4: the default 8 groups don't fit)
    "network": "$@network_def.to(@device)",
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True}]},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 1, "overlap": 0.5},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "sigmoid": True}]},
}

SPLEEN_METADATA = {
    "name": "spleen-like (test)",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                             "spatial_shape": [16, 16, 16], "is_patch_data": True}},
        "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                             "spatial_shape": [16, 16, 16], "is_patch_data": True,
                             "channel_def": {"0": "background", "1": "spleen"}}},
    },
}

SPLEEN_INFERENCE = {
    "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                    "channels": [4, 8], "strides": [2], "num_res_units": 1},
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164,
         "b_min": 0.0, "b_max": 1.0, "clip": True}]},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True}]},
}


def build_from_config(config: dict) -> nn.Module:
    from monai.bundle import ConfigParser

    torch.manual_seed(1)
    return ConfigParser(config).get_parsed_content("network_def").eval()


def write_bundle(root: Path, metadata: dict, inference: dict, *, wrap_model_key: bool = False,
                 state: dict | None = None) -> tuple[Path, nn.Module]:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
    (root / "configs" / "inference.json").write_text(json.dumps(inference))
    net = build_from_config(inference)
    sd = net.state_dict() if state is None else state
    torch.save({"model": sd} if wrap_model_key else sd, root / "models" / "model.pt")
    return root, net


@pytest.mark.parametrize("wrap_model_key", [False, True])
def test_bundle_brats_convention(tmp_path, wrap_model_key):
    root, net = write_bundle(tmp_path / "brats", BRATS_METADATA, BRATS_INFERENCE, wrap_model_key=wrap_model_key)
    loaded = load_model(f"bundle:{root}", trust_code=True, device="cpu")
    info = loaded.info
    assert (info.task, info.spatial_dims, info.in_channels) == ("segmentation", 3, 4)
    assert info.output == "sigmoid"
    assert info.region_names == ["TC", "WT", "ET"]
    assert info.normalization == "zscore-nonzero"
    assert info.channel_names == ["T1c", "T1", "T2", "FLAIR"]
    assert info.roi_size == [16, 16, 16]  # spatial_shape is "8*n": the config's SlidingWindowInferer roi
    assert info.size_divisible == 8
    assert loaded.checksum == file_checksum(root / "models" / "model.pt")
    x = torch.randn(1, 4, 16, 16, 16, generator=torch.Generator().manual_seed(2)) * 200 + 500
    x[..., :3] = 0  # background stays out of the non-zero statistics
    torch.testing.assert_close(loaded.forward(x), reference_output(net, info, x), rtol=1e-4, atol=1e-5)


def test_bundle_brats_without_preprocessing_uses_brats_normalisation(tmp_path):
    inference = {k: v for k, v in BRATS_INFERENCE.items() if k != "preprocessing"}
    root, _ = write_bundle(tmp_path / "b", BRATS_METADATA, inference)
    info = load_model(f"bundle:{root}", trust_code=True, device="cpu").info
    assert info.normalization == "zscore-nonzero"
    assert "BraTS" in info.extra["normalization_from"]


def test_bundle_softmax_two_classes(tmp_path):
    root, net = write_bundle(tmp_path / "spleen", SPLEEN_METADATA, SPLEEN_INFERENCE)
    loaded = load_model(f"bundle:{root}", trust_code=True, device="cpu")
    info = loaded.info
    assert (info.task, info.output, info.label_values) == ("segmentation", "softmax", [0, 1])
    assert info.label_names == {"0": "background", "1": "spleen"}
    # ScaleIntensityRanged(a_min=-57, a_max=164, b_min=0, b_max=1) == (x - (-57)) / 221
    assert (info.normalization, info.norm_mean, info.norm_std) == ("fixed", [-57.0], [221.0])
    assert info.spacing == [1.5, 1.5, 2.0] and info.roi_size == [16, 16, 16]
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(3)) * 100
    torch.testing.assert_close(loaded.forward(x), reference_output(net, info, x), rtol=1e-4, atol=1e-5)


def test_bundle_state_dict_mismatch_names_keys(tmp_path):
    sd = build_from_config(BRATS_INFERENCE).state_dict()
    sd.pop("conv_final.2.conv.weight")
    sd["bogus.weight"] = torch.zeros(1)
    root, _ = write_bundle(tmp_path / "b", BRATS_METADATA, BRATS_INFERENCE, state=sd)
    with pytest.raises(ModelError, match=r"model\.pt: weights do not match.*missing keys \[conv_final\.2\.conv\.weight\]"
                                         r".*unexpected keys \[bogus\.weight\]"):
        load_model(f"bundle:{root}", trust_code=True, device="cpu")


def test_bundle_shape_mismatch_names_key(tmp_path):
    bigger = dict(BRATS_INFERENCE, network_def=dict(BRATS_INFERENCE["network_def"], init_filters=8))
    sd = build_from_config(bigger).state_dict()
    root, _ = write_bundle(tmp_path / "b", BRATS_METADATA, BRATS_INFERENCE, state=sd)
    with pytest.raises(ModelError, match=r"shape mismatch \[convInit\.conv\.weight \(file \(8, 4, 3, 3, 3\) "
                                         r"vs network \(4, 4, 3, 3, 3\)\)"):
        load_model(f"bundle:{root}", trust_code=True, device="cpu")


def test_bundle_ambiguous_metadata_requires_medadv_json(tmp_path):
    meta = json.loads(json.dumps(SPLEEN_METADATA))
    meta["network_data_format"]["outputs"]["pred"]["channel_def"] = {"0": "liver", "1": "tumour"}
    inference = {k: v for k, v in SPLEEN_INFERENCE.items() if k != "postprocessing"}
    root, _ = write_bundle(tmp_path / "b", meta, inference)
    with pytest.raises(ModelError, match=r"cannot tell output .*configs/medadv\.json"):
        load_model(f"bundle:{root}", trust_code=True, device="cpu")
    (root / "configs" / "medadv.json").write_text(json.dumps({"output": "sigmoid", "region_names": None,
                                                              "description": "liver + tumour"}))
    info = load_model(f"bundle:{root}", trust_code=True, device="cpu").info
    assert info.output == "sigmoid" and info.description == "liver + tumour"


def test_bundle_without_network_data_format(tmp_path):
    meta = {k: v for k, v in BRATS_METADATA.items() if k != "network_data_format"}
    root, _ = write_bundle(tmp_path / "b", meta, BRATS_INFERENCE)
    with pytest.raises(ModelError, match=r"cannot tell task, in_channels, output from "
                                         r"configs/metadata\.json network_data_format \(it has none\); "
                                         r"write configs/medadv\.json"):
        load_model(f"bundle:{root}", trust_code=True, device="cpu")


def test_bundle_medadv_json_overrides(tmp_path):
    root, _ = write_bundle(tmp_path / "b", BRATS_METADATA, BRATS_INFERENCE)
    (root / "configs" / "medadv.json").write_text(json.dumps({"normalization": "zscore", "name": "my BraTS"}))
    info = load_model(f"bundle:{root}", trust_code=True, device="cpu").info
    assert info.normalization == "zscore" and info.name == "my BraTS" and info.region_names == ["TC", "WT", "ET"]


@pytest.mark.parametrize("remove, message", [
    ("configs/metadata.json", r"not a MONAI bundle — configs/metadata\.json is missing"),
    ("configs/inference.json", r"configs/inference\.json \(or \.yaml\) is missing"),
    ("models/model.pt", r"model\.pt: bundle weights not found"),
])
def test_bundle_missing_parts(tmp_path, remove, message):
    root, _ = write_bundle(tmp_path / "b", BRATS_METADATA, BRATS_INFERENCE)
    (root / remove).unlink()
    with pytest.raises(ModelError, match=message):
        load_model(f"bundle:{root}", trust_code=True, device="cpu")


def test_bundle_not_a_folder(tmp_path):
    with pytest.raises(ModelError, match="MONAI bundle folder not found"):
        load_model(f"bundle:{tmp_path / 'missing'}", trust_code=True, device="cpu")


@pytest.mark.parametrize("content, message", [
    ("garbage", r"model\.pt: not a readable PyTorch weights file \(corrupt or truncated\?\)"),
    ("truncated", r"model\.pt: not a readable PyTorch weights file \(corrupt or truncated\?\)"),
    ("not_tensors", r"model\.pt: not a plain state dict; entries that are not tensors: \[epoch\]"),
    ("a_tensor", r"model\.pt: expected a state dict \(name -> tensor\), found Tensor"),
])
def test_bundle_bad_weights_file(tmp_path, content, message):
    root, net = write_bundle(tmp_path / "b", BRATS_METADATA, BRATS_INFERENCE)
    wfile = root / "models" / "model.pt"
    if content == "garbage":
        wfile.write_bytes(b"\x80\x02not really a checkpoint")
    elif content == "truncated":
        wfile.write_bytes(wfile.read_bytes()[:5000])
    elif content == "not_tensors":
        torch.save({**net.state_dict(), "epoch": 3}, wfile)
    else:
        torch.save(torch.zeros(3), wfile)
    with pytest.raises(ModelError, match=message):
        load_model(f"bundle:{root}", trust_code=True, device="cpu")


# ----------------------------------------------------------------------------- factory
FACTORY_SOURCE = '''
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def build():
    torch.manual_seed(0)
    return Tiny()


def build_other():
    return nn.Conv2d(2, 3, 5)


def not_a_module():
    return 42


def broken():
    raise RuntimeError("cannot build")


NOT_CALLABLE = 3
'''


@pytest.fixture
def factory(tmp_path, monkeypatch):
    """A module written into tmp_path (unique name) on sys.path, its state dict and sidecar."""
    name = f"medadv_test_factory_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    net = runpy.run_path(str(tmp_path / f"{name}.py"))["build"]()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5)  # differs from a fresh build(): the weights really are loaded
    weights = tmp_path / "weights.pt"
    torch.save(net.state_dict(), weights)
    (tmp_path / "weights.json").write_text(json.dumps(SEG2D_INFO))
    yield types.SimpleNamespace(name=name, net=net.eval(), weights=weights, path=tmp_path / f"{name}.py")
    sys.modules.pop(name, None)


def test_factory_loads_module_function(factory):
    loaded = load_model(f"factory:{factory.name}:build", weights=str(factory.weights), trust_code=True, device="cpu")
    assert loaded.checksum == file_checksum(factory.weights)
    x = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(loaded.forward(x), reference_output(factory.net, loaded.info, x))


def test_factory_loads_from_python_file(factory):
    loaded = load_model(f"factory:{factory.path}:build", weights=str(factory.weights), trust_code=True, device="cpu")
    x = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(loaded.forward(x), reference_output(factory.net, loaded.info, x))


@pytest.mark.parametrize("func, message", [
    ("missing_fn", r"has no function 'missing_fn'"),
    ("not_a_module", r"not_a_module\(\) returned a int, not a torch\.nn\.Module"),
    ("broken", r"calling broken\(\) failed: RuntimeError: cannot build"),
    ("NOT_CALLABLE", r"'NOT_CALLABLE' .* is a int, not a function"),
    ("build_other", r"weights do not match the network: missing keys \[weight, bias\]"),
])
def test_factory_bad_function(factory, func, message):
    with pytest.raises(ModelError, match=message):
        load_model(f"factory:{factory.name}:{func}", weights=str(factory.weights), trust_code=True, device="cpu")


def test_factory_module_not_found(factory):
    with pytest.raises(ModelError, match=r"module 'no_such_module_xyz' not found"):
        load_model("factory:no_such_module_xyz:build", weights=str(factory.weights), trust_code=True, device="cpu")


def test_factory_missing_weights(factory, tmp_path):
    with pytest.raises(ModelError, match=r"need a weights file"):
        load_model(f"factory:{factory.name}:build", trust_code=True, device="cpu")
    with pytest.raises(ModelError, match=r"absent\.pt: weights file not found"):
        load_model(f"factory:{factory.name}:build", weights=str(tmp_path / "absent.pt"), trust_code=True,
                   device="cpu")


def test_factory_missing_sidecar(factory):
    (factory.weights.parent / "weights.json").unlink()
    with pytest.raises(ModelError, match=r"weights\.pt: no model metadata next to the weights file"):
        load_model(f"factory:{factory.name}:build", weights=str(factory.weights), trust_code=True, device="cpu")


def test_factory_bad_spec():
    with pytest.raises(ModelError, match="spec must be package.module:function"):
        load_model("factory:just_a_module", weights="w.pt", trust_code=True, device="cpu")


class _Payload:
    """Unpickling this calls os.system: it must never happen when loading weights."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'echo pwned > "{self.marker}"',)


def test_weights_pickle_with_code_is_refused_and_never_run(factory, tmp_path):
    marker = tmp_path / "PWNED"
    sd = dict(factory.net.state_dict())
    sd["extra"] = _Payload(marker)
    torch.save(sd, factory.weights)
    with pytest.raises(ModelError, match=r"weights\.pt: refused — the file contains pickled Python objects \((posix|nt)\.system\)"):
        load_model(f"factory:{factory.name}:build", weights=str(factory.weights), trust_code=True, device="cpu")
    assert not marker.exists()
    # control: the payload is live — plain pickle would have run it
    control = tmp_path / "CONTROL"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists()


@pytest.mark.parametrize("scheme", ["torchscript", "bundle", "factory", "xrv"])
def test_code_running_schemes_refused_without_trust(scheme, scripted, tmp_path):
    _, path = scripted
    target = {"torchscript": str(path), "bundle": str(tmp_path), "factory": "os:getcwd",
              "xrv": "densenet121-res224-all"}[scheme]
    with pytest.raises(ModelError, match="refused until you say you trust it"):
        load_model(f"{scheme}:{target}", weights=str(path), device="cpu")


# ----------------------------------------------------------------------------- xrv (fake package)
FAKE_LABELS = ["Atelectasis", "Consolidation", "", "Pneumothorax"]
FAKE_URL = "https://github.com/mlmed/torchxrayvision/releases/download/v1/fake-densenet121-best.pt"


class _FakeXrvDenseNet(nn.Module):
    """Mimics xrv.models.DenseNet(weights=..., cache_dir=...): reads the cache, sigmoid + op_norm."""

    def __init__(self, weights=None, op_threshs=None, apply_sigmoid=False, cache_dir=None, *, _xrv=None):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=4)
        self.classifier = nn.Linear(4, len(FAKE_LABELS))
        self.apply_sigmoid = apply_sigmoid
        self.register_buffer("op_threshs", op_threshs)
        if weights is not None:
            self.targets = self.pathologies = _xrv.models.model_urls[weights]["labels"]
            local = _xrv.models.get_weights(weights, cache_dir)
            self.load_state_dict(torch.load(local, map_location="cpu", weights_only=True))
            self.op_threshs = torch.tensor(_xrv.models.model_urls[weights]["op_threshs"])
            self.eval()

    def forward(self, x):
        out = self.classifier(self.conv(x).relu().mean((2, 3)))
        if self.apply_sigmoid:
            out = torch.sigmoid(out)
        if self.op_threshs is not None:
            out = torch.sigmoid(out)  # (the real op_norm rescaling is omitted: probabilities either way)
        return out


def make_fake_xrv(cache_dir: Path) -> types.ModuleType:
    """The API surface of torchxrayvision >= 1.2 that the loader uses (see adapters.load_xrv)."""
    xrv = types.ModuleType("torchxrayvision")
    models = types.ModuleType("torchxrayvision.models")
    utils = types.ModuleType("torchxrayvision.utils")
    xrv.models, xrv.utils = models, utils
    xrv.calls = types.SimpleNamespace(downloads=[], built=[])
    utils.get_cache_dir = lambda: str(cache_dir) + os.sep
    entry = {"weights_url": FAKE_URL, "labels": FAKE_LABELS, "op_threshs": [0.1, 0.2, float("nan"), 0.3]}
    models.model_urls = {"all": entry, "densenet121-res224-all": entry}

    def get_weights(weights, cache_dir=None):
        folder = Path(cache_dir or utils.get_cache_dir())
        local = folder / os.path.basename(FAKE_URL)
        if not local.is_file():
            xrv.calls.downloads.append(weights)  # the real one downloads here
            raise AssertionError("download attempted")
        return str(local)

    def DenseNet(weights=None, op_threshs=None, apply_sigmoid=False, cache_dir=None):  # mimics the class
        xrv.calls.built.append({"weights": weights, "cache_dir": cache_dir})
        return _FakeXrvDenseNet(weights, op_threshs, apply_sigmoid, cache_dir, _xrv=xrv)

    def get_model(weights, **kwargs):
        if weights.startswith("densenet"):
            return DenseNet(weights=weights, **kwargs)
        raise ValueError("Unknown model")

    models.DenseNet, models.get_model, models.get_weights = DenseNet, get_model, get_weights
    return xrv


@pytest.fixture
def fake_xrv(tmp_path, monkeypatch):
    cache = tmp_path / "xrv-cache" / "models_data"
    cache.mkdir(parents=True)
    xrv = make_fake_xrv(cache)
    for name, mod in (("torchxrayvision", xrv), ("torchxrayvision.models", xrv.models),
                      ("torchxrayvision.utils", xrv.utils)):
        monkeypatch.setitem(sys.modules, name, mod)
    xrv.cache = cache
    return xrv


def test_xrv_in_cache(fake_xrv):
    torch.manual_seed(6)
    ref = _FakeXrvDenseNet()
    weights_file = fake_xrv.cache / os.path.basename(FAKE_URL)
    torch.save(ref.state_dict(), weights_file)
    loaded = load_model("xrv:densenet121-res224-all", device="cpu", trust_code=True)
    info = loaded.info
    assert (info.task, info.spatial_dims, info.in_channels, info.output) == ("classification", 2, 1, "probabilities")
    assert info.class_names == ["Atelectasis", "Consolidation", "(unused 2)", "Pneumothorax"]
    assert info.roi_size == [224, 224]
    assert loaded.checksum == file_checksum(weights_file)
    assert fake_xrv.calls.downloads == []
    assert fake_xrv.calls.built[0]["cache_dir"] == str(fake_xrv.cache)
    # 8-bit grey image -> xrv's [-1024, 1024] scaling, applied by the "fixed" normalisation
    x = torch.randint(0, 256, (1, 1, 224, 224), generator=torch.Generator().manual_seed(7)).float()
    ref.op_threshs = torch.tensor([0.1, 0.2, float("nan"), 0.3])
    with torch.no_grad():
        expected = ref.eval()((2 * x / 255 - 1) * 1024)
    torch.testing.assert_close(loaded.forward(x), expected, rtol=1e-4, atol=1e-5)


def test_xrv_not_in_cache_is_a_clear_error_without_download(fake_xrv):
    with pytest.raises(ModelError, match=r"xrv:densenet121-res224-all: weights fake-densenet121-best\.pt are not in "
                                         r"torchxrayvision's cache .*does not download"):
        load_model("xrv:densenet121-res224-all", device="cpu", trust_code=True)
    assert fake_xrv.calls.downloads == [] and fake_xrv.calls.built == []


def test_xrv_unknown_weights(fake_xrv):
    with pytest.raises(ModelError, match=r"unknown torchxrayvision weights 'densenet999'; known: all, densenet121"):
        load_model("xrv:densenet999", device="cpu", trust_code=True)


def test_xrv_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchxrayvision", None)  # makes `import torchxrayvision` fail
    with pytest.raises(ModelError, match=r"xrv:densenet121-res224-all: torchxrayvision is not installed or not "
                                         r"importable \(.*\); pip install torchxrayvision"):
        load_model("xrv:densenet121-res224-all", device="cpu", trust_code=True)


def test_xrv_normalisation_constants_are_exact():
    x = torch.arange(256, dtype=torch.float64)
    torch.testing.assert_close((x - adapters.XRV_NORM_MEAN) / adapters.XRV_NORM_STD, (2 * x / 255 - 1) * 1024)
