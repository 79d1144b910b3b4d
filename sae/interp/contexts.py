"""Top-activating contexts of every feature of an SAE, streamed from a corpus through the model.

    python -m sae.contexts demo:L15R-8x --tokens 100000 --out out/contexts/L15R-8x

    from sae.interp.contexts import top_contexts
    ctx = top_contexts("demo:L15R-8x", tokens=100_000, out="out/contexts/L15R-8x", resume=True)
    ctx.table([12, 345])     # one row per (feature, kind, rank): text window, activations, title
    ctx.firing               # feature, count, frequency

Documents are read in a seeded random order by default (the embedded corpus is sorted by title, so a
token budget would otherwise see only its first titles); `shuffle=False` keeps corpus order, and streamed
`hf:` sources are always read in order. For every feature it keeps, in one pass and without a dense
[tokens, features] array:
- `top`: the `n_top` documents where it fires most, one context per document (the window around the
  document's maximum, first position on ties; equal maxima keep the document read first);
- `random`: `n_random` activating tokens drawn uniformly without replacement (reservoir sampling by
  random keys: every activating (document, position) gets a key from a seeded hash and the largest
  keys are kept, so the sample does not depend on batching and a resumed run draws the same one);
- firing counts, and the corpus count of every token id (the labeller's background);
- the text of every token id in the windows, and the bytes of those that are pieces of a character
  (byte-level BPE splits some non-ASCII characters into tokens that decode alone to U+FFFD), so that
  `decode` gives runs of tokens, such as words, whole.
A context is a window of `window = (before, after)` tokens around its token with the feature's
activation on each; BOS/EOS/padding are left out, and massive-activation positions (`sae.data.massive`) never
start a context (they may still sit inside another token's window). Windows hold token ids and activations in fixed
[features, slots, width] arrays, so memory is set by the SAE's width, not by the corpus.

Activations come from `ActivationStream` (one forward per token batch for every SAE at once, NaN checks);
the same documents are tokenised beside it to know each token's document, position and id. The state
is checkpointed atomically (one safetensors file whose header holds the progress) every
`checkpoint_s` seconds; `resume=True` picks it up (a larger `tokens` extends a finished run).

The kept contexts and their file: `sae.interp.store`; one SAE's bookkeeping: `sae.interp.collector`; the
documents behind the activations: `sae.interp.documents`; the command line: `sae.interp.cli`.
"""

from __future__ import annotations

import hashlib
import sys
import time
from itertools import islice, tee
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae.data.massive import massive_positions
from sae.data.stream import ActivationStream
from sae.data.text import describe_source
from sae.devices import check_device
from sae.errors import ShapeError
from sae.eval.resolve import resolve_saes, sae_sites
from sae.interp.collector import Collector
from sae.interp.documents import document_rows, next_rows, ordered_documents
from sae.interp.store import HIST_EDGES, HISTOGRAM, SCHEMA, STATE_FILE, ContextsError, Slots, TopContexts
from sae.lm.models import load_model, model_name
from sae.model import SparseAutoencoder
from sae.precision import dtype_name

DEFAULT_TOKENS = 100_000
REFRESHED = {"fingerprint", "model_dtype"}  # what `refresh` collects anew instead of refusing
DEFAULT_WINDOW = (24, 8)  # tokens before and after a context's own token


def fingerprint(sae: SparseAutoencoder) -> str:
    """A short hash of an SAE's weights (a strided sample of every tensor): resumes must match it."""
    h = hashlib.sha256(f"{sae.d_in}x{sae.n_features}x{sae.d_out}{sae.activation}{sae.k}".encode())
    step = max(1, sae.n_features // 512)
    for t in (sae.W_enc[:, ::step], sae.W_dec[::step], sae.b_enc, sae.threshold, sae.b_dec):
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _window(window: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(window, int):
        before = window * 3 // 4  # a causal model: what precedes a token is what made it fire
        w = (before, window - 1 - before)
    else:
        w = tuple(int(x) for x in window)
    if len(w) != 2 or min(w) < 0:
        raise ContextsError(f"window must be a total width >= 1 or (before, after) >= 0, not {window!r}")
    return w  # type: ignore[return-value]


def collect_contexts(
    saes: dict[str, Any],
    *,
    model: Any = "embedded",
    tokenizer: Any = None,
    dataset: Any = "embedded-train",
    tokens: int = DEFAULT_TOKENS,
    n_top: int = 20,
    n_random: int = 5,
    window: int | tuple[int, int] = DEFAULT_WINDOW,
    shuffle: bool = True,
    out: dict[str, str | Path] | None = None,
    resume: bool = False,
    progress: bool = True,
    context: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    device: str | None = None,
    checkpoint_s: float = 120.0,
    refresh: bool = False,
    dtype: str | torch.dtype = "auto",
) -> dict[str, TopContexts]:
    """Top contexts of several SAEs (name -> SparseAutoencoder or spec for `sae.load`) in one pass:
    one forward per token batch serves every SAE, at one site or several. `out` maps names to folders
    (saved at checkpoints and at the end); see `top_contexts` for the rest. refresh (with resume, for
    folders kept as a cache): contexts in `out` of other weights under the same name (the SAE was
    retrained) are collected anew, not an error. dtype: of a model given by name ("auto": bf16 where the
    hardware has fast bf16, as evaluation; the SAEs read its activations in fp32)."""
    if tokens < 1 or n_top < 1 or n_random < 0 or batch_size < 1:
        raise ContextsError(f"tokens, n_top and batch_size must be positive and n_random >= 0 "
                            f"(got {tokens}, {n_top}, {batch_size}, {n_random})")
    before, after = _window(window)
    for folder in (out or {}).values():  # before the model loads; _start_state decides again
        _refuse_overwrite(Path(folder), resume)
    device = check_device(device)
    resolved = resolve_saes(saes)
    if isinstance(model, (str, Path)):
        lm, tokenizer, label = load_model(str(model), device=device, dtype=dtype)
    else:
        if tokenizer is None:
            raise ContextsError("pass tokenizer= with a model object (or a model name)")
        lm, label = model, model_name(model)
    hooks = {name: sae_sites(s, name)[0].hook for name, s in resolved}
    # every ordinary position, so chunks line up with the document rows; _run leaves massive ones out
    stream = ActivationStream(lm, tokenizer, source=[], hooks=list(dict.fromkeys(hooks.values())), shuffle=False,
                              context=context, seq_batch_size=batch_size, massive_factor=0, progress=False)
    for name, s in resolved:
        if s.d_in != stream.dims()[hooks[name]]:
            raise ShapeError(f"{name} reads d_in={s.d_in} but {hooks[name]} of {label} has width "
                             f"{stream.dims()[hooks[name]]}")
        if device is not None:
            s.to(device)
    vocab_size = max(len(tokenizer), int(getattr(lm.config, "vocab_size", 0) or 0))
    shuffle = shuffle and not (isinstance(dataset, str) and dataset.startswith("hf:"))  # streamed: read in order
    collectors = []
    for name, s in resolved:
        settings = {"schema": SCHEMA, "sae": name, "fingerprint": fingerprint(s), "n_features": s.n_features,
                    "model": label, "dataset": describe_source(dataset), "context": stream.context,
                    "n_top": n_top, "n_random": n_random, "window": [before, after], "seed": seed, "shuffle": shuffle,
                    "histogram": HISTOGRAM, "model_dtype": dtype_name(next(lm.parameters()).dtype)}
        folder = Path(out[name]) if out and name in out else None
        state = _start_state(settings, vocab_size, folder, resume, refresh)
        collectors.append(Collector(name, s, hooks[name], state, folder))
    _run(collectors, stream, tokenizer, dataset, tokens, progress, checkpoint_s)
    return {c.name: c.state for c in collectors}


def _refuse_overwrite(folder: Path | None, resume: bool) -> None:
    """Without resume, a folder that already holds contexts is an error, not something to overwrite."""
    if not resume and folder is not None and (folder / STATE_FILE).is_file():
        raise ContextsError(f"{folder} already holds contexts ({STATE_FILE}); pass --resume (resume=True) to continue "
                            "them, or another --out (out=) to start anew")


def _start_state(settings: dict, vocab_size: int, folder: Path | None, resume: bool,
                 refresh: bool = False) -> TopContexts:
    _refuse_overwrite(folder, resume)
    if resume and folder is not None and (folder / STATE_FILE).is_file():
        state = TopContexts.load(folder)
        old = state.settings
        missing = sorted(set(settings) - set(old))
        changed = sorted(k for k in settings if k in old and old[k] != settings[k])
        anew = None
        if set(old) <= set(settings) and not changed and missing:
            anew = f"of an older version (without {', '.join(missing)})"
        elif refresh and set(old) <= set(settings) and changed and set(changed) <= REFRESHED:
            anew = f"of {settings['sae']} made with other {' and '.join(changed)} (retrained, or another dtype)"
        if anew:
            print(f"{folder} holds contexts {anew}; collecting them anew (the old file stays until the first "
                  "checkpoint)", file=sys.stderr)
            return _empty_state(settings, vocab_size)
        if state.settings != settings:
            raise ContextsError(f"{folder} holds contexts made with other settings ({', '.join(changed + missing)}); "
                                "use another folder or start anew without resume")
        return state
    return _empty_state(settings, vocab_size)


def _empty_state(settings: dict, vocab_size: int) -> TopContexts:
    F, (before, after) = settings["n_features"], settings["window"]
    width = before + after + 1
    return TopContexts(settings["sae"], settings, 0, 0, False, np.zeros(F, np.int64), np.zeros(vocab_size, np.int64),
                       Slots.empty(F, settings["n_top"], width), Slots.empty(F, settings["n_random"], width), {}, {},
                       hist=np.zeros((F, len(HIST_EDGES) - 1), np.int64))


def _run(collectors: list[Collector], stream: ActivationStream, tokenizer, dataset, budget: int, progress: bool,
         checkpoint_s: float) -> None:
    from tqdm.auto import tqdm

    active = [c for c in collectors if c.wants(budget)]
    if not active:
        return
    start = min(c.state.docs for c in active)
    titles: dict[int, str] = {}
    docs = ordered_documents(dataset, collectors[0].state.settings["shuffle"], collectors[0].seed)
    for_stream, for_rows = tee(islice(enumerate(docs), start, None))
    stream.source = (text for _, (_, _, text) in for_stream)
    rows = document_rows(for_rows, stream.batcher, titles)
    done = min(c.state.tokens for c in active)
    bar = tqdm(total=budget, initial=done, unit="tok", desc="contexts", disable=not progress)
    last_save = time.monotonic()
    exhausted = True
    try:
        for chunk in stream.chunks():
            n = next(iter(chunk.values())).shape[0]
            batch = next_rows(rows, n)
            keep = ~massive_positions(chunk.values(), torch.ones(n, dtype=torch.bool)).numpy()
            for c in active:
                if c.wants(budget):
                    c.update(chunk[c.hook], batch, budget, keep)
            now = min(c.state.tokens for c in active)
            bar.update(max(now - done, 0))
            done = now
            if not any(c.wants(budget) for c in active):
                exhausted = False
                break
            if time.monotonic() - last_save > checkpoint_s:
                _finish(active, titles, tokenizer)
                last_save = time.monotonic()
    finally:
        bar.close()
    for c in active:
        c.state.complete = exhausted and c.state.tokens < budget
    _finish(active, titles, tokenizer)


def _finish(collectors: list[Collector], titles: dict[int, str], tokenizer) -> None:
    """Attach titles, token texts and the bytes of byte pieces for what the windows reference, then save where a
    folder is set."""
    for c in collectors:
        s = c.state
        docs = np.unique(np.concatenate([s.top.doc.ravel(), s.random.doc.ravel()]))
        s.titles = {int(d): titles.get(int(d), s.titles.get(int(d), "")) for d in docs if d >= 0}
        s.titles = {d: t for d, t in s.titles.items() if t}
        used = np.zeros(len(s.token_counts), bool)  # a presence mask: linear, unlike unique's sort
        for slots in (s.top, s.random):
            ids = slots.tokens[slots.tokens >= 0]
            used[ids[ids < len(used)]] = True
        new = [int(i) for i in np.flatnonzero(used) if int(i) not in s.vocab]
        s.vocab.update(zip(new, tokenizer.batch_decode([[i] for i in new])))
        s.token_bytes.update(_token_bytes(tokenizer, [i for i in new if "\ufffd" in s.vocab[i]]))
        if c.folder is not None:
            s.save(c.folder)


def _token_bytes(tokenizer, ids: list[int]) -> dict[int, str]:
    """Hex bytes of byte-level BPE tokens (GPT-2's byte-to-character alphabet: SmolLM2, Llama 3); tokens of
    other tokenizers are left out."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    return {i: bytes(byte_of[c] for c in t).hex() for i, t in zip(ids, tokenizer.convert_ids_to_tokens(ids))
            if t and all(c in byte_of for c in t)}


def top_contexts(
    sae: Any,
    *,
    model: Any = "embedded",
    dataset: Any = "embedded-train",
    tokens: int = DEFAULT_TOKENS,
    n_top: int = 20,
    n_random: int = 5,
    window: int | tuple[int, int] = DEFAULT_WINDOW,
    shuffle: bool = True,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    tokenizer: Any = None,
    context: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    device: str | None = None,
    checkpoint_s: float = 120.0,
) -> TopContexts:
    """Stream `tokens` ordinary tokens of `dataset` through `model` (whole documents, in a seeded random
    order unless shuffle=False or the source is a streamed hf: dataset; the last document may pass the
    budget) and keep, for every feature of `sae`, its `n_top` top documents and `n_random`
    random activating tokens with a `window` (total width, or (before, after)) of token activations.

    sae: a SparseAutoencoder (its meta says where it reads) or a spec for `sae.load`. model: "embedded",
    an HF folder / hub name, or a model object with `tokenizer`. out: a folder for the result and its
    checkpoints; resume=True continues from it (same SAE and settings); without it a folder that
    already holds contexts is refused (ContextsError), never overwritten.
    """
    name = getattr(getattr(sae, "meta", None), "name", None) or (str(sae) if isinstance(sae, (str, Path)) else "sae")
    result = collect_contexts({name: sae}, model=model, tokenizer=tokenizer, dataset=dataset, tokens=tokens,
                              n_top=n_top, n_random=n_random, window=window, shuffle=shuffle,
                              out={name: out} if out else None,
                              resume=resume, progress=progress, context=context, batch_size=batch_size, seed=seed,
                              device=device, checkpoint_s=checkpoint_s)
    return result[name]
