"""``medadv attack IMAGE --model SPEC --attack NAME ... --out DIR``: one attack, written to DIR."""

from __future__ import annotations

import argparse
import json
import sys

from napari_medadv.core.attacks import ATTACKS
from napari_medadv.core.losses import LOSSES
from napari_medadv.core.models import load_model
from napari_medadv.core.vulnerability import TopPercentError, VulnerabilityOptions, check_percent

from ._common import CLIError, ProgressBar, _bool, _channel_list


_HANDLED = {"eps", "steps", "alpha", "restarts", "target_label", "loss"}  # loss: --loss


def _attack_param_options(p: argparse.ArgumentParser) -> list[str]:
    """One option per registry parameter not covered by the fixed options (union over attacks)."""
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


def add_parser(sub) -> argparse.ArgumentParser:
    a = sub.add_parser("attack", help="run one attack on an image and write the results",
                       description="Run one attack on IMAGE with a model and write adversarial image, "
                                   "perturbation, segmentations, metrics.json and record.json into --out.")
    a.add_argument("image", help="NIfTI file, BraTS case folder, DICOM file/series folder, PNG/JPEG/TIFF")
    a.add_argument("--model", required=True, help="model spec: demo:unet3d, torchscript:PATH, bundle:DIR, "
                                                 "factory:pkg.module:function, xrv:WEIGHTS, nnunet:DIR[:FOLDS][:notta]")
    a.add_argument("--weights", help="state dict for factory: models; for nnunet: the checkpoint file name in "
                                      "each fold_N (default checkpoint_final.pth, e.g. checkpoint_best.pth)")
    a.add_argument("--preprocess", choices=["none", "liu"], default="none",
                   help="liu: Liu et al.'s N4 bias-field correction (fitted on the clean image, then held fixed) "
                        "and resize to 128³, inside the wrapped model: the attack still perturbs your image")
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
    a.add_argument("--loss", choices=list(LOSSES), help="attack loss (default: soft Dice for segmentation, "
                                                       "CE/BCE for classifiers; ol: Ghamizi's ordinal loss)")
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
    bg = a.add_argument_group("breaks at ε")
    bg.add_argument("--breaking-eps", action="store_true",
                    help="also find, per label and region (segmentation) or finding (classifier), the smallest ε "
                         "at which the attack breaks it: Dice against the clean prediction below --break-threshold, "
                         "or the probability crossing 0.5; writes breaking_eps and the Dice-vs-ε AUC into "
                         "metrics.json (FGSM: one forward per probe; other attacks: re-run per probe)")
    bg.add_argument("--break-threshold", type=float, default=0.5, metavar="DICE",
                    help="Dice below which a label or region counts as broken (default 0.5)")
    bg.add_argument("--break-max-eps", type=float, default=0.1, metavar="EPS",
                    help="largest ε searched (fraction of the range; default 0.1); labels not broken up to it "
                         "get null")
    sg = a.add_argument_group("evaluation sanity checks")
    sg.add_argument("--sanity", action="store_true",
                    help="also run the gradient-masking sanity checks on this image and model (zero/non-finite "
                         "input gradients, black-box never stronger than white-box, robustness non-increasing in "
                         "ε and steps, stochastic outputs) with small fixed settings (FGSM at 4 ε, PGD at 2 ε and "
                         "1/5/10 steps, uniform noise); writes a sanity block into metrics.json and prints one "
                         "warning line per failed check (the exit code is unchanged)")
    sg.add_argument("--sanity-source", metavar="SPEC",
                    help="a second model to craft a transfer attack on for the black-box check (e.g. demo:unet3d "
                         "when checking a defended model); loaded with the same --trust-model-code and --device")
    vg = a.add_argument_group("vulnerability map")
    vg.add_argument("--vulnerability-map", action="store_true",
                    help="also write vulnerability.nii.gz: per-voxel sum over channels of |d loss / d x| at the clean "
                         "image, in native intensity units, on the input's grid and affine (FGSM and other attacks "
                         "whose first gradient is at the clean image: no extra backward; others: one)")
    vg.add_argument("--vulnerability-sigma", type=float, default=0.0, metavar="MM",
                    help="Gaussian smoothing of the map, sigma in mm (default 0: none)")
    vg.add_argument("--roi-top-percent", type=float, metavar="K",
                    help="perturb only the K %% most vulnerable voxels of the region (--roi, the non-zero voxels, or "
                         "everything with --perturb-background), ranked by the clean-image sensitivity (one backward)")
    _attack_param_options(a)
    a.set_defaults(func=cmd_attack)
    return a


def _load_labels(args, image):
    from napari_medadv.core.io import read_labels  # nibabel/pydicom/imageio: not at `medadv` start-up

    if args.no_labels:
        return None
    if args.labels:
        return read_labels(args.labels, like=image)
    return image.labels


def cmd_attack(args) -> int:
    import numpy as np

    # the readers (nibabel, pydicom, imageio) load only when a command runs, not for `medadv --help`
    from napari_medadv.core.io import read_image, read_labels
    from napari_medadv.core.pipeline import run_attack, write_outcome

    image = read_image(args.image)
    model = load_model(args.model, weights=args.weights, trust_code=args.trust_model_code, device=args.device,
                       preprocess=args.preprocess)
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
    if args.breaking_eps:
        _check_breaking_args(args, spec)
    if args.sanity_source and not args.sanity:
        raise CLIError("--sanity-source needs --sanity")
    vulnerability = _vulnerability_options(args)
    record_extra = None
    seed = args.seed
    if args.match_psnr is not None or args.match_ssim is not None:
        record_extra, seed = _match_quality(args, image, model, spec, params, labels, target, roi)
    bar = None if args.quiet else ProgressBar(spec.label)
    try:
        outcome = run_attack(image, model, args.attack, params=params, labels=labels, target=target,
                             roi=roi, seed=seed, callback=bar, vulnerability=vulnerability)
    except TopPercentError as exc:
        raise CLIError(f"--roi-top-percent: {exc}") from None
    finally:
        if bar is not None:
            bar.close()
    if args.breaking_eps:
        _add_breaking(args, outcome, params, labels, target, roi)
    if args.sanity:
        _add_sanity(args, outcome, labels, roi)
    paths = write_outcome(outcome, args.out, command=["medadv", *sys.argv[1:]], record_extra=record_extra)
    if args.json:
        print(json.dumps(outcome.metrics, indent=1, default=str))
    else:
        print(_summary_line(outcome))
        print(f"wrote {len(paths)} files to {args.out}")
    return 0


def _vulnerability_options(args) -> VulnerabilityOptions:
    """--vulnerability-map / --vulnerability-sigma / --roi-top-percent, each error naming its flag."""
    k = args.roi_top_percent
    if k is not None:
        try:
            check_percent(k)
        except TopPercentError:
            raise CLIError(f"--roi-top-percent must lie in (0, 100], got {k:g}") from None
        for flag, given in (("--match-psnr/--match-ssim", args.match_psnr is not None or args.match_ssim is not None),
                            ("--breaking-eps", args.breaking_eps)):
            if given:
                raise CLIError(f"--roi-top-percent cannot be combined with {flag} (they search on the whole region)")
    if not (args.vulnerability_sigma >= 0 and args.vulnerability_sigma != float("inf")):
        raise CLIError(f"--vulnerability-sigma must be a finite number of mm >= 0, got {args.vulnerability_sigma:g}")
    if args.vulnerability_sigma and not args.vulnerability_map:
        raise CLIError("--vulnerability-sigma needs --vulnerability-map")
    return VulnerabilityOptions(map=args.vulnerability_map, sigma_mm=args.vulnerability_sigma, top_percent=k)


def _check_breaking_args(args, spec) -> None:
    if not spec.takes_eps:
        raise CLIError(f"--breaking-eps needs an attack with an ε budget; {spec.label} has none")
    if not 0 < args.break_threshold < 1:
        raise CLIError(f"--break-threshold must lie between 0 and 1, got {args.break_threshold}")
    if not args.break_max_eps > 0:
        raise CLIError(f"--break-max-eps must be > 0, got {args.break_max_eps}")


def _add_breaking(args, outcome, params: dict, labels, target, roi) -> None:
    """--breaking-eps: the search with the run's parameters, seed, labels and region, into metrics.json."""
    from napari_medadv.core.breaking import breaking_eps

    if not args.quiet:
        print(f"searching the breaking ε up to {args.break_max_eps:g} ...", file=sys.stderr)
    res = breaking_eps(outcome.image, outcome.model, outcome.attack, params=params, labels=labels, target=target,
                       roi=roi, seed=outcome.seed, threshold=args.break_threshold, eps_max=args.break_max_eps)
    outcome.metrics["breaking_eps"] = res.breaking_eps
    outcome.metrics["breaking"] = {k: v for k, v in res.to_dict().items() if k != "breaking_eps"}


def _add_sanity(args, outcome, labels, roi) -> None:
    """--sanity: the checks with the run's seed, labels and region; a sanity block in metrics.json and
    one stderr line per failed check."""
    from napari_medadv.core.sanity import run_sanity_checks

    source = None
    if args.sanity_source:
        source = load_model(args.sanity_source, trust_code=args.trust_model_code, device=args.device)
        source.channel_map = args.channels
    say = None if args.quiet else (lambda text: print(f"sanity checks: {text} ...", file=sys.stderr))
    rep = run_sanity_checks(outcome.image, outcome.model, labels=labels, roi=roi, seed=outcome.seed,
                            source_model=source, progress=say, warn=False)
    outcome.metrics["sanity"] = rep.to_dict()
    for check in rep.failed:
        print(f"medadv: warning: sanity check '{check.name}' failed: {check.message}", file=sys.stderr)


def _match_quality(args, image, model, spec, params: dict, labels, target, roi) -> tuple[dict, int]:
    """--match-psnr/--match-ssim: find the knob value, put it in ``params``; (record extra, seed)."""
    import secrets

    # matching imports the pipeline and with it the readers: not at `medadv` start-up
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
    if "breaking_eps" in m:  # the regions when there are any (BraTS), else the labels by name
        names = m["breaking"].get("label_names") or {}
        shown = {k: v for k, v in m["breaking_eps"].items() if k not in names} or m["breaking_eps"]
        parts.append("breaks at ε " + " ".join(
            f"{names.get(k, k)} {'>' + format(m['breaking']['eps_max'], 'g') if v is None else format(v, '.4g')}"
            for k, v in shown.items()))
    if "sanity" in m:
        failed = m["sanity"]["failed"]
        parts.append(f"sanity: {len(failed)} of {len(m['sanity']['checks'])} checks failed ({', '.join(failed)})"
                     if failed else f"sanity: all {len(m['sanity']['checks'])} checks passed")
    return "  ".join(parts)
