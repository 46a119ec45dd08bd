"""What the ``medadv`` command modules share: the user-error exception, exit codes, small
argument types, the progress bar and the hints that turn a core error's remedy into a flag."""

from __future__ import annotations

import argparse
import sys
import time

from napari_medadv.core.models.channels import ChannelMismatch, canonical_contrast, parse_channel_list

EXIT_USAGE = 2
EXIT_INTERNAL = 1


class CLIError(Exception):
    """Raised for problems the user must fix; printed as one line, exit code 2."""


def _channel_list(text: str):
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
