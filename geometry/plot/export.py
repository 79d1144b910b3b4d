"""Writing figures: HTML pages (with one shared plotly.min.js, or self-contained) and PNG/SVG through
kaleido, which needs a Chrome/Chromium."""

from __future__ import annotations

import importlib.util
from contextlib import ExitStack
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from sae.io import atomic_path, write_text

try:  # kaleido's browser finder, installed with kaleido (optional, like kaleido)
    from choreographer.browsers.chromium import Chromium
except ImportError:
    Chromium = None

STATIC_FORMATS = ("png", "svg")
FORMATS = ("html", *STATIC_FORMATS)
STATIC_WIDTH = 1100  # layout pixels of PNG/SVG (PNG at scale 2); the HTML pages fill the window


def find_browser() -> str | None:
    """The Chrome/Chromium kaleido would use (BROWSER_PATH, else PATH and the usual places), or None."""
    return Chromium.find_browser(skip_local=False) if Chromium is not None else None


def static_export(jobs: list[tuple[go.Figure, Path, str]]) -> str:
    """Write PNG/SVG files through kaleido in one browser session; '' on success, else why not."""
    if not jobs:
        return ""
    if importlib.util.find_spec("kaleido") is None:
        return "static export skipped: kaleido is not installed (pip install -e '.[geometry]'); HTML written"
    if not find_browser():
        return ("static export skipped: no Chrome/Chromium found (Debian: apt-get install chromium; or set "
                "BROWSER_PATH); HTML written")
    try:
        with ExitStack() as stack:
            tmps = [stack.enter_context(atomic_path(path)) for _, path, _ in jobs]
            pio.write_images([f for f, _, _ in jobs], tmps, format=[fmt for _, _, fmt in jobs], width=STATIC_WIDTH,
                             height=[f.layout.height or 500 for f, _, _ in jobs], scale=2)
    except Exception as e:  # kaleido and the browser fail in many ways; the HTML is what matters
        return f"static export failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); HTML written"
    return ""


def write_html(fig: go.Figure, path: Path, plotlyjs: str) -> Path:
    """A full HTML page; with plotlyjs "directory" it loads the plotly.min.js beside it, written here
    unless the one there is already this plotly's."""
    if plotlyjs == "directory":
        js, text = path.parent / "plotly.min.js", get_plotlyjs()
        if not js.is_file() or js.stat().st_size != len(text.encode()) or js.read_text() != text:
            write_text(js, text)
    write_text(path, fig.to_html(include_plotlyjs="directory" if plotlyjs == "directory" else True, full_html=True))
    return path
