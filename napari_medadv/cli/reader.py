"""``medadv reader-report reader_study.csv [--out DIR]``: the report of a blinded reader study
(the "Reader study" dock writes the CSV): the table on stdout, ``reader_summary.csv`` and
``reader_report.png`` in DIR (default: the CSV's folder)."""

from __future__ import annotations

from napari_medadv.core.reader.report import report


def add_parser(sub) -> None:
    p = sub.add_parser("reader-report", help="detection accuracy per source and PSNR from a reader study CSV",
                       description="Detection accuracy per source x target PSNR with Wilson 95 %% intervals, "
                                   "and the PSNR at which readers detect each source 75 %% of the time, from "
                                   "the reader_study.csv the 'Reader study' dock writes.")
    p.add_argument("csv", help="reader_study.csv")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where reader_summary.csv and reader_report.png go (default: the CSV's folder)")
    p.set_defaults(func=cmd_reader_report)


def cmd_reader_report(args) -> int:
    text, paths = report(args.csv, args.out)
    print(text)
    print(f"\nwrote {paths['summary']} and {paths['figure']}")
    return 0
