"""Small file helpers shared by every writer: the cache root, atomic writes (temp file + rename) and the
check that an output folder can be written before any work starts. A failed write is an SAEFileError
naming the path and the system's reason; the file it would have replaced is untouched."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from sae.errors import SAEError, SAEFileError

PROBE_BYTES = 1 << 16  # what check_writable writes and needs free: room for the first small file


def cache_dir(*parts: str) -> Path:
    """The project's cache folder (env `SAE_CACHE`, default ~/.cache/llama-sae-geometry), created."""
    root = os.environ.get("SAE_CACHE") or Path.home() / ".cache" / "llama-sae-geometry"
    path = Path(root, *parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SAEFileError(f"the cache folder {path} (env SAE_CACHE) cannot be made: {_reason(e)}") from None
    return path


def check_writable(folder: str | Path, what: str = "--out") -> Path:
    """Fail now rather than after the work: `folder` is (or can be made) a folder that accepts a file of
    PROBE_BYTES, with at least that much room left. Returns it as a Path."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SAEFileError(f"{what} {folder} is a file, not a folder; name a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".probe.") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
        free = shutil.disk_usage(folder).free
    except OSError as e:
        raise SAEFileError(f"{what} {folder} cannot be written: {_reason(e)}") from None
    if free < PROBE_BYTES:
        raise SAEFileError(f"{what} {folder} cannot be written: its disk is full ({free} bytes free)")
    return folder


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename.

    A crash or an exception leaves any old file at `path` untouched and removes the temporary one; a
    failed write (no room, no permission, a file where a folder should be) is an SAEFileError naming `path`.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; the result should read like any other file
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # again: writers that recreate the file (safetensors) make it 0600
        os.replace(tmp, path)
    except SAEError:
        raise
    except (OSError, SafetensorError) as e:
        raise SAEFileError(f"cannot write {path}: {_reason(e)}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def _reason(e: Exception) -> str:
    """The system's words for a failed write ("No space left on device"), from an OSError or safetensors."""
    if isinstance(e, FileExistsError):
        return f"a file stands where a folder is needed ({e.filename})"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    found = re.search(r'message: "([^"]+)"|I/O error: (.+?) \(os error', str(e))
    return next(g for g in found.groups() if g) if found else str(e)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot write {type(x).__name__} as JSON")
