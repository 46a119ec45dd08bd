"""Per-iteration tracking at BraTS size: what one tracked step of an attack costs (the Plots dock's
PSNR and foreground Dice, the Attack dock's default) and what a frame's image quality costs, ours ÷
the previous implementation, on a 4×240×240×155 image and a 4-channel output of that size.

- tracking: ``difference_sums`` for the PSNR + ``foreground_overlap`` against the reference's
  foreground counted once per run (``_Context.reference_foreground``), against ``psnr_channels_fast``
  + ``argmax_nonzero`` + ``foreground_dice_fast`` (the reference's foreground and both label maps
  compared with 0 at every step);
- a frame of a tracked step: its PSNR/RMSE/L0/L2/L∞ from the sums the step computed (no pass) against
  ``computed_quality`` (one more pass over both images).

    python benchmarks/bench_tracking.py [--repeats 7]      # about 30 s on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import time


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up (the allocator's first touch of the temporaries)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1000 * statistics.median(ts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from napari_medadv.core import metrics as M
    from napari_medadv.core.readouts import computed_quality, quality_summary

    g = torch.Generator().manual_seed(0)
    shape = (155, 240, 240)
    x = torch.randn((1, 4, *shape), generator=g)
    adv = x + 0.01 * torch.sign(torch.randn((1, 4, *shape), generator=g))
    out = torch.randn((1, 4, *shape), generator=g)
    ref = torch.randint(0, 4, (1, *shape), generator=g)
    ranges = torch.full((1, 4), 6.0, dtype=torch.float64)
    names = ["t1", "t1ce", "t2", "flair"]
    ref_fg = ref != 0
    ref_n = [int(torch.count_nonzero(f)) for f in ref_fg]
    n_vox = int(np.prod(shape))

    def before_step():
        M.psnr_channels_fast(x, adv, ranges)
        M.foreground_dice_fast(M.argmax_nonzero(out), ref)

    def ours_step():
        sums = M.difference_sums(x, adv)
        M.psnr_channels_fast(x, adv, ranges, sums=sums)
        pred_n, inter = M.foreground_overlap(out, ref_fg)
        [M.dice_from_counts(a, b, c) for a, b, c in zip(pred_n, ref_n, inter)]
        return sums

    sums = ours_step()

    def before_frame():
        computed_quality(x[0], adv[0], names, [6.0] * 4)

    def ours_frame():
        sse, linf, l0 = sums
        quality_summary(names, [6.0] * 4, sse[0].tolist(), linf[0].tolist(), n_vox, int(l0[0]))

    r = args.repeats
    rows = []
    for label, ours, ref_fn in (("tracked step (PSNR + foreground Dice)", ours_step, before_step),
                                ("a tracked frame's image quality", ours_frame, before_frame)):
        a, b, a2, b2 = (_median_ms(ref_fn, r), _median_ms(ours, r), _median_ms(ref_fn, r), _median_ms(ours, r))
        before_ms, ours_ms = statistics.median([a, a2]), statistics.median([b, b2])
        rows.append((label, ours_ms, before_ms))
    print(f"per-iteration tracking at 4×240×240×155 ({torch.get_num_threads()} threads, medians of {r}, interleaved):")
    for label, ours_ms, before_ms in rows:
        print(f"  {label}: {ours_ms:.1f} ms vs {before_ms:.1f} ms before -> ratio {ours_ms / before_ms:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
