"""ActivationStream: batches of model activations at several sites, shuffled, with norm statistics.

    stream = ActivationStream("embedded", source="embedded-train",
                              hooks=["blocks.15.hook_resid_post", "blocks.15.ln2.hook_normalized"],
                              batch_size=4096, max_tokens=1_000_000, cache=True)
    stream.dims()        # {hook: width}, without running the model
    stream.mean_norms()  # {hook: mean ||x|| over the first `norm_tokens` ordinary tokens}
    for batch in stream: # {hook: float32 [batch_size, d]}; row i of every hook is the same token
        ...

- One forward per token batch captures every hook, and stops after the last block needed.
- BOS/EOS/pad (and any other special token) positions are dropped before anything else, and so are
  massive-activation positions (`sae.data.massive`: norm > 10x the site's median in the token batch, at any
  hook of the stream); `massive_tokens` counts them.
- A model given by name loads in `model_dtype` ("auto": bfloat16 where the hardware has fast bf16,
  float32 elsewhere, `sae.precision`); batches come out in `dtype` (float32), the cache keeps the
  model's own dtype (half the disk in bf16).
- `pack=True` (what `sae.train` uses by default) concatenates documents into full rows of `context`
  tokens; evaluation and contexts keep one document per row (`pack=False`, the default here).
- Shuffle buffer as in Llama Scope: fill to `buffer_tokens`, shuffle, hand out batches until it is
  half empty, refill to full, shuffle again; at the end of the data the rest is drained. Seeded.
  `shuffle=False` gives the tokens in corpus order.
- Optional disk cache (`cache=True` or a folder): the unshuffled activations are written as safetensors
  shards plus an `index.json` (written last, so a crashed run leaves no half cache). A later stream
  with the same model, source, hooks, context, packing and dtype reads the shards and never runs the
  model, as long as the cache holds at least `max_tokens` tokens.
- `max_tokens` counts ordinary tokens; the last batch may be short (`drop_last=True` drops it).
- `shard=(rank, world_size)` gives each process every world_size-th token batch (data parallelism).
- Iterating again (a second epoch over `max_tokens`) reshuffles with the next seed of the sequence, so
  epochs differ yet a rerun from the start repeats them; with the cache they never rerun the model.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sae.data.massive import MASSIVE_FACTOR, massive_positions
from sae.data.norms import NormMeans, mean_norms
from sae.data.text import TokenBatch, TokenBatcher, describe_source, iter_texts, resolve_context
from sae.devices import check_device
from sae.errors import SAEError
from sae.io import atomic_path, cache_dir, write_json
from sae.lm.models import load_model, model_name
from sae.lm.runner import SiteRunner
from sae.lm.sites import check_finite
from sae.precision import resolve_dtype

CACHE_VERSION = 2
SHARD_TOKENS = 65_536  # tokens per cache shard
DEFAULT_NORM_TOKENS = 16_384  # Llama Scope's released code measures the mean norm on 16,384 tokens


class ActivationStream:
    """Iterable of {hook: float [batch_size, d]} batches of one model's activations on a text source."""

    def __init__(
        self,
        model: Any = "embedded",
        tokenizer: Any = None,
        *,
        source: Any = "embedded-train",
        hooks: Iterable[str],
        batch_size: int = 4096,
        context: int | None = None,
        seq_batch_size: int = 8,
        pack: bool = False,
        max_tokens: int | None = None,
        buffer_tokens: int = 65_536,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        norm_tokens: int = DEFAULT_NORM_TOKENS,
        cache: bool | str | Path | None = None,
        shard: tuple[int, int] = (0, 1),
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        model_dtype: str | torch.dtype = "auto",
        massive_factor: float = MASSIVE_FACTOR,
        text_field: str = "text",
        progress: bool = True,
    ):
        device = check_device(device)
        if isinstance(model, (str, Path)):
            model, tok, self.model_label = load_model(str(model), device=device,
                                                      dtype=resolve_dtype(model_dtype, device))
            tokenizer = tokenizer or tok
        else:
            self.model_label = model_name(model)
            if device is not None:
                model.to(device)
        if tokenizer is None:
            raise SAEError("ActivationStream needs a tokenizer with a model object (or pass a model name)")
        self.runner = SiteRunner(model)
        self.tokenizer = tokenizer
        sites = [self.runner.site(h) for h in hooks]
        if not sites:
            raise SAEError("ActivationStream needs at least one hook")
        self.hooks = list(dict.fromkeys(s.hook for s in sites))
        if batch_size < 1 or buffer_tokens < 1:
            raise SAEError("batch_size and buffer_tokens must be positive")
        self.batch_size = batch_size
        self.buffer_tokens = max(buffer_tokens, 2 * batch_size) if shuffle else batch_size
        self.source = source
        self.context = context = resolve_context(context, self.runner.max_context)
        self.seq_batch_size = seq_batch_size
        self.pack = pack
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.norm_tokens = norm_tokens
        self.shard = shard
        self.dtype = dtype
        self.massive_factor = massive_factor
        self.massive_tokens = 0  # positions the massive rule left out (of the tokens read from the model)
        self.text_field = text_field
        self.progress = progress
        self.batcher = TokenBatcher(tokenizer, context=context, batch_size=seq_batch_size, pack=pack,
                                    max_context=self.runner.max_context)
        self.cache_folder = self._cache_folder(cache)
        self._norms: dict[str, float] | None = None
        self._epoch = 0

    # ---- what train.py and evaluate.py ask -----------------------------------------------------
    def dims(self) -> dict[str, int]:
        return {h: self.runner.d_model for h in self.hooks}

    def mean_norms(self, n_tokens: int | None = None) -> dict[str, float]:
        """Dataset-wise mean L2 norm per hook over the first `n_tokens` (default `norm_tokens`) ordinary tokens."""
        n_tokens = n_tokens or self.norm_tokens
        if self._norms is not None and n_tokens == self.norm_tokens:
            return dict(self._norms)
        index = self._read_index()
        if index is None and self.cache_folder is not None and self.max_tokens and n_tokens == self.norm_tokens:
            for _ in self.chunks():  # fill the cache now: it records the norms, and the model runs once
                pass
            index = self._read_index()
        if index and n_tokens == index.get("norm_tokens") and all(h in index["mean_norms"] for h in self.hooks):
            norms = {h: float(index["mean_norms"][h]) for h in self.hooks}
        else:
            acc = mean_norms(self.chunks(limit=n_tokens, progress=False), self.hooks, n_tokens)
            if not acc.seen:
                raise SAEError("the corpus is empty: no tokens to measure norms on")
            norms = acc.means()
        if n_tokens == self.norm_tokens:
            self._norms = norms
        return dict(norms)

    def n_tokens(self) -> int:
        """Ordinary tokens the stream holds (at most max_tokens); with a cache, reading them fills it."""
        index = self._read_index()
        if index is None:
            n = sum(next(iter(chunk.values())).shape[0] for chunk in self.chunks())
            index = self._read_index()
            if index is None:
                return n
        self.massive_tokens = int(index.get("massive_tokens", 0))
        return min(int(index["tokens"]), self.max_tokens or int(index["tokens"]))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed + 1_000_003 * self._epoch)
        self._epoch += 1
        buf: dict[str, torch.Tensor] | None = None
        size = 0
        chunks = self.chunks()
        exhausted = False
        while True:
            while not exhausted and size < self.buffer_tokens:
                chunk = next(chunks, None)
                if chunk is None:
                    exhausted = True
                    break
                buf = chunk if buf is None or size == 0 else {h: torch.cat([buf[h], chunk[h]]) for h in self.hooks}
                size = next(iter(buf.values())).shape[0]
            if buf is None or size == 0:
                return
            if self.shuffle:
                perm = torch.randperm(size, generator=g)
                buf = {h: t[perm] for h, t in buf.items()}
            floor = self.buffer_tokens // 2 if self.shuffle and not exhausted else 0
            while size - self.batch_size >= floor and size >= self.batch_size:
                yield {h: t[: self.batch_size].to(self.dtype) for h, t in buf.items()}
                buf = {h: t[self.batch_size :] for h, t in buf.items()}
                size -= self.batch_size
            if exhausted:
                if size and not self.drop_last:
                    yield {h: t.to(self.dtype) for h, t in buf.items()}
                return

    # ---- unshuffled activations, from the model or the disk cache ------------------------------
    def chunks(self, limit: int | None = None, progress: bool | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Unshuffled activations of ordinary tokens, {hook: [n, d]} per token batch, in corpus order."""
        limit = self.max_tokens if limit is None else min(limit, self.max_tokens or limit)
        index = self._read_index()
        if index is not None and (limit is not None and index["tokens"] >= limit or index.get("complete")):
            yield from self._cached_chunks(index, limit)
            return
        yield from self._model_chunks(limit, progress=self.progress if progress is None else progress,
                                      write_cache=self.cache_folder is not None and limit == self.max_tokens)

    def token_batches(self) -> Iterator[TokenBatch]:
        texts = iter_texts(self.source, text_field=self.text_field)
        rank, world = self.shard
        for i, batch in enumerate(self.batcher.batches(texts, max_tokens=None)):
            if i % world == rank:
                yield batch

    def _model_chunks(self, limit: int | None, progress: bool, write_cache: bool) -> Iterator[dict[str, torch.Tensor]]:
        from tqdm.auto import tqdm

        bar = tqdm(total=limit, unit="tok", desc="activations", disable=not progress, leave=False)
        state = {"seen": 0, "shards": [], "pending": [], "norms": NormMeans(self.hooks, self.norm_tokens),
                 "massive": 0}
        try:
            for b, batch in enumerate(self.token_batches()):
                acts = self.runner.capture(batch.input_ids, batch.attention_mask, self.hooks)
                mask = batch.mask.to(self.runner.device)
                for h in self.hooks:
                    check_finite(f"{h} (token batch {b})", acts[h], mask)
                massive = massive_positions(acts.values(), mask, self.massive_factor)
                state["massive"] += int(massive.sum())
                mask = mask & ~massive
                chunk = {h: acts[h][mask].detach().to("cpu") for h in self.hooks}
                n = chunk[self.hooks[0]].shape[0]
                if limit is not None and state["seen"] + n > limit:
                    chunk = {h: t[: limit - state["seen"]] for h, t in chunk.items()}
                    n = limit - state["seen"]
                self._account(state, chunk, n, write_cache)
                bar.update(n)
                last = limit is not None and state["seen"] >= limit
                if last:  # finish the statistics and the cache before handing out the last chunk
                    self._finish(state, limit, write_cache)
                yield chunk
                if last:
                    return
        finally:
            bar.close()
        self._finish(state, limit, write_cache)

    def _account(self, state: dict, chunk: dict[str, torch.Tensor], n: int, write_cache: bool) -> None:
        if not state["norms"].full:
            state["norms"].add(chunk)
            if state["norms"].full and self._norms is None:
                self._norms = state["norms"].means()
        state["seen"] += n
        if write_cache:
            state["pending"].append(chunk)
            if sum(p[self.hooks[0]].shape[0] for p in state["pending"]) >= SHARD_TOKENS:
                state["shards"].append(self._write_shard(len(state["shards"]), state["pending"]))
                state["pending"] = []

    def _finish(self, state: dict, limit: int | None, write_cache: bool) -> None:
        seen = state["seen"]
        self.massive_tokens = state["massive"]
        if seen == 0:
            raise SAEError(f"the corpus {describe_source(self.source)} is empty: no ordinary tokens")
        if self._norms is None and (limit is None or seen < limit):  # the whole stream is shorter than norm_tokens
            self._norms = state["norms"].means()
        if write_cache:
            if state["pending"]:
                state["shards"].append(self._write_shard(len(state["shards"]), state["pending"]))
                state["pending"] = []
            index = {
                "version": CACHE_VERSION, "key": self._key, "tokens": seen, "hooks": self.hooks,
                "shards": state["shards"], "complete": limit is None or seen < limit,
                "norm_tokens": min(self.norm_tokens, seen), "mean_norms": self._norms or {},
                "massive_tokens": state["massive"],
                "d": self.runner.d_model, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            write_json(self.cache_folder / "index.json", index)

    def _cached_chunks(self, index: dict, limit: int | None) -> Iterator[dict[str, torch.Tensor]]:
        self.massive_tokens = int(index.get("massive_tokens", 0))
        seen = 0
        for shard in index["shards"]:
            path = self.cache_folder / shard["file"]
            try:
                tensors = load_file(path)
            except Exception as e:  # safetensors raises several types for a damaged file
                raise SAEError(f"{path}: damaged activation cache ({e}); delete {self.cache_folder}") from None
            chunk = {h: tensors[h] for h in self.hooks}
            n = chunk[self.hooks[0]].shape[0]
            if limit is not None and seen + n > limit:
                chunk = {h: t[: limit - seen] for h, t in chunk.items()}
                n = limit - seen
            seen += n
            yield chunk
            if limit is not None and seen >= limit:
                return

    def _write_shard(self, i: int, parts: list[dict[str, torch.Tensor]]) -> dict:
        name = f"shard_{i:05d}.safetensors"
        tensors = {h: torch.cat([p[h] for p in parts]).contiguous() for h in self.hooks}
        with atomic_path(self.cache_folder / name) as tmp:
            save_file(tensors, str(tmp))
        return {"file": name, "tokens": tensors[self.hooks[0]].shape[0]}

    # ---- cache identity ----------------------------------------------------------------------
    def _cache_folder(self, cache: bool | str | Path | None) -> Path | None:
        if not cache:
            self._key = None
            return None
        key = {
            "version": CACHE_VERSION,
            "model": self.model_label,
            "model_config": _config_digest(self.runner.model),
            "source": _source_identity(self.source),
            "hooks": sorted(self.hooks),
            "context": self.context,
            "pack": self.pack,
            "shard": list(self.shard),
            "dtype": str(next(self.runner.model.parameters()).dtype),
            "massive_factor": self.massive_factor,
        }
        if key["source"] is None:
            raise SAEError("the activation cache needs a named source (a file, folder, embedded-*, hf:...), "
                           "not an in-memory iterable")
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self._key = key
        root = cache_dir("activations") if cache is True else Path(cache)
        folder = root / digest
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def fingerprint(self) -> dict[str, Any]:
        """What this stream reads, in order: a checkpoint stores it and a resume on other data is refused."""
        return {"model": self.model_label, "model_config": _config_digest(self.runner.model),
                "source": _source_identity(self.source) or _content_digest(self.source), "hooks": sorted(self.hooks),
                "context": self.context, "pack": self.pack, "shard": list(self.shard), "max_tokens": self.max_tokens,
                "shuffle": self.shuffle, "seed": self.seed, "massive_factor": self.massive_factor,
                "text_field": self.text_field}

    def _read_index(self) -> dict | None:
        if self.cache_folder is None:
            return None
        path = self.cache_folder / "index.json"
        if not path.is_file():
            return None
        try:
            index = json.loads(path.read_text())
        except ValueError:
            return None
        if index.get("version") != CACHE_VERSION or index.get("key") != self._key:
            return None
        return index


def _config_digest(model: Any) -> str:
    cfg = getattr(model, "config", None)
    text = cfg.to_json_string(use_diff=False) if hasattr(cfg, "to_json_string") else repr(cfg)
    params = sum(p.numel() for p in model.parameters())
    first = next(model.parameters()).detach().flatten()[:64].float().tolist()
    return hashlib.sha256((text + str(params) + repr(first)).encode()).hexdigest()[:16]


def _content_digest(source: Any) -> str | None:
    """A hash of an in-memory corpus (a list of texts or records); None for an iterable that cannot be reread."""
    if not isinstance(source, (list, tuple)):
        return None
    return "sha256:" + hashlib.sha256(json.dumps(list(source), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _source_identity(source: Any) -> Any:
    if not isinstance(source, (str, Path)):
        return None
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        return [[str(f.resolve()), f.stat().st_size, int(f.stat().st_mtime)] for f in files if f.is_file()]
    return text


__all__ = ["ActivationStream", "DEFAULT_NORM_TOKENS"]
