"""Turn a `medadv train demo-cxr` output (NAME.pt state dict + NAME.json) into the TorchScript model
`reports/parity/models/cxr-b.pt` (+ `cxr-b.json` sidecar) that the transfer grid loads as
`torchscript:reports/parity/models/cxr-b.pt`.

The demo: scheme only reads the shipped `sample_data/models/` folder; a second classifier for
Ghamizi's transfer matrix must not replace the shipped `demo:cxr`, so it travels as TorchScript.

Usage (from the repository root):
    medadv train demo-cxr --seed 1 --cases 192 --epochs 4 --out /tmp/cxr-b
    python reports/parity/export_cxr_b.py /tmp/cxr-b
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from napari_medadv.core.models.demo import build_architecture


def main(src: str, out: str = "reports/parity/models") -> None:
    meta = json.loads((Path(src) / "cxr.json").read_text())
    net = build_architecture(meta["arch"], meta["arch_kwargs"])
    net.load_state_dict(torch.load(Path(src) / "cxr.pt", map_location="cpu", weights_only=True))
    net.eval()
    h, w = meta["info"].get("roi_size") or (256, 256)
    scripted = torch.jit.trace(net, torch.zeros(1, 1, h, w))  # a plain feed-forward DenseNet: tracing is exact
    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    scripted.save(str(dest / "cxr-b.pt"))
    t = meta.get("training", {})
    command = f"medadv train demo-cxr --seed {t.get('seed')} --cases {t.get('n_cases')} --epochs {t.get('epochs')}"
    info = {**meta["info"], "name": "cxr-b",
            "description": f"second demo chest X-ray classifier for the transfer matrix: {command} "
                           f"(held-out AUC {t.get('heldout', {})})"}
    (dest / "cxr-b.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {dest / 'cxr-b.pt'} and {dest / 'cxr-b.json'}")


if __name__ == "__main__":
    main(*sys.argv[1:])
