"""Which image channel feeds which model input: matching by name, never silently by position.

A model trained on BraTS may declare its inputs as ``T1c, T1, T2, FLAIR`` (the public MONAI
BraTS bundle) while a BraTS case folder is read as ``t1, t1ce, t2, flair``. Feeding the channels
in file order gives garbage that looks like a weak model. :func:`match_channels` pairs each model
input with one image channel through a table of MR contrast synonyms, case-insensitively, and
the wrapped model reorders (or selects) the channels inside its forward pass
(:meth:`NativeInputModel.set_channel_order`), so the image, its layers, the perturbation and the
readouts all stay in the image's own channel order.

Rules, in order:

1. an explicit mapping (image channel names or indices, one per model input, in the model's
   order) is used as given, after checking every entry exists;
2. a model that declares no channel names gets the image channels in file order (the counts must
   agree), and the record says so;
3. one image channel for a one-input model is used as is, unless both names are known MR
   contrasts and differ (a T1 file given to a FLAIR model is refused);
4. otherwise every declared model input must find exactly one image channel with the same
   canonical contrast (or the same name); the model may read a subset of the image's channels.

Anything else raises :class:`ChannelMismatch` showing both lists; the front ends add how to give
the mapping by hand.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ModelError

#: Canonical MR contrast -> spellings seen in challenge data, bundles, BIDS and scanner exports
#: (compared after lower-casing and dropping spaces, '-', '_', '+' and '.').
CONTRAST_SYNONYMS: dict[str, tuple[str, ...]] = {
    "T1": ("t1", "t1n", "t1w", "t1native", "nativet1", "t1pre", "t1precontrast", "t1weighted"),
    "T1c": ("t1c", "t1ce", "t1gd", "t1contrast", "t1post", "t1postcontrast", "t1wce", "t1cgd",
            "t1wgd", "t1contrastenhanced", "ce", "t1withcontrast"),
    "T2": ("t2", "t2w", "t2weighted"),
    "FLAIR": ("flair", "t2f", "t2flair", "t2wflair", "flairt2"),
}
_LOOKUP = {syn: canon for canon, syns in CONTRAST_SYNONYMS.items() for syn in syns}


def _squash(name: str) -> str:
    return re.sub(r"[\s\-_+.]+", "", str(name).strip().lower())


def canonical_contrast(name: str) -> str | None:
    """``"t1ce"`` / ``"T1Gd"`` / ``"T1-contrast"`` -> ``"T1c"``; None for a name that is no known contrast."""
    return _LOOKUP.get(_squash(name))


class ChannelMismatch(ModelError):
    """Image channels and the model's declared inputs cannot be paired; ``image_names`` and
    ``model_names`` say what was compared."""

    def __init__(self, message: str, image_names: Sequence[str], model_names: Sequence[str] | None):
        super().__init__(message, fix="channels")
        self.image_names = list(image_names)
        self.model_names = None if model_names is None else list(model_names)


@dataclass(frozen=True)
class ChannelMapping:
    """``order[i]`` is the image channel fed to model input ``i``.

    ``how``: ``"by name"``, ``"given"`` (explicit mapping), ``"file order"`` (the model declares
    no names) or ``"single channel"``.
    """

    order: tuple[int, ...]
    image_names: tuple[str, ...]
    model_names: tuple[str, ...] | None
    how: str

    @property
    def identity(self) -> bool:
        return self.order == tuple(range(len(self.image_names)))

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """(model input, image channel) pairs, in the model's order."""
        inputs = self.model_names or tuple(f"input {i}" for i in range(len(self.order)))
        return [(m, self.image_names[c]) for m, c in zip(inputs, self.order)]

    @property
    def unused(self) -> list[str]:
        """Image channels the model does not read (they are never perturbed by gradient attacks)."""
        return [n for i, n in enumerate(self.image_names) if i not in self.order]

    def describe(self) -> str:
        """One line for record.json, the Model dock and logs."""
        pairs = ", ".join(f"{m} <- {c}" for m, c in self.pairs)
        text = {
            "by name": f"matched by name: {pairs}",
            "given": f"as given: {pairs}",
            "file order": f"file order (the model declares no channel names): {pairs}",
            "single channel": f"single channel: {pairs}",
        }[self.how]
        if self.unused:
            text += f"; not read by the model: {', '.join(self.unused)}"
        return text

    def to_dict(self) -> dict:
        return {"how": self.how, "order": list(self.order), "pairs": [list(p) for p in self.pairs],
                "unused": self.unused, "text": self.describe()}


def parse_channel_list(text: str | Sequence[str | int] | None) -> list[str | int] | None:
    """``"t1ce,t1,t2,flair"`` or ``"1,0,2,3"`` -> a list of names or indices (None stays None)."""
    if text is None:
        return None
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    out: list[str | int] = []
    for s in items:
        if isinstance(s, int):
            out.append(s)
        elif isinstance(s, str) and s.strip().isdigit():
            out.append(int(s))
        elif isinstance(s, str) and s.strip():
            out.append(s.strip())
        else:
            raise ModelError(f"channel mapping {text!r}: empty entry")
    return out or None


def _show(names) -> str:
    return "[" + ", ".join(str(n) for n in names) + "]"


def match_channels(
    image_names: Sequence[str],
    model_names: Sequence[str] | None,
    n_inputs: int,
    given: Sequence[str | int] | None = None,
) -> ChannelMapping:
    """Pair the model's ``n_inputs`` inputs with image channels; see the module docstring."""
    image_names = tuple(str(n) for n in image_names)
    model_t = tuple(str(n) for n in model_names) if model_names else None
    n_img = len(image_names)
    if n_img < n_inputs:  # no mapping can help: say what is missing
        raise ModelError(
            f"the model expects {n_inputs} channel(s)"
            f"{' (' + ', '.join(model_t) + ')' if model_t else ''} but the image has {n_img} {_show(image_names)}")
    if given is not None:
        return _given(image_names, model_t, n_inputs, list(given))
    if model_t is None:
        if n_img != n_inputs:
            raise ChannelMismatch(
                f"the model takes {n_inputs} channel(s) and declares no channel names, but the image has "
                f"{n_img} {_show(image_names)}; say which image channel feeds each model input",
                image_names, None)
        return ChannelMapping(tuple(range(n_img)), image_names, None, "file order")
    if n_inputs == 1 and n_img == 1:
        a, b = canonical_contrast(image_names[0]), canonical_contrast(model_t[0])
        if a is not None and b is not None and a != b:
            raise ChannelMismatch(
                f"the model's input is {model_t[0]} but the image's channel is {image_names[0]} ({a}); "
                "give the mapping by hand only if that is really what the model should read",
                image_names, model_t)
        return ChannelMapping((0,), image_names, model_t, "single channel")
    order: list[int] = []
    missing: list[str] = []
    for m in model_t:
        canon = canonical_contrast(m)
        hits = [i for i, n in enumerate(image_names)
                if _squash(n) == _squash(m) or (canon is not None and canonical_contrast(n) == canon)]
        if len(hits) == 1 and hits[0] not in order:
            order.append(hits[0])
        else:
            missing.append(m if not hits else f"{m} (several: {_show(image_names[i] for i in hits)})")
    if missing:
        raise ChannelMismatch(
            f"the model's inputs {_show(model_t)} cannot be matched one-to-one with the image's channels "
            f"{_show(image_names)}: no unique channel for {', '.join(missing)}; say which image channel "
            "feeds each model input",
            image_names, model_t)
    return ChannelMapping(tuple(order), image_names, model_t, "by name")


def _given(image_names, model_t, n_inputs: int, given: list) -> ChannelMapping:
    if len(given) != n_inputs:
        raise ChannelMismatch(
            f"the channel mapping {_show(given)} has {len(given)} entries but the model takes {n_inputs} "
            f"input(s){' ' + _show(model_t) if model_t else ''}; give one image channel per model input",
            image_names, model_t)
    low = [n.lower() for n in image_names]
    order = []
    for g in given:
        if isinstance(g, int):
            if not 0 <= g < len(image_names):
                raise ChannelMismatch(f"channel index {g} is out of range for the image's channels "
                                      f"{_show(image_names)} (0-based)", image_names, model_t)
            order.append(g)
            continue
        hits = [i for i, n in enumerate(low) if n == g.lower()]
        if not hits:
            canon = canonical_contrast(g)
            hits = [i for i, n in enumerate(image_names) if canon is not None and canonical_contrast(n) == canon]
        if len(hits) != 1:
            raise ChannelMismatch(f"channel {g!r} of the mapping is not one of the image's channels "
                                  f"{_show(image_names)}", image_names, model_t)
        order.append(hits[0])
    if len(set(order)) != len(order):
        raise ChannelMismatch(f"the channel mapping {_show(given)} uses an image channel twice", image_names, model_t)
    return ChannelMapping(tuple(order), image_names, model_t, "given")
