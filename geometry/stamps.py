"""Build stamps: a command whose output folder already holds what the same inputs, settings and code
make skips its work (the atlas, the neighbourhood: a second `make demo` then takes seconds).

A stamp is a JSON-able dict: the settings, a digest of every SAE's weights, of the files of the
folders it reads (names, sizes, mtimes) and of this project's source code. `current(path, stamp)` says
whether `path` holds it; the command writes it there once its outputs are complete."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import geometry
import sae
from sae.formats.tensors import read_json
from sae.io import write_json

STAMP = "stamp.json"


def weights_digest(spec: Any) -> str:
    """sha256 of an SAE's parameters (a spec for `sae.load`, or a SparseAutoencoder)."""
    model = spec if isinstance(spec, sae.SparseAutoencoder) else sae.load(str(spec))
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def files_digest(folders: Iterable[str | Path | None]) -> str:
    """sha256 of the names, sizes and mtimes of every file under `folders` (missing ones count as empty)."""
    h = hashlib.sha256()
    for folder in folders:
        if folder is None or not Path(folder).is_dir():
            h.update(f"{folder}: none\n".encode())
            continue
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            st = path.stat()
            h.update(f"{path.relative_to(folder)} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def contents_digest(paths: Iterable[str | Path]) -> str:
    """sha256 of the contents of `paths` (missing ones count as empty): for files a command rewrites alike."""
    h = hashlib.sha256()
    for path in paths:
        h.update(f"{path}\n".encode())
        if Path(path).is_file():
            h.update(Path(path).read_bytes())
    return h.hexdigest()


def code_digest() -> str:
    """sha256 of this project's sources (sae and geometry, with the atlas's assets)."""
    h = hashlib.sha256()
    for package in (sae, geometry):
        root = Path(package.__file__).parent
        for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".js", ".css") and p.is_file()):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def make_stamp(settings: Any, saes: Iterable[Any], folders: Iterable[str | Path | None] = (),
               **more: Any) -> dict[str, Any]:
    """The stamp of a build from `settings` (a dataclass, its flags), the SAEs `saes`, the files of `folders`
    and any `more` of its inputs (JSON-able)."""
    fields = {k: v for k, v in asdict(settings).items() if k not in ("quiet", "rebuild")} | more
    stamp = {"settings": fields, "saes": {str(s): weights_digest(s) for s in saes}, "files": files_digest(folders),
             "code": code_digest()}
    return json.loads(json.dumps(stamp, default=str))  # as it reads back: tuples as lists, paths as text


def current(folder: Path, stamp: dict[str, Any]) -> bool:
    """`folder` holds the outputs of the build `stamp` describes."""
    path = Path(folder) / STAMP
    try:
        return path.is_file() and read_json(path) == stamp
    except sae.SAEError:
        return False


def write_stamp(folder: Path, stamp: dict[str, Any]) -> Path:
    return write_json(Path(folder) / STAMP, stamp)
