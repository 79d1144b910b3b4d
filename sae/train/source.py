"""Activation sources for training: `DataSource` turns a tensor, a dict of tensors, SyntheticData or
any iterable of batches (the activation stream) into resumable batches of exactly `batch_size` rows."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from typing import Any

import torch

from sae.data.norms import mean_norms
from sae.data.synthetic import SyntheticData
from sae.errors import SAEError, ShapeError
from sae.train.parallel import Sharding


def as_batch(item: Any) -> dict[str, torch.Tensor]:
    """One item of an activation source as a dict hook -> tensor (a bare tensor is hook "x")."""
    if isinstance(item, torch.Tensor):
        return {"x": item}
    if isinstance(item, dict):
        return item
    raise SAEError(f"activations must be tensors or dicts of tensors keyed by hook name, not {type(item).__name__}")


class DataSource:
    """Batches of exactly `batch_size` rows as dicts hook -> float32 [batch, d], resumable by step.

    Accepts a tensor [N, d] (hook "x"), a dict of equal-length tensors (hook -> [N, d]; shuffled,
    reshuffled every epoch from the seed), a SyntheticData, or any iterable of tensors / dicts (the
    activation stream; re-chunked to `batch_size`). An iterable is re-iterated from its start on resume
    and the rows already used are skipped, unless it offers `skip_tokens(n)` / `iter_from(n)`.

    Distributed (`sharding`): every rank reads the same global batches and keeps its slice of each, so
    the ranks together see what one process would; a source holding only this rank's data (an
    ActivationStream with shard=(rank, world)) gives batches of batch_size / world rows instead.
    """

    def __init__(self, source: Any, batch_size: int, seed: int = 0, sharding: Sharding | None = None):
        self.source = source
        self.sharding = sharding or Sharding()
        self.per_rank = self.sharding.per_rank_source(source)
        self.batch_size = batch_size // self.sharding.world if self.per_rank else batch_size
        self.seed = seed
        self.fixed: dict[str, torch.Tensor] | None = None
        self.synthetic = source if isinstance(source, SyntheticData) else None
        self._head: list[dict[str, torch.Tensor]] = []  # items read ahead (dims, norms), replayed first
        self._it: Iterator | None = None
        if isinstance(source, (torch.Tensor, dict)):
            fixed = as_batch(source)
            lengths = {t.shape[0] for t in fixed.values()}
            if len(lengths) != 1:
                raise ShapeError(f"all sites must have the same number of rows, got {sorted(lengths)}")
            if next(iter(lengths)) < batch_size:
                raise ShapeError(f"{next(iter(lengths))} rows of activations is less than one batch ({batch_size})")
            self.fixed = {h: t.float() for h, t in fixed.items()}

    def dims(self) -> dict[str, int]:
        """hook -> width, without running a model where the source can say so."""
        if self.fixed is not None:
            return {h: t.shape[-1] for h, t in self.fixed.items()}
        if self.synthetic is not None:
            return {"x": self.synthetic.d}
        for attr in ("dims", "widths"):
            d = getattr(self.source, attr, None)
            d = d() if callable(d) else d
            if isinstance(d, dict) and d:
                return {str(h): int(v) for h, v in d.items()}
        first = self._take(0)
        return {h: t.shape[-1] for h, t in first.items()}

    def fingerprint(self) -> Any:
        """What the source reads, as JSON (None: an iterable that cannot say). A checkpoint stores it and a
        resume on other data is refused: a tensor's shape and a strided sample of its rows, a synthetic
        dictionary's config, or the source's own `fingerprint()` (the activation stream's model, corpus,
        sites, packing and order)."""
        if self.fixed is not None:
            return {h: _tensor_digest(t) for h, t in sorted(self.fixed.items())}
        if self.synthetic is not None:
            return {"source": "synthetic", **asdict(self.synthetic.config)}
        own = getattr(self.source, "fingerprint", None)
        return own() if callable(own) else None

    def first_batch(self) -> dict[str, torch.Tensor]:
        if self.fixed is not None:
            return next(self._fixed_batches(0))
        if self.synthetic is not None:
            return {"x": self.synthetic.batch(0, self.batch_size)}
        return self._take(0)

    def _read_ahead(self) -> Iterator[dict[str, torch.Tensor]]:
        i = 0
        while (item := self._take(i)) is not None:
            yield item
            i += 1

    def _take(self, i: int) -> dict[str, torch.Tensor] | None:
        """Item i of a plain iterable, read once and kept until training replays it (None at the end)."""
        if self._it is None:
            self._it = iter(self.source)
        while len(self._head) <= i:
            try:
                self._head.append(as_batch(next(self._it)))
            except StopIteration:
                if not self._head:
                    raise SAEError("the activation source is empty") from None
                return None
        return self._head[i]

    def mean_norms(self, hooks: Iterable[str], n_tokens: int) -> dict[str, float]:
        """Average activation norm per hook: the source's own statistics if it has them (a per-rank
        source: the mean over the ranks)."""
        norms = self._mean_norms(sorted(set(hooks)), n_tokens)
        if not self.per_rank:
            return norms
        mean = self.sharding.rank_mean(torch.tensor(list(norms.values()), dtype=torch.float64))
        return dict(zip(norms, mean.tolist()))

    def _mean_norms(self, hooks: list[str], n_tokens: int) -> dict[str, float]:
        stats = getattr(self.source, "mean_norms", None)
        if callable(stats):
            got = stats()
            if all(h in got for h in hooks):
                return {h: float(got[h]) for h in hooks}
        items = self._global_batches(0) if self.fixed is not None or self.synthetic is not None else self._read_ahead()
        return mean_norms(items, hooks, n_tokens).means()

    def batches(self, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's rows of every batch from `start_step` on (one process: the whole batches)."""
        sh = self.sharding
        if self.per_rank:
            yield from sh.until_any_ends(_rechunk(self._iterate(start_step * self.batch_size), self.batch_size))
        elif sh.world > 1:
            yield from (sh.local_rows(batch) for batch in self._global_batches(start_step))
        else:
            yield from self._global_batches(start_step)

    def _global_batches(self, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        B = self.batch_size
        if self.fixed is not None:
            yield from self._fixed_batches(start_step)
        elif self.synthetic is not None:
            for t in self.synthetic.batches(B, start=start_step):
                yield {"x": t}
        else:
            yield from _rechunk(self._iterate(start_step * B), B)

    def _fixed_batches(self, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        N = next(iter(self.fixed.values())).shape[0]
        per_epoch = N // self.batch_size
        step = start_step
        while True:
            epoch, j = divmod(step, per_epoch)
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            perm = torch.randperm(N, generator=g)
            while j < per_epoch:
                rows = perm[j * self.batch_size : (j + 1) * self.batch_size]
                yield {h: t[rows] for h, t in self.fixed.items()}
                j += 1
                step += 1

    def _iterate(self, skip: int) -> Iterator[dict[str, torch.Tensor]]:
        src = self.source
        if skip and hasattr(src, "iter_from"):
            self._head = []
            yield from (as_batch(b) for b in src.iter_from(skip))
            return
        if skip and hasattr(src, "skip_tokens") and not self._head and self._it is None:
            src.skip_tokens(skip)
            skip = 0
        if self._it is None:
            self._it = iter(src)
        head, self._head = self._head, []
        epoch = 0
        while True:
            got = False
            for item in _chain(head, self._it) if epoch == 0 else iter(src):
                got = True
                batch = as_batch(item)
                n = next(iter(batch.values())).shape[0]
                if skip >= n:
                    skip -= n
                    continue
                if skip:
                    batch = {h: t[skip:] for h, t in batch.items()}
                    skip = 0
                yield batch
            if not got or iter(src) is src:  # a one-shot iterator cannot be read again
                return
            epoch += 1
            if skip == 0:
                print(f"note: the activation source ended; reading it again (epoch {epoch + 1})", file=sys.stderr)


def _chain(head: list, it: Iterator) -> Iterator:
    while head:
        yield head.pop(0)
    yield from it


def _rechunk(it: Iterator[dict[str, torch.Tensor]], size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Re-cut a stream of dict batches of any size into batches of exactly `size` rows."""
    parts: list[dict[str, torch.Tensor]] = []
    have = 0
    for batch in it:
        parts.append(batch)
        have += next(iter(batch.values())).shape[0]
        while have >= size:
            cat = {h: torch.cat([p[h] for p in parts]) if len(parts) > 1 else parts[0][h] for h in parts[0]}
            yield {h: t[:size].float() for h, t in cat.items()}
            rest = {h: t[size:] for h, t in cat.items()}
            have -= size
            parts = [rest] if have else []


def first_tokens(source: Any, hooks: list[str], n: int) -> dict[str, torch.Tensor]:
    """The first n rows of every hook, in memory (for post-processing several SAEs from one read)."""
    if isinstance(source, dict):
        return {h: source[h][:n] for h in hooks}
    parts: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    seen = 0
    items = source.batches(4096) if isinstance(source, SyntheticData) else iter(source)
    for item in items:
        batch = as_batch(item)
        take = min(n - seen, next(iter(batch.values())).shape[0])
        for h in hooks:
            parts[h].append(batch[h][:take].float())
        seen += take
        if seen >= n:
            break
    return {h: torch.cat(v) for h, v in parts.items()}


def _tensor_digest(t: torch.Tensor) -> str:
    """A short hash of a tensor's shape and of up to 256 of its rows, evenly spaced."""
    rows = t[:: max(1, t.shape[0] // 256)].contiguous()
    return f"{list(t.shape)}:" + hashlib.sha256(rows.float().numpy().tobytes()).hexdigest()[:16]
