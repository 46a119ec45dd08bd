"""Loaders for models the user brings: TorchScript files, MONAI bundles, Python factories, torchxrayvision.

Each loader has the registry's signature ``loader(value, *, weights, trust_code, info)`` and returns
``(network, ModelInfo, checksum)``; the network takes *normalised* input (the registry wraps it in
:class:`~napari_medadv.core.models.base.NativeInputModel`). Every failure is a :class:`ModelError`
with one line naming the file or spec and the problem.

Safety: ``torchscript``, ``bundle`` and ``factory`` run code from the model (the registry refuses
them without ``trust_code``). Weight files are only ever read with
``torch.load(..., weights_only=True)``: a file holding pickled Python objects other than tensors is
refused, never executed. The ``xrv`` loader never downloads: weights must already be in
torchxrayvision's cache.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import pickle
import re
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from .base import BRATS_REGION_NAMES, ModelInfo, file_checksum
from .registry import register_scheme

Loaded = tuple[nn.Module, ModelInfo, "str | None"]

_SIDECAR_HINT = (
    'fields: task ("segmentation"|"classification"), spatial_dims (2|3), in_channels, '
    'output ("softmax"|"sigmoid"|"probabilities"), normalization, and label_values / region_names / '
    'class_names, optionally roi_size, spacing; e.g. {"task": "segmentation", "spatial_dims": 3, '
    '"in_channels": 4, "output": "softmax", "label_values": [0, 1, 2, 4], "normalization": "zscore-nonzero"}'
)


# ----------------------------------------------------------------------------- shared helpers
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _existing_file(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"{p}: {what} not found")
    if not p.is_file():
        raise ModelError(f"{p}: {what} is not a file")
    return p


def _sidecar(path: Path) -> Path | None:
    """``model.pt`` -> ``model.json`` or ``model.pt.json``, whichever exists first."""
    for cand in (path.with_suffix(".json"), path.with_name(path.name + ".json")):
        if cand != path and cand.is_file():
            return cand
    return None


def _info_from_sidecar(path: Path, info: ModelInfo | None, kind: str) -> ModelInfo:
    if info is not None:
        return info
    side = _sidecar(path)
    if side is None:
        raise ModelError(
            f"{path}: no model metadata next to the {kind}; write {path.with_suffix('.json').name} "
            f"(or {path.name}.json) beside it — {_SIDECAR_HINT}"
        )
    return ModelInfo.from_json(side)


def _short_list(items, n: int = 5) -> str:
    items = list(items)
    shown = ", ".join(items[:n])
    return f"[{shown}{f', … (+{len(items) - n} more)' if len(items) > n else ''}]"


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict with ``torch.load(weights_only=True)``; refuse anything else.

    Accepts the state dict itself or a checkpoint holding it under ``"model"``/``"state_dict"``
    (MONAI bundle / Lightning conventions); strips a DataParallel ``module.`` prefix.
    """
    p = _existing_file(path, "weights file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        glob = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
        if glob:
            raise ModelError(
                f"{p}: refused — the file contains pickled Python objects ({glob.group(1)}), not just tensors "
                "(read with torch.load(weights_only=True), which never runs code from the file); "
                "save the weights with torch.save(model.state_dict(), path)"
            ) from None
        op = re.search(r"Unsupported operand \d+", str(exc))
        detail = f"invalid pickle data ({op.group(0)})" if op else _first_line(exc)
        raise ModelError(f"{p}: not a readable PyTorch weights file (corrupt or truncated?): {detail}") from None
    except Exception as exc:  # torch raises RuntimeError/EOFError/ValueError/... for damaged files
        raise ModelError(f"{p}: not a readable PyTorch weights file (corrupt or truncated?): {_first_line(exc)}") from None
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "network"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ModelError(f"{p}: expected a state dict (name -> tensor), found {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(f"{p}: not a plain state dict; entries that are not tensors: {_short_list(bad)}")
    sd = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_weights_strict(net: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """``net.load_state_dict(state, strict=True)`` with a one-line error naming the bad keys."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} (file {tuple(state[k].shape)} vs network {tuple(expected[k].shape)})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short_list(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch {_short_list(shapes, 3)}")
    if problems:
        raise ModelError(f"{source}: weights do not match the network: {'; '.join(problems)}")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{source}: weights do not match the network: {_first_line(exc)}") from None


# ----------------------------------------------------------------------------- torchscript:PATH
def load_torchscript(value: str, *, weights: str | None = None, trust_code: bool = False,
                     info: ModelInfo | None = None) -> Loaded:
    """``torchscript:model.pt`` + ``model.json`` sidecar (or ``model.pt.json``)."""
    path = _existing_file(value, "TorchScript file")
    info = _info_from_sidecar(path, info, "TorchScript file")
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{path}: not a TorchScript archive (not a zip file: corrupt, truncated or another format)")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    if not any(n.endswith("constants.pkl") or "/code/" in n for n in names):
        raise ModelError(
            f"{path}: not a TorchScript archive (looks like torch.save output, e.g. a state dict; "
            "use factory:module:function with weights=PATH, or export with torch.jit.script/trace)"
        )
    try:
        net = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ModelError(f"{path}: cannot load TorchScript archive (corrupt or incompatible?): {_first_line(exc)}") from None
    net.eval()
    return net, info, file_checksum(path)


# ----------------------------------------------------------------------------- bundle:DIR
_REGION_ALIASES = {
    "TC": ("tc", "tumor core", "tumour core"),
    "WT": ("wt", "whole tumor", "whole tumour"),
    "ET": ("et", "enhancing tumor", "enhancing tumour"),
}


def _ordered_channel_names(channel_def) -> list[str] | None:
    if not isinstance(channel_def, Mapping) or not channel_def:
        return None
    try:
        items = sorted(channel_def.items(), key=lambda kv: int(kv[0]))
    except (TypeError, ValueError):
        return None
    return [str(v) for _, v in items]


def _region_name(label: str) -> str | None:
    low = re.sub(r"[\s_\-]+", " ", label.strip().lower())
    for region, aliases in _REGION_ALIASES.items():
        if low in aliases:
            return region
    return None


def _int_shape(shape) -> tuple[list[int] | None, int]:
    """metadata ``spatial_shape`` -> (fixed ints or None, size multiple from ``"8*n"`` entries)."""
    if not isinstance(shape, (list, tuple)) or not shape:
        return None, 1
    if all(isinstance(s, int) for s in shape):
        return [int(s) for s in shape], 1
    mult = 1
    for s in shape:
        m = re.fullmatch(r"\s*(\d+)\s*\*\s*n\s*", str(s))
        if m:
            mult = max(mult, int(m.group(1)))
    return None, mult


def _target_name(item) -> str:
    if isinstance(item, Mapping) and isinstance(item.get("_target_"), str):
        return item["_target_"].rsplit(".", 1)[-1]
    return ""


def _transforms(cfg_item) -> list[Mapping]:
    if isinstance(cfg_item, Mapping):
        inner = cfg_item.get("transforms")
        if isinstance(inner, list):
            return [t for t in inner if isinstance(t, Mapping)]
    if isinstance(cfg_item, list):
        return [t for t in cfg_item if isinstance(t, Mapping)]
    return []


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _normalization_from_preprocessing(transforms: list[Mapping], in_channels: int) -> tuple[dict, str] | None:
    """MONAI intensity transform in the bundle's preprocessing -> ModelInfo normalisation fields."""
    intensity = [t for t in transforms if _target_name(t).removesuffix("d") in
                 ("NormalizeIntensity", "ScaleIntensityRange", "ScaleIntensity")]
    if len(intensity) != 1:
        return None  # none, or a chain we cannot express as one normalisation
    t = intensity[0]
    name = _target_name(t).removesuffix("d")
    if name == "NormalizeIntensity":
        if t.get("subtrahend") is not None or t.get("divisor") is not None:
            return None
        if not (t.get("channel_wise", False) is True or in_channels == 1):
            return None
        mode = "zscore-nonzero" if t.get("nonzero", False) is True else "zscore"
        return {"normalization": mode}, f"preprocessing {_target_name(t)}"
    if name == "ScaleIntensityRange":
        a_min, a_max = _num(t.get("a_min")), _num(t.get("a_max"))
        b_min, b_max = _num(t.get("b_min")), _num(t.get("b_max"))
        if a_min is None or a_max is None or a_max == a_min:
            return None
        if b_min is None or b_max is None:
            scale, mean = a_max - a_min, a_min
        else:
            if b_max == b_min:
                return None
            scale = (a_max - a_min) / (b_max - b_min)
            mean = a_min - b_min * scale
        note = f"preprocessing {_target_name(t)}" + (" (its clip is not applied)" if t.get("clip") else "")
        return {"normalization": "fixed", "norm_mean": [mean] * in_channels,
                "norm_std": [scale] * in_channels}, note
    # ScaleIntensity: min-max to [minv, maxv]
    minv, maxv = t.get("minv", 0.0), t.get("maxv", 1.0)
    if _num(minv) == 0.0 and _num(maxv) == 1.0 and (t.get("channel_wise", False) is True or in_channels == 1):
        return {"normalization": "minmax"}, f"preprocessing {_target_name(t)}"
    return None


def _activation_from_postprocessing(transforms: list[Mapping]) -> str | None:
    for t in transforms:
        if _target_name(t).removesuffix("d") == "Activations":
            if t.get("sigmoid") is True:
                return "sigmoid"
            if t.get("softmax") is True:
                return "softmax"
    return None


def _bundle_info(root: Path, metadata: dict, config: dict, medadv: dict | None) -> ModelInfo:
    """ModelInfo from metadata.json ``network_data_format`` + the inference config + medadv.json."""
    meta_path = root / "configs" / "metadata.json"
    fmt = metadata.get("network_data_format") if isinstance(metadata, Mapping) else None
    fmt = fmt if isinstance(fmt, Mapping) else {}
    inputs = fmt.get("inputs") if isinstance(fmt.get("inputs"), Mapping) else {}
    outputs = fmt.get("outputs") if isinstance(fmt.get("outputs"), Mapping) else {}
    image = inputs.get("image") or (next(iter(inputs.values())) if inputs else None) or {}
    pred = outputs.get("pred") or (next(iter(outputs.values())) if outputs else None) or {}

    d: dict[str, Any] = {}
    extra: dict[str, Any] = {"source": "bundle"}
    notes: list[str] = []
    out_shape = _bundle_input_fields(d, extra, image, pred, config)
    _bundle_output_fields(d, pred, out_shape, config)
    _bundle_preprocessing_fields(d, extra, notes, config, medadv)
    if metadata.get("name") or metadata.get("task"):
        d["description"] = str(metadata.get("name") or metadata.get("task"))
    if notes:
        d["description"] = "; ".join(filter(None, [d.get("description", "")] + notes))
    d["extra"] = extra

    if medadv:
        ex = medadv.get("extra")
        d.update(medadv)
        if isinstance(ex, Mapping):
            d["extra"] = {**extra, **ex}
    need = [k for k in ("task", "spatial_dims", "in_channels", "output") if k not in d]
    if need:
        raise ModelError(
            f"{root}: cannot tell {', '.join(need)} from {meta_path.relative_to(root)} network_data_format "
            + (f"(outputs.pred format {pred.get('format')!r}, channel_def {pred.get('channel_def')!r}); "
               if fmt else "(it has none); ")
            + f"write configs/medadv.json giving them — {_SIDECAR_HINT}"
        )
    try:
        return ModelInfo.from_dict(d)
    except (TypeError, ModelError) as exc:
        raise ModelError(f"{root}: bundle metadata does not make a valid model description: {exc}") from None


def _bundle_input_fields(d: dict, extra: dict, image: Mapping, pred: Mapping, config: dict) -> list[int] | None:
    """Channels, spatial dims, size multiple, channel names and ROI of the bundle's input into
    ``d`` (and ``extra``); returns the output's fixed spatial shape, if any."""
    if isinstance(image.get("num_channels"), int):
        d["in_channels"] = image["num_channels"]
    in_shape, in_mult = _int_shape(image.get("spatial_shape"))
    out_shape, _ = _int_shape(pred.get("spatial_shape"))
    shape_len = len(image.get("spatial_shape") or pred.get("spatial_shape") or [])
    if shape_len in (2, 3):
        d["spatial_dims"] = shape_len
    if in_mult > 1:
        d["size_divisible"] = in_mult
    names = _ordered_channel_names(image.get("channel_def"))
    if names and d.get("in_channels") == len(names):
        d["channel_names"] = names
    if "is_patch_data" in image:
        extra["is_patch_data"] = bool(image["is_patch_data"])

    # roi: the metadata's fixed input shape, else the config's SlidingWindowInferer roi_size
    roi = in_shape
    inferer = config.get("inferer")
    if roi is None and _target_name(inferer) == "SlidingWindowInferer":
        r = inferer.get("roi_size")
        if isinstance(r, list) and all(isinstance(s, int) for s in r):
            roi = list(r)
    if roi is not None and (d.get("spatial_dims") in (None, len(roi))):
        d["roi_size"] = roi
        d.setdefault("spatial_dims", len(roi))
    return out_shape


def _bundle_output_fields(d: dict, pred: Mapping, out_shape: list[int] | None, config: dict) -> None:
    """Task and output kind (softmax labels, sigmoid regions, class names) into ``d``, from the
    output's format and channel names and the postprocessing's activation."""
    pred_format = str(pred.get("format", "")).lower()
    pred_type = str(pred.get("type", "")).lower()
    out_names = _ordered_channel_names(pred.get("channel_def"))
    n_out = pred.get("num_channels")
    activation = _activation_from_postprocessing(_transforms(config.get("postprocessing")))
    if pred_format == "segmentation" or (pred_type == "image" and out_shape is not None):
        d["task"] = "segmentation"
        regions = [_region_name(n) for n in out_names] if out_names else []
        if regions and all(regions) and activation in (None, "sigmoid"):
            d["output"] = "sigmoid"
            d["region_names"] = regions
        elif (out_names and len(out_names) >= 2 and activation in (None, "softmax")
              and out_names[0].strip().lower() in ("background", "bg")):
            d["output"] = "softmax"
            d["label_values"] = list(range(len(out_names)))
            d["label_names"] = {str(i): n for i, n in enumerate(out_names)}
        elif activation == "softmax" and isinstance(n_out, int) and n_out >= 2:
            d["output"] = "softmax"
            d["label_values"] = list(range(n_out))
            if out_names and len(out_names) == n_out:
                d["label_names"] = {str(i): n for i, n in enumerate(out_names)}
    elif pred_format in ("classes", "classification") or pred_type in ("probabilities", "logits"):
        d["task"] = "classification"
        if out_names:
            d["class_names"] = out_names
        if activation is not None:  # otherwise ambiguous (the network may apply it itself): medadv.json
            d["output"] = activation


def _bundle_preprocessing_fields(d: dict, extra: dict, notes: list[str], config: dict, medadv: dict | None) -> None:
    """Normalisation and spacing into ``d`` from the preprocessing transforms (where the
    normalisation came from into ``extra``; a note when it is unknown)."""
    pre = _transforms(config.get("preprocessing"))
    norm = _normalization_from_preprocessing(pre, d.get("in_channels", 1))
    if norm is not None:
        d.update(norm[0])
        extra["normalization_from"] = norm[1]
    elif d.get("region_names") == list(BRATS_REGION_NAMES):
        d["normalization"] = "zscore-nonzero"
        extra["normalization_from"] = "BraTS bundle convention (NormalizeIntensity nonzero, channel-wise)"
    elif not (medadv and "normalization" in medadv):
        notes.append("normalisation not found in the bundle's preprocessing; set it in configs/medadv.json")
    for t in pre:
        if _target_name(t).removesuffix("d") == "Spacing":
            pix = t.get("pixdim")
            if isinstance(pix, list) and all(_num(p) for p in pix) and len(pix) == d.get("spatial_dims"):
                d["spacing"] = [float(p) for p in pix]


def read_json_object(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: cannot read {what} ({_first_line(exc)})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: {what} must be a JSON object")
    return data


def load_bundle(value: str, *, weights: str | None = None, trust_code: bool = False,
                info: ModelInfo | None = None) -> Loaded:
    """``bundle:DIR`` — a MONAI bundle folder (configs/metadata.json, configs/inference.*, models/model.pt)."""
    root = Path(value).expanduser()
    if not root.is_dir():
        raise ModelError(f"{root}: MONAI bundle folder not found" if not root.exists()
                         else f"{root}: a MONAI bundle must be a folder (configs/, models/)")
    configs = root / "configs"
    meta_path = configs / "metadata.json"
    if not meta_path.is_file():
        raise ModelError(f"{root}: not a MONAI bundle — configs/metadata.json is missing")
    metadata = read_json_object(meta_path, "bundle metadata")
    cfg_path = next((configs / f"inference{ext}" for ext in (".json", ".yaml", ".yml")
                     if (configs / f"inference{ext}").is_file()), None)
    if cfg_path is None:
        raise ModelError(f"{root}: configs/inference.json (or .yaml) is missing")
    medadv_path = configs / "medadv.json"
    medadv = read_json_object(medadv_path, "medadv model metadata") if medadv_path.is_file() else None

    from monai.bundle import ConfigParser

    parser = ConfigParser()
    try:
        parser.read_config(str(cfg_path))
        parser.read_meta(str(meta_path))
    except Exception as exc:
        raise ModelError(f"{cfg_path}: cannot read bundle config ({_first_line(exc)})") from None
    config = parser.get("", {}) or {}
    if info is None:
        info = _bundle_info(root, metadata, config, medadv)

    key = next((k for k in ("network_def", "network") if k in config), None)
    if key is None:
        raise ModelError(f"{cfg_path}: no 'network_def' (or 'network') item to build the network from")
    parser["bundle_root"] = str(root)
    if "device" in config:
        parser["device"] = "$torch.device('cpu')"
    try:
        net = parser.get_parsed_content(key, instantiate=True)
    except Exception as exc:
        raise ModelError(f"{cfg_path}: cannot build '{key}' ({_first_line(exc)})") from None
    if not isinstance(net, nn.Module):
        raise ModelError(f"{cfg_path}: '{key}' built a {type(net).__name__}, not a torch.nn.Module")

    wpath = Path(weights).expanduser() if weights else root / "models" / "model.pt"
    if not wpath.exists() and not weights and (root / "models" / "model.ts").is_file():
        ts_net, _, checksum = load_torchscript(str(root / "models" / "model.ts"), info=info)
        return ts_net, info, checksum
    if not wpath.exists():
        raise ModelError(f"{wpath}: bundle weights not found" + ("" if weights else f" (expected models/model.pt in {root})"))
    load_weights_strict(net, load_state_dict_file(wpath), wpath)
    net.eval()
    return net, info, file_checksum(wpath)


# ----------------------------------------------------------------------------- factory:module:function
def _import_factory_module(mod_spec: str, spec: str):
    looks_like_file = mod_spec.endswith(".py") or "/" in mod_spec or "\\" in mod_spec
    if looks_like_file:
        path = Path(mod_spec).expanduser()
        if not path.is_file():
            raise ModelError(f"factory:{spec}: Python file {path} not found")
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        name = f"_medadv_factory_{re.sub(r'[^0-9a-zA-Z_]', '_', path.stem)}_{digest}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ModelError(f"factory:{spec}: cannot import {path} as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise ModelError(f"factory:{spec}: importing {path} failed: {_first_line(exc)}") from None
        return module
    try:
        return importlib.import_module(mod_spec)
    except ModuleNotFoundError as exc:
        if exc.name and (mod_spec == exc.name or mod_spec.startswith(exc.name + ".")):
            raise ModelError(f"factory:{spec}: module {mod_spec!r} not found (is it installed or on PYTHONPATH?)") from None
        raise ModelError(f"factory:{spec}: importing module {mod_spec!r} failed: {_first_line(exc)}") from None
    except Exception as exc:
        raise ModelError(f"factory:{spec}: importing module {mod_spec!r} failed: {_first_line(exc)}") from None


def load_factory(value: str, *, weights: str | None = None, trust_code: bool = False,
                 info: ModelInfo | None = None) -> Loaded:
    """``factory:package.module:function`` (or ``path/to/file.py:function``) + ``weights=STATE_DICT``."""
    mod_spec, sep, func_name = value.rpartition(":")
    if not sep or not mod_spec or not func_name.isidentifier():
        raise ModelError(f"factory:{value}: spec must be package.module:function or path/to/file.py:function")
    if not weights:
        raise ModelError(f"factory:{value}: factory models need a weights file (a state dict saved with "
                         "torch.save(model.state_dict(), path))", fix="weights")
    wpath = _existing_file(weights, "weights file")
    info = _info_from_sidecar(wpath, info, "weights file")
    module = _import_factory_module(mod_spec, value)
    fn = getattr(module, func_name, None)
    if fn is None:
        raise ModelError(f"factory:{value}: module {mod_spec!r} has no function {func_name!r}")
    if not callable(fn):
        raise ModelError(f"factory:{value}: {func_name!r} in {mod_spec!r} is a {type(fn).__name__}, not a function")
    try:
        net = fn()
    except Exception as exc:
        raise ModelError(f"factory:{value}: calling {func_name}() failed: {_first_line(exc)}") from None
    if not isinstance(net, nn.Module):
        raise ModelError(f"factory:{value}: {func_name}() returned a {type(net).__name__}, not a torch.nn.Module")
    load_weights_strict(net, load_state_dict_file(wpath), wpath)
    net.eval()
    return net, info, file_checksum(wpath)


# ----------------------------------------------------------------------------- xrv:WEIGHTS
#: torchxrayvision's pixel convention: an 8-bit image x in [0, 255] becomes (2 x / 255 - 1) * 1024,
#: i.e. (x - 127.5) / (255 / 2048) — exactly a "fixed" normalisation with these values.
XRV_NORM_MEAN = 127.5
XRV_NORM_STD = 255.0 / 2048.0


def _xrv_cache_file(xrv, weights: str, spec: str) -> tuple[Path, Path]:
    models = xrv.models
    urls = getattr(models, "model_urls", None)
    if not isinstance(urls, Mapping):
        raise ModelError(f"{spec}: this torchxrayvision version has no models.model_urls table; cannot locate cached weights")
    if weights not in urls:
        known = sorted(k for k in urls if not k.startswith("_"))
        raise ModelError(f"{spec}: unknown torchxrayvision weights {weights!r}; known: {', '.join(known)}")
    url = urls[weights].get("weights_url") if isinstance(urls[weights], Mapping) else None
    if not url:
        raise ModelError(f"{spec}: torchxrayvision lists no weights file for {weights!r}")
    utils = getattr(xrv, "utils", None)
    if utils is not None and callable(getattr(utils, "get_cache_dir", None)):
        cache_dir = Path(utils.get_cache_dir()).expanduser()
    else:  # versions before utils.get_cache_dir() hard-coded this folder
        cache_dir = Path("~/.torchxrayvision/models_data").expanduser()
    return cache_dir, cache_dir / Path(str(url)).name


def load_xrv(value: str, *, weights: str | None = None, trust_code: bool = False,
             info: ModelInfo | None = None) -> Loaded:
    """``xrv:densenet121-res224-all`` — a torchxrayvision classifier from its local cache (no download).

    Intensities: the returned ModelInfo uses ``normalization="fixed"`` with mean 127.5 and std
    255/2048, which maps an 8-bit image [0, 255] to torchxrayvision's [-1024, 1024] exactly (what
    ``xrv.datasets.normalize(img, 255)`` does). Images with another range (e.g. 12-bit DICOM) need
    ``norm_mean = maxval / 2``, ``norm_std = maxval / 2048`` via the info overrides.
    """
    spec = f"xrv:{value}"
    name = value.strip()
    if not name:
        raise ModelError(f"{spec}: give a torchxrayvision weights name, e.g. xrv:densenet121-res224-all")
    try:
        xrv = importlib.import_module("torchxrayvision")
    except Exception as exc:  # ImportError, or a broken torchvision raising RuntimeError/AttributeError
        raise ModelError(
            f"{spec}: torchxrayvision is not installed or not importable ({_first_line(exc)}); "
            "pip install torchxrayvision"
        ) from None
    cache_dir, cached = _xrv_cache_file(xrv, name, spec)
    if not cached.is_file():
        raise ModelError(
            f"{spec}: weights {cached.name} are not in torchxrayvision's cache ({cache_dir}); napari-medadv "
            "does not download — fetch them once with torchxrayvision itself or copy the file there"
        )
    models = xrv.models
    kwargs: dict[str, Any] = {}
    ctor = getattr(models, "ResNet" if name.startswith("resnet") else "DenseNet", None)
    try:
        if ctor is not None and "cache_dir" in inspect.signature(ctor).parameters:
            kwargs["cache_dir"] = str(cache_dir)  # the folder we checked is the one it reads
    except (TypeError, ValueError):
        pass
    try:
        if callable(getattr(models, "get_model", None)):
            net = models.get_model(name, **kwargs)
        elif ctor is not None:
            net = ctor(weights=name, **kwargs)
        else:
            raise ModelError(f"{spec}: this torchxrayvision version has neither models.get_model nor models.DenseNet")
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{spec}: torchxrayvision could not build the model from {cached}: {_first_line(exc)}") from None
    if not isinstance(net, nn.Module):
        raise ModelError(f"{spec}: torchxrayvision returned a {type(net).__name__}, not a torch.nn.Module")
    net.eval()
    if info is None:
        classes = list(getattr(net, "pathologies", None) or getattr(net, "targets", None) or [])
        # with op_threshs (all released weights) or apply_sigmoid the forward ends in probabilities
        activated = getattr(net, "op_threshs", None) is not None or bool(getattr(net, "apply_sigmoid", False))
        res = re.search(r"res(\d+)", name)
        info = ModelInfo(
            task="classification",
            spatial_dims=2,
            in_channels=1,
            output="probabilities" if activated else "sigmoid",
            normalization="fixed",
            norm_mean=[XRV_NORM_MEAN],
            norm_std=[XRV_NORM_STD],
            class_names=[c if c else f"(unused {i})" for i, c in enumerate(classes)] or None,
            roi_size=[int(res.group(1))] * 2 if res else None,
            name=f"torchxrayvision {name}",
            description="torchxrayvision chest X-ray classifier; input: 8-bit grey image [0, 255]",
            extra={"source": "torchxrayvision", "weights_file": str(cached),
                   "input_range": [0, 255], "xrv_scaling": "(2*x/255 - 1)*1024"},
        )
    return net, info, file_checksum(cached)


register_scheme("torchscript", load_torchscript)
register_scheme("bundle", load_bundle)
register_scheme("factory", load_factory)
register_scheme("xrv", load_xrv)
