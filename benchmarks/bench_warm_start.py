"""Live ε for iterative attacks starts warm (issue 18): how close is a warm-started run to a cold
run at the same ε, after N steps? Prints one table, measured in one run.

    python benchmarks/bench_warm_start.py [--attack ifgsm] [--steps 5] [--case glioma_001]

For each ε of a slider path (2 → 3 → 4 → 5 → 3 %), the cold run is the attack from scratch (what
Run gives, same seed); the warm run starts from the previous ε's cold result, its perturbation
scaled to the new ε (``core.anytime.warm_start``), with the same attack parameters; rows after
N = 0 (the warm start projected onto the new ε-ball: the preview live ε shows first), 1, 2 and all
of its steps. Columns: the
attack's strength as Dice(clean prediction, adversarial prediction) over the foreground for the
cold and the warm result (lower = stronger), the Dice between the warm and the cold segmentation,
and the PSNR (dB) of the warm image against the cold one.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--attack", default="ifgsm", choices=["ifgsm", "tifgsm", "pgd"])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--case", default="glioma_001")
    p.add_argument("--model", default="demo:unet3d")
    args = p.parse_args(argv)

    from napari_medadv.core import metrics as M
    from napari_medadv.core.anytime import AnytimeRun, warm_start
    from napari_medadv.core.data.paths import sample_data_dir
    from napari_medadv.core.io import read_image
    from napari_medadv.core.models import load_model
    from napari_medadv.core.pipeline import run_attack

    image = read_image(sample_data_dir() / "glioma" / args.case)
    model = load_model(args.model, device="cpu")
    path = [0.02, 0.03, 0.04, 0.05, 0.03]
    params = {"steps": args.steps}
    cold = {e: run_attack(image, model, args.attack, params={**params, "eps": e}, seed=0) for e in sorted(set(path))}
    rng = np.ptp(image.array.reshape(image.n_channels, -1), axis=1)
    print(f"{args.attack}, {args.steps} steps, {args.case}, {args.model}: warm start from the previous ε's result",
          file=sys.stderr)
    print("ε from → to | N warm steps | Dice(clean, adv) cold | warm | Dice(warm seg, cold seg) | PSNR warm vs cold (dB)")
    for a, b in zip(path, path[1:]):
        init = warm_start(image.array, cold[a].adversarial, a, b)
        run = AnytimeRun(image, model, args.attack, params={**params, "eps": b}, seed=0, init=init)
        c = cold[b]
        d_cold = M.foreground_dice(c.seg_adv, c.seg_clean)
        preview = AnytimeRun(image, model, args.attack, params={**params, "eps": b}, seed=0, init=init).preview()
        rows = [(0, preview.adversarial, preview.seg_adv)]  # N = 0: the preview live ε shows first
        for step in run.steps():
            if step.step in (1, 2, args.steps):  # the iterate after N steps of the live run
                rows.append((step.step, step.adversarial[0].numpy(),
                             model.to_label_map(model.forward(step.adversarial))[0]))
        for n, adv, seg in rows:
            d_warm = M.foreground_dice(seg, c.seg_clean)
            agree = M.foreground_dice(seg, c.seg_adv)
            mse = np.mean(((adv - c.adversarial) / rng[:, None, None, None]) ** 2)
            psnr = float("inf") if mse == 0 else 10 * np.log10(1 / mse)
            print(f"{100 * a:.0f} → {100 * b:.0f} % | {n} | {d_cold:.3f} | {d_warm:.3f} | {agree:.3f} | {psnr:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
