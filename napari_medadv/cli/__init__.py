"""``medadv`` — the command line, a thin layer over :mod:`napari_medadv.core`.

    medadv attack IMAGE --model SPEC --attack NAME --eps E --out DIR   one attack, written to DIR
    medadv demo [--headless] [--out DIR]                               the whole chain on shipped data
    medadv train demo-unet3d|demo-unet2d|demo-cxr [--out DIR]          rebuild a demo model
    medadv reader-report reader_study.csv [--out DIR]                  a reader study's detection report
    medadv attacks                                                     list attacks and their parameters
    medadv models                                                      list model schemes and demo models

Bad input (unreadable file, wrong channels, bad argument) prints one line naming the file and
the problem and exits with code 2; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import sys

from napari_medadv import __version__
from napari_medadv.core.errors import MedadvError, internal_error_line, write_error_log

from . import attack, demo, listing, reader, study, train
from ._common import EXIT_INTERNAL, EXIT_USAGE, CLIError, _hint
from .demo import _no_display_reason  # noqa: F401 (tests and the GUI demo check the display with it)

__all__ = ["CLIError", "EXIT_INTERNAL", "EXIT_USAGE", "build_parser", "entry", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medadv", description="Adversarial robustness of medical imaging models (napari-medadv).")
    parser.add_argument("--version", action="version", version=f"napari-medadv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    attack.add_parser(sub)
    demo.add_parser(sub)
    train.add_parser(sub)
    study.add_parser(sub)
    reader.add_parser(sub)
    listing.add_parsers(sub)
    return parser


def entry() -> int:
    """The ``medadv`` console script: the memory allocator set up to reuse PyTorch's large
    tensors first, while this is the only thread (:mod:`napari_medadv.core.allocator`: a
    BraTS-size attack 1.6× faster on CPU, a dock run in the demo 1.5×; ``MEDADV_ALLOCATOR=system``
    keeps glibc's defaults), then :func:`main`."""
    from napari_medadv.core.allocator import reuse_freed_memory

    reuse_freed_memory()
    return main()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except (CLIError, MedadvError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"medadv: error: {msg}{_hint(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `medadv attacks | head`: the reader went away; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
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
        log = write_error_log(exc, "medadv " + " ".join(map(str, sys.argv[1:] if argv is None else argv)))
        print(f"medadv: {internal_error_line(exc, log)}", file=sys.stderr)
        return EXIT_INTERNAL
