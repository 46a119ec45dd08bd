"""``medadv demo [--headless]``: the napari demo on the shipped data (headless without a display)."""

from __future__ import annotations

import argparse
import os
import sys


def add_parser(sub) -> argparse.ArgumentParser:
    d = sub.add_parser("demo", help="open napari with the sample case, the demo model and the docks, ready to "
                                    "drag ε (--headless: run every attack and write a report instead)")
    d.add_argument("--headless", action="store_true",
                   help="no GUI: run every attack once and write outputs + a summary figure")
    d.add_argument("--out", default="medadv-demo", help="output folder for --headless (default ./medadv-demo)")
    d.add_argument("--device", default="auto")
    d.add_argument("--quick", action="store_true", help="fewer iterations (smoke test)")
    d.add_argument("--sample", choices=["glioma", "glioma-1mm", "cxr"], default="glioma",
                   help="napari demo: the glioma case with the 3-D UNet (default), the same case at 1 mm "
                        "(glioma-1mm: 197x233x189, looks real on a projector) or the chest radiograph with "
                        "the classifier")
    d.add_argument("--warm", action="store_true",
                   help="napari demo: live ε with i-FGSM (5 steps), its ε cache filled in the background so "
                        "scrubbing over 0.5-10 %% later needs no model call")
    d.set_defaults(func=cmd_demo)
    return d


def _no_display_reason() -> str | None:
    """Why a Qt window cannot open here (Linux without X/Wayland), or None."""
    if not sys.platform.startswith("linux"):
        return None
    if os.environ.get("QT_QPA_PLATFORM", "").split(":")[0] in ("offscreen", "minimal", "vnc", "eglfs", "linuxfb"):
        return None
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    return "no display (DISPLAY and WAYLAND_DISPLAY are not set)"


def cmd_demo(args) -> int:
    if not args.headless:
        # Qt aborts the whole process when it finds no display: check first, and run the
        # headless demo (same data, models and attacks) rather than crash on a server.
        reason = _no_display_reason()
        if reason is not None:
            print(f"medadv demo: {reason}; running the headless demo instead "
                  "(for the napari window use a desktop session or `xvfb-run -a medadv demo`)", file=sys.stderr)
        else:
            try:
                from napari_medadv._qt.demo import launch_demo  # napari and Qt: only for the GUI demo
            except ImportError as exc:
                print(f"medadv demo: napari/Qt cannot be imported ({exc}); running the headless demo instead",
                      file=sys.stderr)
            else:
                return launch_demo(device=args.device, sample=args.sample, warm=args.warm)
    from napari_medadv.core.demo_run import run_headless_demo  # the readers, the pipeline: not at start-up

    summary = run_headless_demo(args.out, device=args.device, quick=args.quick, log=lambda s: print(s, file=sys.stderr))
    print(f"wrote the demo to {summary['out']} (figure: {summary['figure']})")
    return 0
