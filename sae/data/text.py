"""Text sources -> token batches: BOS prepended, truncated to the context, special positions masked.

Sources (`iter_texts`):
- `"embedded"`, `"embedded-heldout"`, `"embedded-train"`: the embedded Wikipedia-summaries corpus
  (`sae.lm.embedded`; "embedded" is the held-out split);
- a `.txt` file (documents separated by blank lines), a `.jsonl` file (one JSON object per line, the
  `text` field, or a bare JSON string), a `.parquet` file (the `text` column; needs pyarrow), or a
  folder of such files (sorted by name);
- `"hf:NAME[:CONFIG][@SPLIT]"`: a Hugging Face `datasets` dataset, streamed (e.g.
  `hf:cerebras/SlimPajama-627B@train`; needs the optional `datasets` package);
- any Python iterable of strings.

Tokenisation (`TokenBatcher`): each document becomes [BOS] + its tokens (the tokenizer's own special
tokens are not added), truncated to `context` (default 1024), one document per row, rows right-padded
to the longest in the batch. With `pack=True`, documents ([BOS] + tokens each) are concatenated and cut
into rows of exactly `context` tokens, each row starting with BOS. `TokenBatch.mask` is True at
ordinary positions and False at BOS, EOS, padding and any other special token: those positions are
excluded from every statistic and metric, and splices leave them alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sae.errors import SAEError, SAEFileError
from sae.lm.embedded import corpus_documents

DEFAULT_CONTEXT = 1024
EMBEDDED_SOURCES = {"embedded": "heldout", "embedded-heldout": "heldout", "embedded-train": "train"}
TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")


class DataError(SAEError, ValueError):
    """A text source that cannot be read, is empty, or does not fit the model."""


# ---------------------------------------------------------------------------------------------------
# text sources
# ---------------------------------------------------------------------------------------------------
def describe_source(source: Any) -> str:
    """A short label for tables: the source string, or the kind of iterable."""
    if isinstance(source, (str, Path)):
        return str(source)
    return type(source).__name__


def iter_texts(source: Any, *, text_field: str = "text") -> Iterator[str]:
    """Yield the documents of `source` (see the module docstring for what a source can be)."""
    for _, text in iter_documents(source, text_field=text_field):
        yield text


def check_text_source(source: Any) -> None:
    """Refuse, before any model loads, a text source named by a path that does not exist."""
    if not isinstance(source, (str, Path)) or str(source) in EMBEDDED_SOURCES or str(source).startswith("hf:"):
        return
    if not Path(source).expanduser().exists():
        raise SAEFileError(
            f"no such dataset {str(source)!r}: give a .txt/.jsonl/.parquet file or folder, 'embedded-heldout', "
            "'embedded-train', or hf:NAME[:CONFIG][@SPLIT]"
        )


def iter_documents(source: Any, *, text_field: str = "text", title_field: str = "title") -> Iterator[tuple[str, str]]:
    """(title, text) for every document of `source`, in the order of `iter_texts`. Titles come from the
    embedded corpus (article titles) and from dict documents (`title_field`); other sources give ''."""
    if isinstance(source, (str, Path)):
        text = str(source)
        if text in EMBEDDED_SOURCES:
            yield from corpus_documents(EMBEDDED_SOURCES[text])
            return
        if text.startswith("hf:"):
            yield from (("", t) for t in _hf_texts(text[3:], text_field))
            return
        path = Path(text).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in TEXT_SUFFIXES)
            if not files:
                raise DataError(f"{path} holds no {', '.join(TEXT_SUFFIXES)} files")
            for f in files:
                yield from (("", t) for t in _file_texts(f, text_field))
            return
        if path.is_file():
            yield from (("", t) for t in _file_texts(path, text_field))
            return
        check_text_source(text)
    if isinstance(source, bytes) or not isinstance(source, Iterable):
        raise DataError(f"a text source must be a path, a name or an iterable of strings, not {type(source).__name__}")
    for i, doc in enumerate(source):
        title = ""
        if isinstance(doc, dict):
            title = str(doc.get(title_field) or "")
            doc = doc.get(text_field)
        if not isinstance(doc, str):
            raise DataError(f"document {i} of the text source is a {type(doc).__name__}, not a string")
        yield title, doc


def _file_texts(path: Path, text_field: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            doc: list[str] = []
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        doc.append(line)
                    elif doc:
                        yield "".join(doc).strip("\n")
                        doc = []
            if doc:
                yield "".join(doc).strip("\n")
        elif suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except ValueError as e:
                        raise DataError(f"{path}:{n}: not JSON ({e})") from None
                    text = obj if isinstance(obj, str) else obj.get(text_field) if isinstance(obj, dict) else None
                    if not isinstance(text, str):
                        raise DataError(f"{path}:{n}: no string field {text_field!r}")
                    yield text
        elif suffix == ".parquet":
            try:
                import pandas as pd

                frame = pd.read_parquet(path, columns=[text_field])
            except ImportError as e:
                raise DataError(f"reading {path} needs pyarrow (`pip install pyarrow`): {e}") from None
            except (KeyError, ValueError) as e:
                raise DataError(f"{path}: no column {text_field!r} ({e})") from None
            for text in frame[text_field]:
                if isinstance(text, str):
                    yield text
        else:
            raise DataError(f"{path}: unknown text file type {suffix!r}; use .txt, .jsonl or .parquet")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    except OSError as e:
        raise SAEFileError(f"{path}: cannot read ({e})") from None


def _hf_texts(spec: str, text_field: str) -> Iterator[str]:
    try:
        import datasets  # optional
    except ImportError:
        raise DataError(f"hf:{spec} needs the `datasets` package (`pip install datasets`)") from None
    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=split or "train", streaming=True)
    except Exception as e:  # the hub raises many kinds
        raise DataError(f"cannot open hf:{spec} ({str(e).splitlines()[0][:200]})") from None
    for row in ds:
        text = row.get(text_field)
        if isinstance(text, str):
            yield text


def resolve_context(context: int | None, max_context: int | None) -> int:
    """`context`, or by default DEFAULT_CONTEXT capped at the model's maximum; an explicit longer one is an error."""
    if context is None:
        return min(DEFAULT_CONTEXT, max_context or DEFAULT_CONTEXT)
    if max_context is not None and context > max_context:
        raise DataError(f"context {context} is longer than the model allows ({max_context} positions)")
    return int(context)


# ---------------------------------------------------------------------------------------------------
# tokenisation
# ---------------------------------------------------------------------------------------------------
@dataclass
class TokenBatch:
    """input_ids, attention_mask (1 = a real token, BOS included) and mask (True = ordinary position)."""

    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long
    mask: torch.Tensor  # [B, T] bool

    @property
    def n_tokens(self) -> int:
        """Ordinary (non-special) tokens in the batch."""
        return int(self.mask.sum())

    def to(self, device: torch.device | str) -> "TokenBatch":
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.mask.to(device))


def special_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            ids.add(int(v))
    return ids


class TokenBatcher:
    """Turn documents into TokenBatches for one tokenizer. See the module docstring for the rules."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        context: int = DEFAULT_CONTEXT,
        batch_size: int = 8,
        pack: bool = False,
        max_context: int | None = None,
        min_tokens: int = 2,
    ):
        if context < 2:
            raise DataError(f"context must be at least 2 tokens (BOS + one), got {context}")
        if max_context is not None and context > max_context:
            raise DataError(f"context {context} is longer than the model allows ({max_context} positions)")
        if batch_size < 1:
            raise DataError(f"batch size must be at least 1, got {batch_size}")
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is None:
            raise DataError("the tokenizer has no BOS token; Llama-family models need one")
        self.tokenizer = tokenizer
        self.context = context
        self.batch_size = batch_size
        self.pack = pack
        self.bos = int(bos)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad = int(pad) if pad is not None else int(getattr(tokenizer, "eos_token_id", None) or 0)
        self.special = torch.tensor(sorted(special_ids(tokenizer)), dtype=torch.long)
        self.min_tokens = min_tokens

    def encode(self, text: str, limit: int | None = None) -> list[int]:
        """[BOS] + the document's tokens (no other special tokens added), at most `limit` tokens in all."""
        if limit is None:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = self.tokenizer(text, add_special_tokens=False, truncation=True, max_length=limit - 1)["input_ids"]
        return [self.bos] + list(ids)[: None if limit is None else limit - 1]

    def rows(self, texts: Iterable[str]) -> Iterator[list[int]]:
        """Token rows of at most `context` tokens, each starting with BOS."""
        if not self.pack:
            for text in texts:
                ids = self.encode(text, self.context)
                if len(ids) >= self.min_tokens:
                    yield ids
            return
        buf: list[int] = []
        for text in texts:
            buf.extend(self.encode(text))
            while len(buf) >= self.context:
                if buf[0] != self.bos:
                    buf.insert(0, self.bos)
                yield buf[: self.context]
                buf = buf[self.context :]
        if len(buf) >= self.min_tokens:
            yield buf if buf[0] == self.bos else [self.bos] + buf[: self.context - 1]

    def collate(self, rows: list[list[int]]) -> TokenBatch:
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), self.pad, dtype=torch.long)
        attn = torch.zeros((len(rows), T), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            attn[i, : len(r)] = 1
        mask = attn.bool() & ~torch.isin(ids, self.special)
        return TokenBatch(ids, attn, mask)

    def batches(self, texts: Iterable[str], max_tokens: int | None = None) -> Iterator[TokenBatch]:
        """TokenBatches until the texts run out or `max_tokens` ordinary tokens have been produced.

        The last batch is cut so that the total number of ordinary tokens is exactly `max_tokens`
        (when the texts have that many). Raises DataError if the texts hold no usable document.
        """
        seen = 0
        rows: list[list[int]] = []
        any_rows = False
        for row in self.rows(texts):
            any_rows = True
            rows.append(row)
            if len(rows) == self.batch_size:
                batch = self.collate(rows)
                rows = []
                batch, seen, done = self._cap(batch, seen, max_tokens)
                yield batch
                if done:
                    return
        if rows:
            batch, seen, _ = self._cap(self.collate(rows), seen, max_tokens)
            yield batch
        if not any_rows:
            raise DataError("the corpus is empty: no document has any token")

    @staticmethod
    def _cap(batch: TokenBatch, seen: int, max_tokens: int | None) -> tuple[TokenBatch, int, bool]:
        n = batch.n_tokens
        if max_tokens is None or seen + n < max_tokens:
            return batch, seen + n, max_tokens is not None and seen + n >= max_tokens
        # keep exactly max_tokens - seen ordinary positions: drop the surplus from the end, row-major
        keep = max_tokens - seen
        flat = batch.mask.flatten().cumsum(0) <= keep
        mask = batch.mask & flat.view_as(batch.mask)
        rows_used = int(mask.any(1).nonzero().max()) + 1 if keep > 0 else 1
        last_col = int(torch.nonzero(mask[:rows_used].any(0)).max()) + 1 if keep > 0 else 1
        return (
            TokenBatch(batch.input_ids[:rows_used, :last_col], batch.attention_mask[:rows_used, :last_col],
                       mask[:rows_used, :last_col]),
            max_tokens,
            True,
        )


def token_batches(
    source: Any,
    tokenizer: Any,
    *,
    context: int = DEFAULT_CONTEXT,
    batch_size: int = 8,
    pack: bool = False,
    max_tokens: int | None = None,
    max_context: int | None = None,
    text_field: str = "text",
) -> Iterator[TokenBatch]:
    """`iter_texts(source)` through a TokenBatcher: the one call most code needs."""
    batcher = TokenBatcher(tokenizer, context=context, batch_size=batch_size, pack=pack, max_context=max_context)
    return batcher.batches(iter_texts(source, text_field=text_field), max_tokens=max_tokens)
