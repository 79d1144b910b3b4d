"""Where activations come from, as the commands say it (`DataOptions`: the "activations" flags of
`python -m sae.train` and `python -m sae.postprocess`), and `open_source`, which opens what they describe."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sae.cli import check_options, option, parse_count
from sae.data.massive import MASSIVE_FACTOR
from sae.data.stream import ActivationStream
from sae.data.synthetic import SyntheticConfig, SyntheticData
from sae.data.text import check_text_source
from sae.devices import check_device
from sae.errors import SAEError
from sae.formats.tensors import read_tensors
from sae.precision import DTYPE_CHOICES

DEFAULT_BUFFER_TOKENS = 65_536  # Llama Scope's shuffle buffer


@dataclass
class DataOptions:
    """A language model on a text source, synthetic activations, or a file of activations."""

    model: str = option("embedded", "language model: 'embedded' (SmolLM2-135M, offline) or an HF folder/name")
    dataset: str = option("embedded-train", "text source for the model (embedded-train, a .txt/.jsonl/.parquet file "
                          "or folder, hf:NAME), or 'synthetic' for ground-truth activations from sae.data.synthetic "
                          "(hook 'x')")
    synthetic: str = option("", "SyntheticConfig fields for --dataset synthetic, e.g. d=64,n_parents=64",
                            metavar="KEY=VAL,...")
    activations: Path | None = option(None, "a safetensors file of activations keyed by hook name (or 'x'); "
                                      "overrides --model/--dataset", parse=Path)
    context: int = option(1024, "tokens per row (packed rows, or per document with --no-pack)", min=1)
    pack: bool = option(True, "one document per row, right-padded (default: documents packed into full rows)",
                        switch=True)
    model_dtype: str = option("auto", "dtype of the language model: auto = bfloat16 where the hardware has fast bf16 "
                              "(AVX512-BF16/AMX CPUs, CUDA), float32 elsewhere", choices=DTYPE_CHOICES)
    massive_factor: float = option(MASSIVE_FACTOR, "leave out positions whose norm exceeds this many times the "
                                   "site's median (sae.data.massive); 0 = keep all", min=0)
    cache: bool = option(False, "cache activations on disk (later runs and resumes skip the model)", switch=True)
    buffer_tokens: int = option(DEFAULT_BUFFER_TOKENS, "shuffle buffer of the activation stream, per process "
                                "(Llama Scope's)", parse=parse_count, min=1)
    device: str = option("cpu", "cpu, cuda, cuda:1 ...")
    seed: int = option(0, "seed of the data order and the synthetic dictionary (sae.train: also of the initialisation)")

    def __post_init__(self) -> None:
        check_options(self)
        check_device(self.device)
        if self.activations is None and self.dataset != "synthetic":
            check_text_source(self.dataset)
        if self.dataset == "synthetic":
            synthetic_config(self.synthetic, self.seed)


def open_source(data: DataOptions, hooks: list[str], *, batch_size: int, max_tokens: int | None, seed: int,
                reuse: Any = None, shard: tuple[int, int] = (0, 1), progress: bool = True) -> Any:
    """What `data` describes: a dict of tensors, SyntheticData or an ActivationStream (`reuse`: an
    earlier stream whose loaded model is used again; `shard`: this process's part of the corpus, for a
    stream only, and then only rank 0 shows progress)."""
    if data.activations is not None:
        t = read_tensors(data.activations)
        missing = [h for h in hooks if h not in t]
        if missing:
            raise SAEError(f"{data.activations} has no site {missing[0]!r}; it has {', '.join(sorted(t))}")
        return {h: t[h] for h in hooks}
    if data.dataset == "synthetic":
        bad = [h for h in hooks if h != "x"]
        if bad:
            raise SAEError(f"unknown site {bad[0]!r}: synthetic activations have one site, 'x'")
        return SyntheticData(synthetic_config(data.synthetic, data.seed))  # one dictionary per --seed
    model, tokenizer = data.model, None
    if isinstance(reuse, ActivationStream):
        model, tokenizer = reuse.runner.model, reuse.tokenizer
    buffer = max_tokens if max_tokens else data.buffer_tokens  # a sample of N tokens: one buffer, not 65,536
    return ActivationStream(model, tokenizer, source=data.dataset, hooks=hooks, batch_size=batch_size,
                            max_tokens=max_tokens, context=data.context, pack=data.pack, seed=seed,
                            buffer_tokens=buffer, model_dtype=data.model_dtype, massive_factor=data.massive_factor,
                            cache=True if data.cache else None, device=data.device, shard=shard,
                            progress=progress and shard[0] == 0)


def synthetic_config(text: str, seed: int) -> SyntheticConfig:
    """The SyntheticConfig of `--synthetic d=64,n_parents=64` (seed: --seed unless the text sets it)."""
    values = _parse_kv(text)
    defaults = asdict(SyntheticConfig())
    for key, value in values.items():
        if key not in defaults:
            raise SAEError(f"--synthetic {key}=...: unknown field; fields: {', '.join(defaults)}")
        whole = isinstance(defaults[key], int)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and value != int(value)):
            raise SAEError(f"--synthetic {key}={value!r}: expected {'a whole number' if whole else 'a number'}")
    return SyntheticConfig(**{"seed": seed, **values})


def _parse_kv(text: str) -> dict[str, Any]:
    """'d=64,n_parents=64,name=x' -> {"d": 64, "n_parents": 64, "name": "x"} (JSON where it parses as a value)."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise SAEError(f"expected key=value in {text!r}")
        out[key.strip()] = json.loads(value) if value.strip()[:1] in "-0123456789.[{tf" else value
    return out
