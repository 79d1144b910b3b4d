"""Suites that are rebuilt without losing the old one: a build with other settings goes into a staging
folder beside the suite and replaces it only when complete.

A suite folder holds SAE folders (each complete once it has cfg.json), the training run's checkpoint
and `build.json`, the settings it was built with. `prepare` decides where the next build goes and
whether it resumes; `commit` moves a finished staging build into place. The move is resumable: it
starts by creating `.old/`, moves the old parts there and the new ones in, build.json last, then
deletes both; a kill in between is finished by the next `prepare`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae.formats.tensors import read_json
from sae.io import write_json
from sae.train import latest_checkpoint

MARKER = "build.json"
STAGING = ".staging"
OLD = ".old"


@dataclass
class Build:
    """Where to build (`folder`: the suite itself or its staging folder) and whether to resume there."""

    root: Path
    folder: Path
    resume: bool
    done: bool  # the suite already holds these settings' SAEs: nothing to build

    @property
    def staged(self) -> bool:
        return self.folder != self.root


def is_complete(folder: Path, wanted: dict[str, Any], names: Sequence[str]) -> bool:
    """`folder` holds every SAE of `names`, built with the settings `wanted`."""
    return _marker(folder) == wanted and all((folder / n / "cfg.json").is_file() for n in names)


def prepare(root: Path, wanted: dict[str, Any], names: Sequence[str], *, rebuild: bool = False) -> Build:
    """Where the build of `names` with settings `wanted` goes. Nothing is deleted here except an earlier
    unfinished build with other settings in the same place; a complete suite is only ever replaced by
    `commit`. Writes the settings into the build folder's build.json."""
    root.mkdir(parents=True, exist_ok=True)
    if (root / OLD).exists():
        commit(Build(root, root / STAGING, False, False), names)  # finish a replacement a kill interrupted
    if not rebuild and is_complete(root, wanted, names):
        return Build(root, root, False, True)
    same_build = _marker(root) == wanted and not rebuild  # an interrupted build of these settings: finish it
    in_place = same_build or not any((root / n / "cfg.json").is_file() for n in names)
    folder = root if in_place else root / STAGING
    resume = _marker(folder) == wanted and not (rebuild and folder == root) and latest_checkpoint(folder) is not None
    if not resume:
        clear(folder, names)
    write_json(folder / MARKER, wanted)
    return Build(root, folder, resume, False)


def commit(build: Build, names: Sequence[str]) -> None:
    """Put a finished staging build in place of the old suite (nothing to do for a build made in place)."""
    if not build.staged:
        return
    root, old = build.root, build.root / OLD
    old.mkdir(exist_ok=True)
    for name in (*names, "checkpoint", MARKER):  # build.json last: the suite is complete only once it moved
        new = build.folder / name
        if not new.exists():
            continue  # moved before a kill
        if (root / name).exists():
            _remove(old / name)
            os.replace(root / name, old / name)
        os.replace(new, root / name)
    shutil.rmtree(old)
    shutil.rmtree(build.folder, ignore_errors=True)


def clear(folder: Path, names: Sequence[str]) -> None:
    """Remove a build's own parts from `folder` (its SAEs, checkpoint and build.json; nothing else)."""
    for name in (*names, "checkpoint", MARKER):
        _remove(folder / name)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _marker(folder: Path) -> Any:
    path = folder / MARKER
    return read_json(path) if path.is_file() else None


__all__ = ["Build", "clear", "commit", "is_complete", "prepare"]
