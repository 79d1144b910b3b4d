"""The documentation: the MkDocs site (docs/, mkdocs.yml) builds with --strict, so no internal link or
anchor is broken and every page is in the nav; every relative link of README.md (not part of the site)
points at a file of the repository; the modules and names the pages import and run exist."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
COMMAND = re.compile(r"(?:python3?|torchrun)\b[^`\n]*?\s-m\s+([\w.]+)")


def relative_links(text: str) -> list[str]:
    """Link and image targets of a markdown text that point into the repository (no URL, no bare anchor)."""
    text = FENCE.sub("", text)
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", t)]


def test_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install -e '.[docs]' (make setup does)")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                          "--site-dir", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    assert (tmp_path / "site" / "index.html").is_file()


def test_readme_links_resolve():
    links = relative_links((ROOT / "README.md").read_text())
    assert links, "README.md links to no file"
    missing = [t for t in links if not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_readme_test_command_is_make_test():
    # .ci/run runs the README's test command verbatim
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


def documented_python() -> list[tuple[str, str]]:
    """(file, code) of every python block of the README and the pages."""
    return [(p.name, code) for p in [ROOT / "README.md", *PAGES]
            for lang, code in FENCE.findall(p.read_text()) if lang == "python"]


def is_submodule(package, name: str) -> bool:
    return hasattr(package, "__path__") and importlib.util.find_spec(f"{package.__name__}.{name}") is not None


def test_documented_imports_exist():
    bad = []
    for name, code in documented_python():
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("sae", "geometry"):
                module = importlib.import_module(node.module)
                bad += [f"{name}: from {node.module} import {a.name}" for a in node.names
                        if not hasattr(module, a.name) and not is_submodule(module, a.name)]
            elif isinstance(node, ast.Import):
                bad += [f"{name}: import {a.name}" for a in node.names
                        if a.name.split(".")[0] in ("sae", "geometry") and importlib.util.find_spec(a.name) is None]
    assert not bad, bad


def test_documented_commands_exist():
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", ROOT / "Makefile", *PAGES])
    modules = set(COMMAND.findall(text))
    assert {"sae.train", "sae.evaluate", "geometry.compare"} <= modules
    missing = sorted(m for m in modules if importlib.util.find_spec(m) is None)
    assert not missing, f"documented `python -m` modules that do not exist: {missing}"
