#!/usr/bin/env python3
"""A PNG screenshot of a report.html in headless Chromium (what docs/report.png is made with).

    .venv/bin/python scripts/screenshot_report.py demo-output/runs/demo/report/report.html -o docs/report.png

Needs the test set-up (scripts/setup.sh test: playwright and Debian's chromium). Exits 1 with one line when
the page or the browser is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from embedeval.errors import EmbedevalError, one_line
from embedeval.report.browser import screenshot_report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="a report.html on local disk")
    ap.add_argument("-o", "--output", type=Path, default=Path("report.png"), help="PNG to write")
    ap.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels")
    ap.add_argument("--height", type=int, default=1400, help="viewport height: how much of the page's top is shot")
    ap.add_argument("--full-page", action="store_true", help="the whole page, not just the viewport")
    ap.add_argument("--max-kb", type=int, default=300, help="over this, re-encode with a 256-colour palette")
    args = ap.parse_args(argv)
    if not args.report.is_file():
        print(f"screenshot_report: error: no such file: {args.report}", file=sys.stderr)
        return 1
    try:
        size = screenshot_report(args.report, args.output, args.width, args.height, args.full_page,
                                 args.max_kb * 1000)
    except EmbedevalError as exc:
        print(f"screenshot_report: error: {one_line(exc)}", file=sys.stderr)
        return 1
    print(f"screenshot_report: wrote {args.output} ({size / 1000:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
