"""The trial plan of a blinded reader study and the images its trials show.

A *cell* is one case × source × target PSNR. The plan shows every cell the same number of
times (``repeats``), in an order shuffled by a seeded :class:`numpy.random.Generator`:

* ``mode="pair"`` (two-alternative forced choice): the altered image and the original side
  by side; the reader says which one is altered. Within each cell the altered image is on the
  left in half of its trials (one more on one side when ``repeats`` is odd, the odd ones
  alternating over the shuffled cells so the whole plan stays balanced to within one trial).
* ``mode="single"`` (yes/no): one image; the reader says "altered" or "original". Within each
  cell half of the trials show the altered image and half the original (balanced the same way),
  so guessing scores 50 % in both modes.

The altered images (:func:`iter_stimuli`) come from the existing matched-quality search,
:func:`napari_medadv.core.matching.match_for_image`: for each cell, the knob (ε of an attack,
severity of an MR artifact) whose perturbed image has the target PSNR on that case, with the
case's own content region and the study's seed. The search returns the images at the knob it
found, so nothing is run twice; an iterative attack is rerun per search step (that is the
search's cost), FGSM uses its one-gradient fast path. Each cell is produced once and shown
``repeats`` times.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

MODES = ("pair", "single")
ALTERED, ORIGINAL = "altered", "original"
#: the answers each mode accepts
ANSWERS = {"pair": ("left", "right"), "single": (ALTERED, ORIGINAL)}


@dataclass(frozen=True)
class Trial:
    """One trial. ``shown_left``: what the left image is (pair mode) or what the one image is
    (single mode): ``"altered"`` or ``"original"``."""

    trial: int  # 1-based position in the plan
    case: str
    source: str
    target_psnr: float
    mode: str
    shown_left: str

    @property
    def cell(self) -> tuple[str, str, float]:
        return self.case, self.source, self.target_psnr

    @property
    def altered_shown(self) -> bool:
        """Single mode: is the altered image the one shown? (pair mode: always, on one side)."""
        return self.mode == "pair" or self.shown_left == ALTERED

    def is_correct(self, answer: str) -> bool:
        """Pair mode: ``answer`` (``"left"``/``"right"``) names the side of the altered image;
        single mode: ``answer`` (``"altered"``/``"original"``) is what was shown."""
        if answer not in ANSWERS[self.mode]:
            raise ValueError(f"answer must be one of {', '.join(ANSWERS[self.mode])} in {self.mode} mode, "
                             f"got {answer!r}")
        if self.mode == "pair":
            return (answer == "left") == (self.shown_left == ALTERED)
        return answer == self.shown_left


@dataclass
class Stimulus:
    """The altered image of one cell: ``image`` is ``C *spatial`` in the case's native units,
    ``psnr`` the PSNR it reached (as ``metrics.json`` computes it)."""

    case: str
    source: str
    target_psnr: float
    psnr: float
    reached: bool
    knob: str
    value: float
    image: np.ndarray
    note: str = ""


def check_design(cases: Sequence[str], sources: Sequence[str], target_psnrs: Sequence[float], repeats: int,
                 mode: str) -> None:
    """``ValueError`` naming the first problem with a study design."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    for what, items in (("cases", cases), ("sources", sources), ("target PSNRs", target_psnrs)):
        if len(items) == 0:
            raise ValueError(f"a reader study needs at least one of its {what}")
        if len(set(items)) != len(items):
            raise ValueError(f"the {what} repeat a value: {list(items)}")
    for p in target_psnrs:
        try:
            ok = not isinstance(p, (str, bool)) and math.isfinite(float(p)) and float(p) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"target PSNRs must be finite positive numbers (dB), got {p!r}")
    if int(repeats) != repeats or repeats < 1:
        raise ValueError(f"trials per cell must be a whole number >= 1, got {repeats!r}")
    from ..matching import knob_for

    for s in sources:
        knob_for(s)  # unknown source or one without an ε/severity knob: ValueError naming it


def plan_trials(cases: Sequence[str], sources: Sequence[str], target_psnrs: Sequence[float], *,
                repeats: int = 2, mode: str = "pair", seed: int = 0) -> list[Trial]:
    """The balanced, shuffled plan: ``len(cases) * len(sources) * len(target_psnrs) * repeats``
    trials. The same arguments give the same plan; another seed gives another order and sides."""
    check_design(cases, sources, target_psnrs, repeats, mode)
    rng = np.random.default_rng(int(seed))
    cells = [(c, s, float(p)) for c in cases for s in sources for p in target_psnrs]
    first = ALTERED  # in pair mode: altered on the left; in single mode: the altered image shown
    other = ORIGINAL
    # which cells get the odd presentation on which side: alternate over a shuffled cell order
    odd_first = np.zeros(len(cells), dtype=bool)
    odd_first[rng.permutation(len(cells))[::2]] = True
    slots: list[tuple[tuple[str, str, float], str]] = []
    for k, cell in enumerate(cells):
        half = repeats // 2
        sides = [first] * half + [other] * half
        if repeats % 2:
            sides.append(first if odd_first[k] else other)
        slots.extend((cell, side) for side in sides)
    order = rng.permutation(len(slots))
    return [Trial(i + 1, cell[0], cell[1], cell[2], mode, side)
            for i, (cell, side) in enumerate(slots[j] for j in order)]


def iter_stimuli(images: Mapping[str, object], model, sources: Sequence[str], target_psnrs: Sequence[float], *,
                 seed: int = 0, tol: float | None = None, max_evals: int = 40,
                 should_stop: Callable[[], bool] | None = None,
                 report: Callable[[int, int, object], None] | None = None
                 ) -> Iterator[tuple[int, int, Stimulus | None]]:
    """Generator over the cells: ``(done, total, Stimulus)`` after each, ``(0, total, None)``
    first; returns ``{(case, source, target_psnr): Stimulus}`` (``None`` when ``should_stop``
    turned true). ``images``: case name -> :class:`~napari_medadv.core.io.ImageData`;
    ``model``: the :class:`~napari_medadv.core.models.LoadedModel` the attacks target (the MR
    artifacts use it for its input channels only). ``report(done, total, payload)`` is called
    after each search step inside a cell (a GUI worker's progress).

    A cell whose target PSNR the source cannot reach keeps the closest image found, with
    ``reached=False`` and the search's note; the reader CSV records the PSNR reached.
    """
    from ..matching import match_for_image  # torch and the attacks only when images are made

    cells = [(c, s, float(p)) for c in images for s in sources for p in target_psnrs]
    total = len(cells)
    out: dict[tuple[str, str, float], Stimulus] = {}
    yield 0, total, None
    for k, (case, source, target) in enumerate(cells):
        if should_stop is not None and should_stop():
            return None

        def step(n, value, quality, k=k, case=case, source=source):
            if report is not None:
                report(k, total, {"case": case, "source": source, "evaluation": n, "psnr": quality})

        m = match_for_image(images[case], model, source, psnr=target, seed=seed, tol=tol, max_evals=max_evals,
                            callback=step, should_stop=should_stop)
        if m.cancelled:
            return None
        image = m.perturbed.detach().cpu().numpy()[0].astype(np.float32)
        stim = Stimulus(case, source, target, float(m.achieved), bool(m.reached), m.knob, float(m.value), image,
                        m.note)
        out[(case, source, target)] = stim
        yield k + 1, total, stim
    return out
