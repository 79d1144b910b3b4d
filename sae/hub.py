"""Name -> local folder: a Llama Scope SAE from a local folder, the HF hub cache or a download;
a `demo:` SAE from the project's cache (built by `make demo`)."""

from __future__ import annotations

import os
from pathlib import Path

from sae.errors import FetchError, SAEFileError
from sae.formats.names import SAEName
from sae.io import cache_dir

LOCAL_DIR_ENV = "LLAMA_SCOPE_DIR"


def resolve(name: SAEName, *, local_dir: str | Path | None = None) -> Path:
    """The folder holding `name`'s files, fetching a Llama Scope folder from the hub if needed."""
    if name.suite == "demo":
        return _demo_folder(name)
    return _llama_scope_folder(name, local_dir)


def _demo_folder(name: SAEName) -> Path:
    folder = cache_dir("demo") / str(name)
    if not (folder / "cfg.json").is_file():
        raise SAEFileError(
            f"demo:{name} has not been built on this machine (looked in {folder}); "
            "`make demo` trains the demo suite (CPU, offline after the first fetch)"
        )
    return folder


def _llama_scope_folder(name: SAEName, local_dir: str | Path | None) -> Path:
    root = local_dir or os.environ.get(LOCAL_DIR_ENV)
    if root:
        repo_dir = name.hf_repo.split("/")[1]
        for candidate in (Path(root) / name.hf_folder, Path(root) / repo_dir / name.hf_folder):
            if (candidate / "hyperparams.json").is_file():
                return candidate

    from huggingface_hub import snapshot_download

    pattern = [f"{name.hf_folder}/*"]
    # huggingface_hub reads HF_HUB_CACHE once, at import; read it at call time like HF_HUB_OFFLINE below.
    hub_cache = os.environ.get("HF_HUB_CACHE") or None
    try:  # the HF cache first: no network, honours HF_HOME / HF_HUB_CACHE
        return Path(snapshot_download(name.hf_repo, allow_patterns=pattern, local_files_only=True,
                                      cache_dir=hub_cache)) / name.hf_folder
    except Exception:  # not cached (LocalEntryNotFoundError and friends)
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if not offline:
        try:
            return Path(snapshot_download(name.hf_repo, allow_patterns=pattern, cache_dir=hub_cache)) / name.hf_folder
        except Exception as e:  # the hub raises many types for "no network"
            reason = str(e).splitlines()[0][:200]
    else:
        reason = "HF_HUB_OFFLINE is set"
    raise FetchError(
        f"{name} is not on this machine and could not be downloaded ({reason}). On a machine that "
        f"reaches huggingface.co, run\n    hf download {name.hf_repo} --include '{name.hf_folder}/*'\n"
        f"then copy the HF cache (~/.cache/huggingface/hub) here, or put the folder {name.hf_folder}/ "
        f"under ${LOCAL_DIR_ENV}. The embedded demo suite works offline: sae.load('demo:{name}') "
        "after `make demo`."
    )
