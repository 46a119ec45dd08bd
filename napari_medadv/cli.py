"""``medadv`` — the command line, a thin layer over :mod:`napari_medadv.core`.

    medadv attack IMAGE --model SPEC --attack NAME --eps E --out DIR   one attack, written to DIR
    medadv demo [--headless] [--out DIR]                               the whole chain on shipped data
    medadv train demo-unet3d|demo-unet2d|demo-cxr [--out DIR]          rebuild a demo model
    medadv attacks                                                     list attacks and their parameters
    medadv models                                                      list model schemes and demo models

Bad input (unreadable file, wrong channels, bad argument) prints one line naming the file and
the problem and exits with code 2; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from napari_medadv._cli_common import EXIT_INTERNAL, EXIT_USAGE, CLIError  # noqa: F401 (re-exported)


# --------------------------------------------------------------------------- helpers


def _channel_list(text: str):
    from napari_medadv.core.models.channels import parse_channel_list

    try:
        return parse_channel_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: what each core remedy (``MedadvError.fix``) is on the command line
CLI_FIXES = {
    "trust_code": "pass --trust-model-code",
    "device_cpu": "use --device cpu",
    "weights": "give --weights PATH",
    "untargeted": "drop --target/--target-mask",
}


def _hint(exc: BaseException) -> str:
    """What the user can do about a core error, in this front end's terms."""
    from napari_medadv.core.models.channels import ChannelMismatch, canonical_contrast

    fix = getattr(exc, "fix", None)
    if fix in CLI_FIXES:
        return f" ({CLI_FIXES[fix]})"
    if isinstance(exc, ChannelMismatch):
        if not exc.model_names:
            return " (give them with --channels NAME,NAME,... in the model's input order)"
        # an example only where every input has an image channel of the same contrast; never the
        # image's file order, which is the silent mistake this error prevents
        example = []
        for m in exc.model_names:
            hit = [n for n in exc.image_names if canonical_contrast(n) and canonical_contrast(n) == canonical_contrast(m)]
            example.append(hit[0] if len(hit) == 1 else f"<{m}>")
        return f" (with --channels, in the model's input order: --channels {','.join(example)})"
    return ""


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


class ProgressBar:
    """A one-line progress bar on stderr (kept deliberately tiny: tqdm's nested bars and
    notebook detection add nothing here, and the step objects already carry the numbers)."""

    def __init__(self, label: str, stream=None, width: int = 28):
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self._last_pct = -1
        self._t0 = time.perf_counter()

    def __call__(self, step) -> None:
        frac = min(1.0, max(0.0, step.fraction))
        pct = int(frac * 100)
        if not self.tty and pct // 10 == self._last_pct // 10 and pct < 100:
            return
        self._last_pct = pct
        filled = int(frac * self.width)
        info = []
        if step.loss is not None:
            info.append(f"loss {step.loss:.4f}")
        for key in ("l0", "psnr", "dice"):
            if key in step.metrics:
                v = step.metrics[key]
                info.append(f"{key} {v:.3g}" if isinstance(v, float) else f"{key} {v}")
        line = (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {pct:3d}% "
                f"{time.perf_counter() - self._t0:5.1f}s {' '.join(info)}")
        if self.tty:
            self.stream.write("\r" + line[:120])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._last_pct >= 0:
            self.stream.write("\n")
            self.stream.flush()


# --------------------------------------------------------------------------- parser


_HANDLED = {"eps", "steps", "alpha", "restarts", "target_label"}


def _attack_param_options(p: argparse.ArgumentParser) -> list[str]:
    """One option per registry parameter not covered by the fixed options (union over attacks)."""
    from napari_medadv.core.attacks import ATTACKS

    added: dict[str, object] = {}
    g = p.add_argument_group("attack-specific parameters (from the attack registry)")
    for spec in ATTACKS.values():
        for prm in spec.params:
            if prm.name in _HANDLED or prm.name in added:
                continue
            kind = _bool if prm.kind is bool else prm.kind
            flag = "--" + prm.name.replace("_", "-")
            users = [s.name for s in ATTACKS.values() if any(q.name == prm.name for q in s.params)]
            g.add_argument(flag, dest=f"param_{prm.name}", type=kind, default=None,
                           help=f"{prm.help} (default {prm.default}; {', '.join(users)})")
            added[prm.name] = prm
    return list(added)


def build_parser() -> argparse.ArgumentParser:
    from napari_medadv import __version__

    parser = argparse.ArgumentParser(
        prog="medadv", description="Adversarial robustness of medical imaging models (napari-medadv).")
    parser.add_argument("--version", action="version", version=f"napari-medadv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # attack
    from napari_medadv.core.attacks import ATTACKS

    a = sub.add_parser("attack", help="run one attack on an image and write the results",
                       description="Run one attack on IMAGE with a model and write adversarial image, "
                                   "perturbation, segmentations, metrics.json and record.json into --out.")
    a.add_argument("image", help="NIfTI file, BraTS case folder, DICOM file/series folder, PNG/JPEG/TIFF")
    a.add_argument("--model", required=True, help="model spec: demo:unet3d, torchscript:PATH, bundle:DIR, "
                                                 "factory:pkg.module:function, xrv:WEIGHTS")
    a.add_argument("--weights", help="state dict for factory: models")
    a.add_argument("--trust-model-code", action="store_true",
                   help="allow TorchScript/bundle/factory models, which run code from their files")
    a.add_argument("--channels", type=_channel_list, metavar="C1,C2,...",
                   help="image channels (names or 0-based indices) feeding the model's inputs, in the model's "
                        "order, e.g. t1ce,t1,t2,flair (default: matched by the model's declared channel names)")
    a.add_argument("--attack", required=True, choices=list(ATTACKS), help="attack from the registry")
    a.add_argument("--eps", type=float, help="L∞ budget as a fraction of each channel's intensity range "
                                              "(0.05 = 5%%; the attack's default if omitted)")
    a.add_argument("--steps", type=int, help="iterations (ifgsm, tifgsm, pgd)")
    a.add_argument("--alpha", type=float, help="step size, fraction of range (default ε/steps; pgd 2.5·ε/steps)")
    a.add_argument("--restarts", type=int, help="PGD random restarts")
    tg = a.add_mutually_exclusive_group()
    tg.add_argument("--target", help="target label value (segmentation, e.g. 1) or class name/index")
    tg.add_argument("--target-mask", help="label map file (label values) the prediction should become")
    a.add_argument("--labels", help="ground-truth label map (default: the case's _seg for BraTS folders)")
    a.add_argument("--no-labels", action="store_true", help="ignore ground truth; attack the clean prediction")
    rg = a.add_mutually_exclusive_group()
    rg.add_argument("--roi", help="mask file: the perturbation is restricted to its non-zero voxels")
    rg.add_argument("--perturb-background", action="store_true",
                    help="also perturb the exactly-zero background of skull-stripped images "
                         "(by default perturbations stay on the non-zero voxels)")
    a.add_argument("--loss", choices=["dice", "ce", "bce", "mse"], help="attack loss (default: soft Dice for "
                                                                        "segmentation, CE/BCE for classifiers)")
    a.add_argument("--device", default="auto", help="auto (cuda → mps → cpu), cpu, cuda, cuda:N, mps")
    a.add_argument("--seed", type=int, help="random seed (recorded; drawn at random if omitted)")
    a.add_argument("--out", required=True, help="output folder (created; files are replaced atomically)")
    a.add_argument("--json", action="store_true", help="print metrics.json to stdout")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    mg = a.add_mutually_exclusive_group()
    mg.add_argument("--match-psnr", type=float, metavar="DB",
                    help="set the attack's scalar knob (--eps, or --severity for MR artifacts) so the "
                         "perturbed image has this PSNR (dB; same definition as metrics.json), for the "
                         "given --seed; exits 2 if it cannot be reached")
    mg.add_argument("--match-ssim", type=float, metavar="SSIM", help="as --match-psnr, for an SSIM")
    _attack_param_options(a)
    a.set_defaults(func=cmd_attack)

    d = sub.add_parser("demo", help="open napari with the sample case, the demo model and the docks, ready to "
                                    "drag ε (--headless: run every attack and write a report instead)")
    d.add_argument("--headless", action="store_true",
                   help="no GUI: run every attack once and write outputs + a summary figure")
    d.add_argument("--out", default="medadv-demo", help="output folder for --headless (default ./medadv-demo)")
    d.add_argument("--device", default="auto")
    d.add_argument("--quick", action="store_true", help="fewer iterations (smoke test)")
    d.add_argument("--sample", choices=["glioma", "cxr"], default="glioma",
                   help="napari demo: the glioma case with the 3-D UNet (default) or the chest radiograph "
                        "with the classifier")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train (rebuild) a demo model from a seed on the CPU")
    t.add_argument("model", choices=["demo-unet3d", "demo-unet2d", "demo-cxr"])
    t.add_argument("--out", default=".", help="folder for NAME.pt and NAME.json (default: current folder)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--cases", type=int, help="number of training cases (default: the shipped model's)")
    t.add_argument("--epochs", type=int)
    t.set_defaults(func=cmd_train)
    from napari_medadv._cli_study import add_defense_options, add_parser as add_study_parser

    add_defense_options(t)
    add_study_parser(sub)

    ls = sub.add_parser("attacks", help="list the attacks and their parameters")
    ls.set_defaults(func=cmd_attacks)
    ms = sub.add_parser("models", help="list model spec schemes and the demo models")
    ms.set_defaults(func=cmd_models)
    return parser


# --------------------------------------------------------------------------- commands


def _load_labels(args, image):
    from napari_medadv.core.io import read_labels

    if args.no_labels:
        return None
    if args.labels:
        return read_labels(args.labels, like=image)
    return image.labels


def cmd_attack(args) -> int:
    import numpy as np

    from napari_medadv.core.attacks import ATTACKS
    from napari_medadv.core.io import read_image, read_labels
    from napari_medadv.core.models import load_model
    from napari_medadv.core.pipeline import run_attack, write_outcome

    image = read_image(args.image)
    model = load_model(args.model, weights=args.weights, trust_code=args.trust_model_code, device=args.device)
    model.channel_map = args.channels
    model.check_image(image.array, str(image.source), image.channel_names)
    labels = _load_labels(args, image)
    spec = ATTACKS.get_spec(args.attack)
    accepted = {p.name for p in spec.params}
    params = {}
    for name in ("eps", "steps", "alpha", "restarts"):
        v = getattr(args, name)
        if v is not None:
            if name not in accepted:
                raise CLIError(f"--{name} does not apply to {spec.label}")
            params[name] = v
    for key, v in vars(args).items():
        if key.startswith("param_") and v is not None:
            name = key[len("param_"):]
            if name not in accepted:
                raise CLIError(f"--{name.replace('_', '-')} does not apply to {spec.label}")
            params[name] = v
    if args.loss:
        params["loss"] = args.loss
    target = None
    if args.target is not None:
        target = int(args.target) if args.target.lstrip("-").isdigit() else args.target
    elif args.target_mask:
        target = read_labels(args.target_mask, like=image)
    if spec.targeted == "required" and target is None and "target_label" not in params:
        target = None  # ti-FGSM's default target: label index 1 (Liu's "everything = label 1")
    roi = "auto"
    if args.roi:
        roi = read_labels(args.roi, like=image)
        if not np.any(roi):
            raise CLIError(f"{args.roi}: the ROI mask is empty")
    elif args.perturb_background:
        roi = None
    record_extra = None
    seed = args.seed
    if args.match_psnr is not None or args.match_ssim is not None:
        record_extra, seed = _match_quality(args, image, model, spec, params, labels, target, roi)
    bar = None if args.quiet else ProgressBar(spec.label)
    try:
        outcome = run_attack(image, model, args.attack, params=params, labels=labels, target=target,
                             roi=roi, seed=seed, callback=bar)
    finally:
        if bar is not None:
            bar.close()
    paths = write_outcome(outcome, args.out, command=["medadv", *sys.argv[1:]], record_extra=record_extra)
    if args.json:
        print(json.dumps(outcome.metrics, indent=1, default=str))
    else:
        print(_summary_line(outcome))
        print(f"wrote {len(paths)} files to {args.out}")
    return 0


def _match_quality(args, image, model, spec, params: dict, labels, target, roi) -> tuple[dict, int]:
    """--match-psnr/--match-ssim: find the knob value, put it in ``params``; (record extra, seed)."""
    import secrets

    from napari_medadv.core.matching import knob_for, match_for_image

    knob = knob_for(spec.name)
    if knob in params:
        raise CLIError(f"--match-{'psnr' if args.match_psnr is not None else 'ssim'} sets --{knob}; drop one")
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    m = match_for_image(image, model, spec.name, psnr=args.match_psnr, ssim=args.match_ssim, params=params,
                        labels=labels, target=target, roi=roi, seed=seed)
    if not m.reached:
        raise CLIError(m.note)
    params[knob] = m.value
    if not args.quiet:
        print(f"matched {m.metric.upper()} {m.achieved:.4g} (target {m.target:g}) at {knob}={m.value:.6g} "
              f"in {len(m.evaluations)} evaluations", file=sys.stderr)
    return {"matched_quality": m.to_dict()}, seed


def _summary_line(o) -> str:
    from napari_medadv.core.attacks import ATTACKS

    m = o.metrics
    iq = m["image_quality"]
    spec = ATTACKS.get_spec(o.attack)
    names = [p.name for p in spec.params]
    knobs = f"eps={m['eps']:g}" if spec.takes_eps else " ".join(f"{k}={o.params.get(k)}" for k in names)
    parts = [f"{o.attack}: {knobs}", f"PSNR {iq['psnr']:.2f} dB", f"SSIM {iq['ssim']:.3f}",
             f"L0 {iq['l0']}"]
    if "dice" in m:
        block = m["dice"].get("ground_truth_vs_adversarial") or m["dice"]["clean_vs_adversarial"]
        clean = m["dice"].get("ground_truth_vs_clean")
        if "regions" in block:
            adv, ref = block["regions"], (clean or {}).get("regions")
        else:  # per label under the model's label names (a binary model: "brain 0.93->0.41")
            names = block.get("label_names") or {}
            adv = {names.get(k, f"label {k}"): v for k, v in block["per_label"].items()}
            ref = None if clean is None else {names.get(k, f"label {k}"): v for k, v in clean["per_label"].items()}
        parts.append("Dice " + " ".join(
            f"{r} {ref[r]:.3f}->{v:.3f}" if ref else f"{r} {v:.3f}" for r, v in adv.items()))
    if "probabilities" in m:
        parts.append(" ".join(f"{n} {p['clean']:.2f}->{p['adversarial']:.2f}" for n, p in m["probabilities"].items()))
    return "  ".join(parts)


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
                from napari_medadv._qt.demo import launch_demo  # the napari demo (GUI plugin)
            except ImportError as exc:
                print(f"medadv demo: napari/Qt cannot be imported ({exc}); running the headless demo instead",
                      file=sys.stderr)
            else:
                return launch_demo(device=args.device, sample=args.sample)
    from napari_medadv.core.demo_run import run_headless_demo

    summary = run_headless_demo(args.out, device=args.device, quick=args.quick, log=lambda s: print(s, file=sys.stderr))
    print(f"wrote the demo to {summary['out']} (figure: {summary['figure']})")
    return 0


def cmd_train(args) -> int:
    from napari_medadv.core.training import train_demo

    name = args.model.removeprefix("demo-")
    if getattr(args, "defense", None):
        from napari_medadv._cli_study import train_defended_from_args

        print(json.dumps(train_defended_from_args(args), indent=1))
        return 0
    rec = train_demo(name, args.out, seed=args.seed, n_cases=args.cases, epochs=args.epochs,
                     log=lambda s: print(s, file=sys.stderr))
    print(json.dumps(rec, indent=1))
    return 0


def cmd_attacks(args) -> int:
    from napari_medadv.core.attacks import ATTACKS

    for spec in ATTACKS.values():
        kind = "black-box" if spec.gradient_free else "white-box"
        tgt = {"no": "", "optional": ", targeted or untargeted", "required": ", targeted"}[spec.targeted]
        print(f"{spec.name:10s} {spec.label} ({kind}{tgt}): {spec.description}")
        for p in spec.params:
            print(f"{'':12s}--{p.name.replace('_', '-'):16s} {p.help} [default {p.default}]")
    return 0


def cmd_models(args) -> int:
    from napari_medadv.core.models import known_schemes
    from napari_medadv.core.models.demo import DEMO_MODELS

    print("schemes: " + ", ".join(f"{s}:" for s in known_schemes()))
    for name, desc in DEMO_MODELS.items():
        print(f"demo:{name:8s} {desc}")
    return 0


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    from napari_medadv.core.errors import MedadvError

    try:
        return int(args.func(args) or 0)
    except (CLIError, MedadvError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"medadv: error: {msg}{_hint(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("medadv: interrupted; nothing was written", file=sys.stderr)
        return 130
    except MemoryError:
        print("medadv: error: out of memory; retry with a smaller image or on a machine with more memory",
              file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # out of memory is a user-fixable problem, not a bug
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
            print("medadv: error: out of memory on the device; retry with --device cpu or a smaller image",
                  file=sys.stderr)
            return EXIT_USAGE
        # anything else is a bug (ours or the model's): one line, the traceback in a log file;
        # outputs are written all-or-nothing, so nothing partial is left behind
        from napari_medadv.core.paths import internal_error_line, write_error_log

        log = write_error_log(exc, "medadv " + " ".join(map(str, sys.argv[1:] if argv is None else argv)))
        print(f"medadv: {internal_error_line(exc, log)}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
