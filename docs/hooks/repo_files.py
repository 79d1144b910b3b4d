"""MkDocs hook: repository files that the pages link to outside docs/ (benchmark results, figures) join the
site under repo/, so a link such as `../benchmarks/results/bench_train.md` works on GitHub and in the site,
and `mkdocs build --strict` checks that its target exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files, InclusionLevel

LINKED = ("benchmarks/results/*", "figures/*.png")


def on_files(files: Files, config: Any) -> Files:
    root = Path(config.config_file_path).parent
    for pattern in LINKED:
        for path in sorted(root.glob(pattern)):
            rel = path.relative_to(root).as_posix()
            dest = f"repo/{rel}"
            if path.suffix == ".md":  # rendered as a page of its own, outside the nav
                dest = dest[: -len(".md")] + ("/index.html" if config.use_directory_urls else ".html")
            files.append(File(f"../{rel}", config.docs_dir, config.site_dir, config.use_directory_urls,
                              dest_uri=dest, inclusion=InclusionLevel.NOT_IN_NAV))
    return files
