"""One model registry for the CLI, the GUI and the study: spec string -> :class:`LoadedModel`.

Spec strings:

* ``demo:unet3d`` / ``demo:unet2d`` / ``demo:cxr`` — the project's trained demo models (shipped);
* ``torchscript:PATH`` — a TorchScript file (runs code: needs ``trust_code``);
* ``bundle:DIR`` — a MONAI bundle folder (network from its configs; runs code: needs ``trust_code``);
* ``factory:package.module:function`` with ``weights=PATH`` — imports user code (needs
  ``trust_code``) and loads a state dict with ``torch.load(..., weights_only=True)``;
* ``xrv:WEIGHTS`` — a torchxrayvision model whose weights are already in its cache (offline;
  torchxrayvision unpickles its own file, so this also needs ``trust_code``);
* ``nnunet:DIR[:FOLDS][:notta]`` — an nnU-Net v2 result folder (plans, dataset.json, fold_N/
  checkpoint_final.pth), with nnU-Net's whole inference inside the wrapped model (runs no code
  from the folder; ``weights`` names another checkpoint file, e.g. checkpoint_best.pth).

Metadata (:class:`ModelInfo`) comes from the bundle metadata, a JSON sidecar next to the file
(``model.pt`` -> ``model.json``), the demo model's JSON, or ``info_overrides`` (CLI flags).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import ModelError
from .base import LoadedModel, ModelInfo, NativeInputModel

Loader = Callable[..., tuple[torch.nn.Module, ModelInfo, str | None]]
_LOADERS: dict[str, Loader] = {}
# torchscript/bundle/factory run code from the user's files; xrv lets torchxrayvision unpickle its
# cached file with its own torch.load, which we cannot force to weights_only
SCHEMES_NEEDING_TRUST = {"torchscript", "bundle", "factory", "xrv"}
_BUILTIN_LOADER_MODULES = ("adapters", "demo", "nnunet")
_builtins_loaded = False


def register_scheme(scheme: str, loader: Loader) -> None:
    _LOADERS[scheme] = loader


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; anything else is validated."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available here", fix="device_cpu")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError(f"device {device!r} requested but MPS is not available here", fix="device_cpu")
    return dev


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    if device.type == "mps":
        return "Apple GPU (MPS)"
    return "CPU"


def _ensure_loaders():
    """Import the built-in loader modules once (each registers its schemes)."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    import importlib

    for name in _BUILTIN_LOADER_MODULES:
        importlib.import_module(f"{__package__}.{name}")
    _builtins_loaded = True


def load_model(
    spec: str,
    *,
    weights: str | None = None,
    trust_code: bool = False,
    device: str | torch.device | None = "auto",
    info_overrides: dict | None = None,
    sliding_window: bool = True,
    preprocess: str | None = None,
) -> LoadedModel:
    """Load a model from its spec string. Errors are :class:`ModelError` with one clear line.

    ``preprocess="liu"``: Liu et al.'s N4 bias-field correction and resize to 128³ inside the
    wrapped model (:mod:`.preprocess`), recorded in the model info."""
    _ensure_loaders()
    if not isinstance(spec, str) or ":" not in spec:
        raise ModelError(f"model spec {spec!r} must look like SCHEME:VALUE, with SCHEME one of {sorted(_LOADERS)}")
    scheme, _, value = spec.partition(":")
    if scheme not in _LOADERS:
        raise ModelError(f"unknown model scheme {scheme!r} in {spec!r}; known: {', '.join(sorted(_LOADERS))}")
    if scheme in SCHEMES_NEEDING_TRUST and not trust_code:
        raise ModelError(
            f"{spec}: loading a {scheme} model runs code from it; refused until you say you trust it "
            "(only do that for files you trust)", fix="trust_code")
    dev = resolve_device(device)
    net, info, checksum = _LOADERS[scheme](value, weights=weights, trust_code=trust_code, info=None)
    if preprocess not in (None, "", "none"):
        from .preprocess import preprocessing_fields

        info_overrides = {**preprocessing_fields(preprocess, info.spatial_dims), **(info_overrides or {})}
    if info_overrides:
        merged = info.to_dict()
        merged.update({k: v for k, v in info_overrides.items() if v is not None})
        info = ModelInfo.from_dict(merged)
    if not info.name:
        info.name = spec
    if isinstance(net, NativeInputModel):  # a loader that builds its own wrapper (nnunet)
        if preprocess not in (None, "", "none"):
            raise ModelError(f"{spec}: brings its own preprocessing (nnU-Net's plans); --preprocess does not apply")
        module = net
        module.info = info
    else:
        module = NativeInputModel(net, info, sliding_window=sliding_window)
    for p in module.parameters():
        p.requires_grad_(False)  # attacks differentiate the input only
    loaded = LoadedModel(module=module, info=info, spec=spec, checksum=checksum)
    return loaded.to(dev)


def known_schemes() -> list[str]:
    _ensure_loaders()
    return sorted(_LOADERS)
