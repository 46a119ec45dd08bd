"""Model protocol, registry and adapters (demo models, TorchScript, MONAI bundles, factories, xrv, nnU-Net v2)."""

from .base import LoadedModel, ModelInfo, NativeInputModel
from .registry import describe_device, known_schemes, load_model, resolve_device

__all__ = ["LoadedModel", "ModelInfo", "NativeInputModel", "describe_device", "known_schemes", "load_model",
           "resolve_device"]
