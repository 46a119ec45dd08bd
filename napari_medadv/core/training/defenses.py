"""Training-time defenses of Liu et al. 2021 for the 3-D segmentation demo model
(``medadv train demo-unet3d --defense distill|adversarial|noise``).

* **distill** — defensive distillation (Liu section "Defense via distillation", after Papernot
  et al. 2016). The teacher F is a trained network (default the shipped ``demo:unet3d``); its soft
  labels are eq. 4, ``F(X) = softmax(z_F(X) / T)``. The student F_d has the same architecture and
  is trained at temperature T — ``softmax(z_d / T)`` — with the soft Dice between its output and
  the teacher's soft labels (eq. 7, :class:`~napari_medadv.core.losses.DistillationDiceLoss`);
  it is deployed at T = 1. Liu train F itself at temperature T; our teacher was trained at
  T = 1, and ``teacher_temperature`` (default: T, i.e. eq. 4 applied to the given teacher's
  logits) is the temperature its soft labels are taken at. With ``teacher_temperature=1`` (a
  teacher trained at T has logits about T times larger, so its soft labels at T equal our
  teacher's plain softmax) the student must grow its logits T-fold before matching anything.
  What we measured when fine-tuning from the teacher for 144 steps (24 cases x 6 epochs, CPU):
  T = 20 with either teacher temperature and T = 5 destroyed the segmentation (held-out WT Dice
  0.05-0.17: with soft labels, the background's diffuse probability mass dominates the
  soft Dice sums), T = 2 kept it (WT 0.849, TC 0.937, ET 0.897 vs 0.887 / 0.945 / 0.904), so T = 2
  is the default and the shipped ``unet3d-distill``. A later sweep (``--temperature 1,5,20``) gave
  T = 1: WT 0.884, T = 5: 0.047, and T = 20 with the background counted in the soft Dice
  (``distill_background``): 0.041 — no recipe tried keeps the segmentation from T = 5 on. Liu et al. train from scratch for 400 epochs
  at T up to 5000; that is not a CPU-minutes budget. By default the student starts from a fresh
  network ("two independent networks"); ``init`` starts it from the teacher (fine-tuning).
* **adversarial** — adversarial training with the FGSM-regularised objective (eq. 9)
  ``L~ = β L(x, y) + (1 − β) L(x + ε sign ∇_x L(x, y), y)``; the FGSM example is regenerated for
  every batch from the current model. L is the paper's soft Dice loss (eq. 6,
  :class:`~napari_medadv.core.losses.SoftDiceLoss`, ``adv_loss="soft-dice"``, the default) or the
  undefended model's training loss (MONAI ``DiceCELoss``, ``adv_loss="dicece"``: how the shipped
  ``unet3d-adv`` was fine-tuned). ``adv_update="joint"`` takes one optimiser step on eq. 9 per
  batch; ``"sequential"`` is the paper's alternative, one step on the FGSM examples of the batch
  and then one on the clean batch (β unused). ε is a fraction of each channel's intensity range and the
  step stays on the image's non-zero support — exactly the FGSM the study evaluates.
* **noise** — the paper's baseline: uniform L∞ noise of radius r (fraction of each channel's
  range, on the non-zero support); every batch is used twice, first perturbed, then clean
  ("for a fair comparison to adversarial training").

By default every defense keeps the undefended model's data (same training seeds), augmentation,
optimiser, schedule, epochs and batch size, so differences come from the defense alone. The
shipped defended weights were instead *fine-tuned* from ``demo:unet3d`` with the defense (24 of
its training cases, 6 epochs; each JSON's ``training.command`` replays it) to stay within CPU
minutes. The result is ``unet3d-distill.pt/.json`` etc., loadable as ``demo:unet3d-distill`` once
in the demo folder.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.seeds import GLIOMA_HELDOUT_SEEDS
from ..errors import MedadvError
from ..intensity import compute_range
from ..losses import DistillationDiceLoss
from ..models import load_model
from ..models.base import ModelInfo, NativeInputModel
from ..models.demo import build_architecture
from .demo import DEMO_CONFIGS, glioma_arrays, training_seeds, write_trained
from .loop import Log, evaluate_glioma, fit, segmentation_batches

DEFENSES = ("distill", "adversarial", "noise")
#: file/model-name suffix of each defense: ``demo:unet3d-adv`` ...
SUFFIX = {"distill": "distill", "adversarial": "adv", "noise": "noise"}
DEFAULTS = {"temperature": 2.0, "eps": 0.05, "beta": 0.5, "radius": 0.01, "teacher": "demo:unet3d",
            "teacher_temperature": None, "adv_loss": "soft-dice", "adv_update": "joint", "distill_background": False}
ADV_LOSSES = ("soft-dice", "dicece")
ADV_UPDATES = ("joint", "sequential")


def defended_name(base: str, defense: str) -> str:
    if defense not in DEFENSES:
        raise MedadvError(f"unknown defense {defense!r}; choose one of {', '.join(DEFENSES)}")
    return f"{base}-{SUFFIX[defense]}"


# --------------------------------------------------------------------------- building blocks


def _support(x: torch.Tensor) -> torch.Tensor:
    """``B 1 *spatial`` mask of voxels where any channel is non-zero (skull-stripped support)."""
    return (x != 0).any(dim=1, keepdim=True).to(x.dtype)


def fgsm_examples(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, eps: float,
                  *, loss_clean: torch.Tensor | None = None) -> torch.Tensor:
    """FGSM examples of the *current* model for a training batch (eq. 9's inner term).

    ``x`` must require grad when ``loss_clean`` (the graph of ``loss_fn(model(x), y)``) is
    given; then no extra forward pass is needed. Only the input gradient is taken
    (``torch.autograd.grad``), so no parameter ``.grad`` accumulates.
    """
    if loss_clean is None:
        x = x.detach().requires_grad_(True)
        loss_clean = loss_fn(model(x), y)
    (grad,) = torch.autograd.grad(loss_clean, x, retain_graph=True)
    rng = compute_range(x.detach())
    delta = rng.eps_native(eps) * grad.sign() * _support(x.detach())
    return rng.clamp(x.detach() + delta).detach()


def adversarial_loss(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, eps: float,
                     beta: float = 0.5) -> torch.Tensor:
    """Liu eq. 9: ``β L(x, y) + (1 − β) L(x + ε sign ∇_x L(x, y), y)`` (one scalar)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    x = x.detach().requires_grad_(True)
    clean = loss_fn(model(x), y)
    x_adv = fgsm_examples(model, loss_fn, x, y, eps, loss_clean=clean)
    return beta * clean + (1.0 - beta) * loss_fn(model(x_adv), y)


def uniform_noise(x: torch.Tensor, radius: float, generator: torch.Generator) -> torch.Tensor:
    """``x + U(−r, r)·range`` per channel, on the non-zero support, clamped to the range."""
    rng = compute_range(x)
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2.0 - 1.0
    return rng.clamp(x + u * rng.eps_native(radius) * _support(x))


# --------------------------------------------------------------------------- training


def train_defended(
    defense: str,
    out_dir: str | Path | None = None,
    *,
    base: str = "unet3d",
    seed: int = 0,
    n_cases: int | None = None,
    epochs: int | None = None,
    temperature: float = DEFAULTS["temperature"],
    eps: float = DEFAULTS["eps"],
    beta: float = DEFAULTS["beta"],
    radius: float = DEFAULTS["radius"],
    teacher: str = DEFAULTS["teacher"],
    teacher_temperature: float | None = DEFAULTS["teacher_temperature"],
    adv_loss: str = DEFAULTS["adv_loss"],
    adv_update: str = DEFAULTS["adv_update"],
    distill_background: bool = DEFAULTS["distill_background"],
    init: str | None = None,
    lr: float | None = None,
    data: list | None = None,
    evaluate: bool = True,
    name: str | None = None,
    log: Log = print,
) -> dict:
    """Train the defended variant of demo model ``base`` and write ``BASE-SUFFIX.pt/.json``.

    ``init``: a model spec (e.g. ``demo:unet3d``) whose weights the defended network starts from
    (fine-tuning with the defense) instead of a fresh initialisation; ``lr`` overrides the
    learning rate. ``data`` (a list of ``(image, labels)``) replaces the generated training
    phantoms (tests use a few small cases); ``evaluate=False`` skips the held-out Dice; ``name``
    replaces ``BASE-SUFFIX`` (a temperature sweep writes ``unet3d-distill-T5`` ...).
    Returns the training record.
    """
    name = name or defended_name(base, defense)
    cfg = _base_config(base)
    if teacher_temperature is None:
        teacher_temperature = temperature
    _check_hyperparameters(temperature, eps, beta, radius, teacher_temperature)
    if adv_loss not in ADV_LOSSES:
        raise MedadvError(f"unknown adversarial-training loss {adv_loss!r}; choose one of {', '.join(ADV_LOSSES)}")
    if adv_update not in ADV_UPDATES:
        raise MedadvError(f"unknown adversarial-training update {adv_update!r}; choose one of {', '.join(ADV_UPDATES)}")
    tr = _training_settings(cfg, n_cases, epochs, lr)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    noise_gen = torch.Generator().manual_seed(seed + 1)
    info = _defended_info(cfg, name, defense, dict(temperature=temperature, eps=eps, beta=beta, radius=radius,
                                                    adv_loss=adv_loss, adv_update=adv_update))
    net = _network(cfg, base, init)
    model = NativeInputModel(net, info, sliding_window=False)
    t0 = time.perf_counter()
    seeds = training_seeds(seed, tr["n_cases"])
    if data is None:
        data = [glioma_arrays(s) for s in seeds]
        log(f"generated {len(data)} training phantoms in {time.perf_counter() - t0:.0f} s")
    else:
        seeds = []
    params, steps, batches, loss_of = _objective(
        defense, model, data, tr, rng, noise_gen, temperature=temperature, eps=eps, beta=beta, radius=radius,
        teacher=teacher, teacher_temperature=teacher_temperature, adv_loss=adv_loss, adv_update=adv_update,
        distill_background=distill_background)
    log(f"training {name}: {defense} {params}")
    fit(model, tr, steps, batches, loss_of, log)
    model.eval()
    heldout = evaluate_glioma(model, [glioma_arrays(s) for s in GLIOMA_HELDOUT_SEEDS]) if evaluate else {}
    elapsed = time.perf_counter() - t0
    log(f"held-out: {heldout}  ({elapsed:.0f} s in all)")
    record = {
        "defense": defense, **params, "init": init, "seed": seed,
        "training_seeds": [seeds[0], seeds[-1]] if seeds else None,
        **tr, "seconds": round(elapsed, 1), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.machine(), "heldout": heldout,
        "command": _command(base, defense, params, seed, tr, init),
    }
    return write_trained(name, out_dir, net, cfg, info, record)


def _base_config(base: str) -> dict:
    """A deep copy of the demo configuration of ``base``, which must be the 3-D segmentation UNet."""
    cfg = json.loads(json.dumps(DEMO_CONFIGS.get(base, {})))
    if not cfg or cfg["info"]["task"] != "segmentation" or cfg["arch"] != "monai.UNet":
        raise MedadvError(f"defenses are implemented for the 3-D segmentation demo model (unet3d), not {base!r}")
    return cfg


def _check_hyperparameters(temperature: float, eps: float, beta: float, radius: float,
                           teacher_temperature: float) -> None:
    for label, v, lo in (("temperature", temperature, 0.0), ("eps", eps, 0.0), ("radius", radius, 0.0),
                         ("teacher_temperature", teacher_temperature, 0.0)):
        if not (np.isfinite(v) and v > lo):
            raise MedadvError(f"{label} must be > 0, got {v}")
    if not 0.0 <= beta <= 1.0:
        raise MedadvError(f"beta (weight of the adversarial loss) must be in [0, 1], got {beta}")


def _training_settings(cfg: dict, n_cases: int | None, epochs: int | None, lr: float | None) -> dict:
    """The base model's training settings (``cfg["train"]``, updated in place) with the overrides."""
    tr = cfg["train"]
    if n_cases is not None:
        tr["n_cases"] = int(n_cases)
    if epochs is not None:
        tr["epochs"] = int(epochs)
    if lr is not None:
        if not (np.isfinite(lr) and lr > 0):
            raise MedadvError(f"the learning rate must be > 0, got {lr}")
        tr["lr"] = float(lr)
    return tr


def _defended_info(cfg: dict, name: str, defense: str, values: dict) -> ModelInfo:
    info_d = dict(cfg["info"])
    info_d["name"] = f"demo:{name}"
    info_d["description"] = f"{cfg['info']['description']}; defense: {_describe(defense, values)}"
    return ModelInfo.from_dict(info_d)


def _network(cfg: dict, base: str, init: str | None) -> nn.Module:
    """A fresh network of the base architecture, or one holding the weights of model ``init``."""
    net = build_architecture(cfg["arch"], cfg["arch_kwargs"])
    if init is not None:
        start = load_model(init, device="cpu", sliding_window=False).module.net
        try:
            net.load_state_dict(start.state_dict())
        except RuntimeError as exc:
            raise MedadvError(f"starting model {init}: its weights do not fit the {base} architecture "
                              f"({str(exc).splitlines()[0]})") from None
    for prm in net.parameters():
        prm.requires_grad_(True)
    return net


def _objective(defense: str, model: nn.Module, data: list, tr: dict, rng: np.random.Generator,
               noise_gen: torch.Generator, *, temperature: float, eps: float, beta: float, radius: float,
               teacher: str, teacher_temperature: float, adv_loss: str = "soft-dice",
               adv_update: str = "joint", distill_background: bool = False) -> tuple[dict, int, Callable, Callable]:
    """What :func:`~.loop.fit` trains ``model`` with under ``defense``: ``(recorded parameters,
    steps per epoch, batches of an epoch, loss of a batch)``."""
    from monai.losses import DiceCELoss  # monai takes seconds to import: only when training

    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    steps = max(1, len(data) // tr["batch"])
    if defense == "distill":
        teacher_model = load_model(teacher, device="cpu", sliding_window=False).module
        teacher_model.eval()
        distill = DistillationDiceLoss(temperature, include_background=distill_background)
        params = {"temperature": temperature, "teacher": teacher, "teacher_temperature": teacher_temperature,
                  "distill_background": distill_background}

        def batches():
            yield from segmentation_batches(data, tr, rng)

        def loss_of(b):
            with torch.no_grad():
                soft = torch.softmax(teacher_model(b[0]) / teacher_temperature, dim=1)
            return distill(model(b[0]), soft).mean()

    elif defense == "adversarial":
        return _adversarial_objective(model, data, tr, rng, steps, eps=eps, beta=beta, adv_loss=adv_loss,
                                      adv_update=adv_update, dicece=loss_fn)

    elif defense == "noise":
        params = {"radius": radius}
        steps *= 2

        def batches():
            for x, y in segmentation_batches(data, tr, rng):
                yield uniform_noise(x, radius, noise_gen), y  # perturbed first ...
                yield x, y  # ... then the same batch clean

        def loss_of(b):
            return loss_fn(model(b[0]), b[1])

    else:
        raise MedadvError(f"unknown defense {defense!r}; choose one of {', '.join(DEFENSES)}")
    return params, steps, batches, loss_of


def _adversarial_objective(model: nn.Module, data: list, tr: dict, rng: np.random.Generator, steps: int, *,
                           eps: float, beta: float, adv_loss: str, adv_update: str, dicece: Callable):
    """Eq. 9 with the soft Dice of eq. 6 (or DiceCE), joint or sequential (see the module doc)."""
    if adv_loss == "soft-dice":
        from ..losses import SoftDiceLoss

        soft_dice = SoftDiceLoss("softmax")

        def loss_fn(out, y):
            return soft_dice(out, y).mean()  # eq. 6 per sample, averaged over the batch
    else:
        loss_fn = dicece
    params = {"eps": eps, "beta": beta, "adv_loss": adv_loss, "adv_update": adv_update}
    if adv_update == "joint":
        def batches():
            yield from segmentation_batches(data, tr, rng)

        def loss_of(b):
            return adversarial_loss(model, loss_fn, b[0], b[1], eps, beta)

        return params, steps, batches, loss_of

    def batches():  # sequential: the FGSM examples of a batch, then the batch clean
        for x, y in segmentation_batches(data, tr, rng):
            yield x, y, True
            yield x, y, False

    def loss_of(b):
        x, y, adversarial = b
        if adversarial:
            x = fgsm_examples(model, loss_fn, x, y, eps)  # of the current model, before this step
        return loss_fn(model(x), y)

    params["beta"] = None  # not used by the sequential update
    return params, 2 * steps, batches, loss_of


def _describe(defense: str, v: dict) -> str:
    if defense == "distill":
        return f"defensive distillation T={v['temperature']:g} (Liu eq. 7)"
    if defense == "adversarial":
        how = (f"beta={v['beta']:g}" if v.get("adv_update", "joint") == "joint"
               else "adversarial then clean step per batch")
        return f"FGSM adversarial training eps={v['eps']:g}, {how}, {v.get('adv_loss', 'soft-dice')} loss (Liu eq. 9)"
    return f"uniform L-inf noise augmentation radius={v['radius']:g}"


def _command(base: str, defense: str, params: dict, seed: int, tr: dict, init: str | None) -> str:
    opts = {"distill": f"--temperature {params.get('temperature', '')} --teacher {params.get('teacher')} "
                       f"--teacher-temperature {params.get('teacher_temperature')}"
                       + (" --distill-background" if params.get("distill_background") else ""),
            "adversarial": f"--eps {params.get('eps', '')} --beta {params.get('beta', '')} "
                           f"--adv-loss {params.get('adv_loss')} --adv-update {params.get('adv_update')}",
            "noise": f"--radius {params.get('radius', '')}"}[defense]
    extra = f" --init {init}" if init else ""
    return (f"medadv train demo-{base} --defense {defense} {opts}{extra} --seed {seed} --cases {tr['n_cases']} "
            f"--epochs {tr['epochs']} --lr {tr['lr']:g}")
