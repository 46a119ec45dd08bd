"""The evaluation sanity checks of a study (grid key ``sanity``): once per model, on the dataset's
first ``cases`` cases, in the study's own process after the cases (a few dozen forward/backward
passes per model: not worth a Dask round trip), stored in ``OUT/sanity/<model>.json`` with a
fingerprint of what they were computed from — a re-run skips every stored model
(:mod:`.robustness` describes the key)."""

from __future__ import annotations

from collections.abc import Callable

from .cases import _case_labels, _read_case, cached_model, case_seed
from .robustness import sanity_fingerprint, stored_sanity, write_sanity


def run_study_sanity(study, cases: list, log: Callable[[str], None] | None = None,
                     should_stop: Callable[[], bool] | None = None) -> dict[str, bool]:
    """Run (or find stored) the sanity checks of every model of ``study`` (a :class:`~.runner.Study`)
    on its first cases. Returns ``{model: computed now}``."""
    from ..sanity import run_sanity_checks  # the pipeline: only when a study asks for the checks

    cfg = study.config
    settings = cfg.sanity_settings()
    chosen = cases[: settings["cases"]]
    source_spec = settings["source_model"]
    checksums = study.model_checksums()
    source = None
    if source_spec:
        source = cached_model(source_spec, cfg.device, cfg.trust_model_code)
    done: dict[str, bool] = {}
    extra = study.extra()
    for spec in cfg.models:
        if should_stop is not None and should_stop():
            break
        src = source if source is not None and source_spec != spec else None  # never its own transfer source
        fp = sanity_fingerprint(checksums[spec], [[c.case_id, c.labels] for c in chosen],
                                settings["settings"], cfg.seed, cfg.roi, None if src is None else src.checksum)
        if stored_sanity(study.out, spec, fp) is not None:
            done[spec] = False
            continue
        model = cached_model(spec, cfg.device, cfg.trust_model_code)
        reports = []
        for case in chosen:
            if log:
                log(f"sanity checks of {spec} on {case.case_id}")
            image = _read_case(case, None)
            # a classifier's checks attack its clean prediction (FGSM's fast ε path takes label maps only)
            labels = _case_labels(case, image, model, extra) if model.info.task == "segmentation" else None
            r = run_sanity_checks(image, model, labels=labels, roi="auto" if cfg.roi == "auto" else None,
                                  seed=case_seed(cfg.seed, case.case_id, spec, "sanity"), source_model=src,
                                  warn=False, **settings["settings"])
            reports.append({"case": case.case_id, **r.to_dict()})
            if log:
                for c in r.failed:
                    log(f"sanity check '{c.name}' failed for {spec} on {case.case_id}: {c.message}")
        write_sanity(study.out, spec, fp, [c.case_id for c in chosen], reports)
        done[spec] = True
    return done
