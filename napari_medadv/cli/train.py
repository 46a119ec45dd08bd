"""``medadv train demo-unet3d|demo-unet2d|demo-cxr [--defense ...]``: rebuild a demo model, or
train a defended one (distillation, FGSM adversarial training, noise augmentation)."""

from __future__ import annotations

import argparse
import json
import sys

from napari_medadv.core.training import DEFAULTS, DEFENSES, train_defended, train_demo


def add_parser(sub) -> argparse.ArgumentParser:
    t = sub.add_parser("train", help="train (rebuild) a demo model from a seed on the CPU")
    t.add_argument("model", choices=["demo-unet3d", "demo-unet2d", "demo-cxr"])
    t.add_argument("--out", default=".", help="folder for NAME.pt and NAME.json (default: current folder)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--cases", type=int, help="number of training cases (default: the shipped model's)")
    t.add_argument("--epochs", type=int)
    t.set_defaults(func=cmd_train)
    add_defense_options(t)
    return t


def add_defense_options(t: argparse.ArgumentParser) -> None:
    """``medadv train demo-unet3d --defense distill|adversarial|noise`` options."""
    g = t.add_argument_group("defenses (Liu et al. 2021; demo-unet3d)")
    g.add_argument("--defense", choices=DEFENSES, help="train a defended variant: NAME-distill / -adv / -noise")
    g.add_argument("--temperature", type=_temperatures, default=[DEFAULTS["temperature"]], metavar="T[,T...]",
                   help="distill: temperature T; several (e.g. 1,2,5,20,100) train one model each, "
                        "NAME-distill-T<T> (a temperature sweep)")
    g.add_argument("--teacher", default=DEFAULTS["teacher"], help="distill: teacher model spec")
    g.add_argument("--teacher-temperature", type=float, default=DEFAULTS["teacher_temperature"],
                   help="distill: temperature of the teacher's soft labels (default: --temperature, eq. 4)")
    g.add_argument("--distill-background", action="store_true",
                   help="distill: count the background class in the soft Dice of eq. 7 (not in the paper; keeps "
                        "high temperatures from spreading the tumour classes everywhere)")
    g.add_argument("--eps", type=float, default=DEFAULTS["eps"], help="adversarial: FGSM ε (fraction of range)")
    g.add_argument("--beta", type=float, default=DEFAULTS["beta"], help="adversarial: weight of the clean loss (eq. 9)")
    g.add_argument("--adv-loss", choices=["soft-dice", "dicece"], default=DEFAULTS["adv_loss"],
                   help="adversarial: L of eq. 9 — the paper's soft Dice (eq. 6) or MONAI DiceCE")
    g.add_argument("--adv-update", choices=["joint", "sequential"], default=DEFAULTS["adv_update"],
                   help="adversarial: one step on eq. 9 per batch (joint) or a step on the FGSM examples, "
                        "then one on the clean batch (sequential, the paper's alternative)")
    g.add_argument("--radius", type=float, default=DEFAULTS["radius"], help="noise: L∞ radius (fraction of range)")
    g.add_argument("--init", help="start from this model's weights (fine-tune) instead of a fresh network")
    g.add_argument("--lr", type=float, help="learning rate (default: the demo model's)")


def _temperatures(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"temperatures must be numbers separated by commas, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one temperature")
    return values


def train_defended_from_args(args) -> dict | list[dict]:
    temps = args.temperature if args.defense == "distill" else args.temperature[:1]
    if len(temps) > 1:
        base = args.model.removeprefix("demo-")
        records = [_train_one(args, t, name=f"{base}-distill-T{t:g}") for t in temps]
        print("load them as " + ", ".join(f"trained:{r['metadata']}" for r in records), file=sys.stderr)
        return records
    return _train_one(args, temps[0])


def _train_one(args, temperature: float, name: str | None = None) -> dict:
    base = args.model.removeprefix("demo-")
    return train_defended(args.defense, args.out, base=base, seed=args.seed, n_cases=args.cases, name=name,
                          epochs=args.epochs, temperature=temperature, eps=args.eps, beta=args.beta,
                          radius=args.radius, teacher=args.teacher, teacher_temperature=args.teacher_temperature,
                          adv_loss=args.adv_loss, adv_update=args.adv_update,
                          distill_background=args.distill_background,
                          init=args.init, lr=args.lr,
                          log=lambda s: print(s, file=sys.stderr))


def cmd_train(args) -> int:
    name = args.model.removeprefix("demo-")
    if getattr(args, "defense", None):
        print(json.dumps(train_defended_from_args(args), indent=1))
        return 0
    rec = train_demo(name, args.out, seed=args.seed, n_cases=args.cases, epochs=args.epochs,
                     log=lambda s: print(s, file=sys.stderr))
    print(json.dumps(rec, indent=1))
    return 0
