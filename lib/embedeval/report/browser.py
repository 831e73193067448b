"""report.html as a reader's browser shows it: headless Chromium, driven by playwright, opens the file and
reports what went wrong (console errors, uncaught exceptions, failed loads); also a screenshot of the page.

The Chromium is the system's (Debian's ``chromium`` package, which ``scripts/setup.sh test`` installs) or the
one named by ``$EMBEDEVAL_CHROMIUM``; playwright's own browser download is used only where neither exists.
playwright is an optional dependency (the ``[test]`` extra); nothing else in the package imports this module.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from embedeval.errors import EmbedevalError

if TYPE_CHECKING:
    from playwright.sync_api import Page

#: Names a Chromium executable for :func:`find_chromium`, ahead of the PATH search.
CHROMIUM_ENV = "EMBEDEVAL_CHROMIUM"
_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_REMEDY = "run scripts/setup.sh test (it installs playwright and Debian's chromium), or set $" + CHROMIUM_ENV


class BrowserUnavailable(EmbedevalError, RuntimeError):
    """No headless Chromium can be started here (playwright missing, no browser, or it failed to launch)."""


def find_chromium() -> str | None:
    """Path of the Chromium to drive: ``$EMBEDEVAL_CHROMIUM``, else the first of chromium, chromium-browser,
    google-chrome on PATH; None when there is none (then playwright's own download is tried).

    Raises :class:`BrowserUnavailable` when ``$EMBEDEVAL_CHROMIUM`` names no executable file.
    """
    named = os.environ.get(CHROMIUM_ENV)
    if named:
        if not (os.path.isfile(named) and os.access(named, os.X_OK)):
            raise BrowserUnavailable(f"${CHROMIUM_ENV}={named} is not an executable file")
        return named
    for name in _CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class OpenedPage:
    """A report open in headless Chromium, loaded (images included). ``errors`` grows while the page lives:
    console errors (CSP refusals among them), uncaught script exceptions and failed loads, in order."""

    page: Page
    errors: list[str] = field(default_factory=list)


@contextmanager
def open_report(html_path: Path, width: int = 1280, height: int = 900) -> Iterator[OpenedPage]:
    """Open ``html_path`` (a local file, as ``file://``) in a fresh headless Chromium of a ``width`` x
    ``height`` viewport and yield it once its load event has fired; the browser is closed on exit.

    Raises :class:`BrowserUnavailable` when playwright is not installed or no Chromium starts.
    """
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise BrowserUnavailable("playwright is not installed; " + _REMEDY) from None
    executable = find_chromium()
    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=executable, headless=True)
        except PlaywrightError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = executable or "playwright's own Chromium (none on PATH)"
            raise BrowserUnavailable(f"cannot start {where}: {first}; {_REMEDY}") from None
        try:
            page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
            opened = OpenedPage(page)
            page.on("console", lambda m: opened.errors.append(f"console: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: opened.errors.append(f"uncaught: {e}"))
            page.on("requestfailed", lambda r: opened.errors.append(f"failed to load: {r.url[:120]}"))
            page.goto(Path(html_path).resolve().as_uri(), wait_until="load")
            yield opened
        finally:
            browser.close()


def screenshot_report(html_path: Path, png_path: Path, width: int = 1280, height: int = 1400,
                      full_page: bool = False, max_bytes: int | None = 300_000) -> int:
    """Write a PNG screenshot of report ``html_path``: the top ``width`` x ``height`` of the page, or all of
    it with ``full_page``. A PNG over ``max_bytes`` is re-encoded with a 256-colour palette (text stays
    sharp; plots lose a little shading). Returns the bytes written.

    Raises :class:`BrowserUnavailable` as :func:`open_report` does.
    """
    from PIL import Image

    with open_report(html_path, width, height) as opened:
        png = opened.page.screenshot(full_page=full_page, type="png")
    if max_bytes is not None and len(png) > max_bytes:
        with Image.open(io.BytesIO(png)) as im:
            buf = io.BytesIO()
            im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(buf, format="PNG", optimize=True)
            png = buf.getvalue()
    Path(png_path).parent.mkdir(parents=True, exist_ok=True)
    Path(png_path).write_bytes(png)
    return len(png)
