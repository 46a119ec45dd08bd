"""``medadv attacks`` and ``medadv models``: what the registries hold."""

from __future__ import annotations

from napari_medadv.core.attacks import ATTACKS
from napari_medadv.core.models import known_schemes
from napari_medadv.core.models.demo import DEMO_MODELS


def add_parsers(sub) -> None:
    ls = sub.add_parser("attacks", help="list the attacks and their parameters")
    ls.set_defaults(func=cmd_attacks)
    ms = sub.add_parser("models", help="list model spec schemes and the demo models")
    ms.set_defaults(func=cmd_models)


def cmd_attacks(args) -> int:
    for spec in ATTACKS.values():
        kind = "black-box" if spec.gradient_free else "white-box"
        tgt = {"no": "", "optional": ", targeted or untargeted", "required": ", targeted"}[spec.targeted]
        print(f"{spec.name:10s} {spec.label} ({kind}{tgt}): {spec.description}")
        for p in spec.params:
            print(f"{'':12s}--{p.name.replace('_', '-'):16s} {p.help} [default {p.default}]")
    return 0


def cmd_models(args) -> int:
    print("schemes: " + ", ".join(f"{s}:" for s in known_schemes()))
    for name, desc in DEMO_MODELS.items():
        print(f"demo:{name:8s} {desc}")
    return 0
