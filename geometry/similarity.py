"""Exact top-k cosine between the rows of two matrices, both directions in one streamed pass.

The larger matrix is streamed in row blocks against the smaller one, which stays resident, so the
peak extra memory is one [block, n_small] tile plus the [n, k] results: the dense n_A x n_B matrix is
never formed. Per tile:
  - rows of the tile (streamed side): every candidate is in this tile, so `topk` along the row is final;
  - columns (resident side): a running top-k per column. The first block fills it with an exact
    `topk` of the transposed tile. Later tiles are cut into groups of 8 rows; one max-reduction gives
    every group's column maxima, and only groups whose maximum reaches the column's running k-th best
    are read again and merged (dense `cat` + `topk`, no sort). After the first blocks almost no group
    qualifies, so the merge costs a max-reduction, not a `topk` along a strided axis (the naive way).
With `precision="bf16"` or `"tf32"` (the default on CUDA) the tile is computed in low precision, every
entry within the precision's error bound of a cut is kept, and kept candidates are rescored in fp32:
the result is exact, as with fp32.

Results are cached on disk, keyed by a content hash of both unit-normalised matrices and k
(safetensors, no pickle), so every analysis and the clustering code reuse one pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sae.devices import check_device
from sae.errors import BadNameError, ShapeError
from sae.io import atomic_path, cache_dir

# Worst-case |low-precision dot - fp32 dot| for unit vectors (input rounding; fp32 accumulation).
MARGIN = {"fp32": 0.0, "tf32": 2.0**-9, "bf16": 2.0**-7}
_RESCORE_CHUNK = 1 << 16  # candidate pairs rescored at once


@dataclass
class TopK:
    """For every row, its k best partners: values [n, k] descending (-inf pads), indices [n, k] (-1 pads)."""

    values: torch.Tensor
    indices: torch.Tensor


@dataclass
class Neighbors:
    """Top-k cosine neighbours both ways between the rows of A and B."""

    a_to_b: TopK  # for each row of A, its k nearest rows of B
    b_to_a: TopK
    k: int
    key: str = ""  # cache key (content hash of both matrices + k)
    cached: bool = False  # read from the cache rather than computed

    def swapped(self) -> "Neighbors":
        return Neighbors(self.b_to_a, self.a_to_b, self.k, self.key, self.cached)

    def truncated(self, k: int) -> "Neighbors":
        cut = lambda t: TopK(t.values[:, :k].contiguous(), t.indices[:, :k].contiguous())  # noqa: E731
        return Neighbors(cut(self.a_to_b), cut(self.b_to_a), min(k, self.k), self.key, self.cached)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run many small CPU ops on one thread: on a busy machine, OpenMP's per-op hand-offs between
    threads cost more than the ops (measured here: a 7x slower column merge with 2 threads)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def unit_rows(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """fp32 copy of x with rows scaled to norm 1; all-zero rows stay zero."""
    x = torch.as_tensor(x).detach().to(device="cpu", dtype=torch.float32)
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return x / norms.clamp_min(torch.finfo(torch.float32).tiny)


def content_hash(x: torch.Tensor) -> str:
    """sha256 of a CPU tensor's shape and bytes."""
    x = x.detach().cpu().contiguous()
    h = hashlib.sha256(f"{x.dtype}{tuple(x.shape)}".encode())
    h.update(memoryview(x.view(torch.uint8).numpy() if x.numel() else np.zeros(0, np.uint8)))
    return h.hexdigest()


def default_cache_dir() -> Path:
    """$SAE_CACHE/geometry (default ~/.cache/llama-sae-geometry/geometry), as the rest of the project."""
    return cache_dir("geometry")


def resolve(device=None, precision: str = "auto") -> tuple[torch.device, str]:
    """The device (CUDA when available) and matmul precision (auto: bf16 on CUDA, fp32 on CPU)."""
    device = check_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision not in MARGIN:
        raise BadNameError(f"precision must be one of {', '.join(MARGIN)} or auto, not {precision!r}")
    return device, precision


def top_k_cosine(
    a: torch.Tensor | np.ndarray,
    b: torch.Tensor | np.ndarray,
    k: int = 32,
    *,
    block: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    cache: bool | str | Path = False,
    normalised: bool = False,
) -> Neighbors:
    """Exact top-k cosine neighbours between the rows of a [n_a, d] and b [n_b, d], both ways.

    `normalised=True` promises unit (or zero) rows and skips the copy. `cache` is False, True (the
    default folder) or a folder. `precision` is "fp32", "tf32", "bf16" or "auto" (bf16 on CUDA).
    """
    a, b = (x if normalised and isinstance(x, torch.Tensor) else unit_rows(x) for x in (a, b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ShapeError(f"need two [n, d] matrices with the same d, got {tuple(a.shape)} and {tuple(b.shape)}")
    folder = None if cache is False else default_cache_dir() if cache is True else Path(cache)
    key = ""
    if folder is not None:
        key = f"{content_hash(a)[:24]}-{content_hash(b)[:24]}"
        hit = _cache_read(folder, key, k)
        if hit is not None:
            return hit
    device, precision = resolve(device, precision)
    big_first = a.shape[0] >= b.shape[0]
    q, r = (a, b) if big_first else (b, a)
    q_top, r_top = _stream(q, r, k, block=block, device=device, precision=precision)
    nb = Neighbors(q_top, r_top, k, key) if big_first else Neighbors(r_top, q_top, k, key)
    if folder is not None:
        _cache_write(folder, key, nb)
    return nb


def _stream(q: torch.Tensor, r: torch.Tensor, k: int, *, block, device, precision) -> tuple[TopK, TopK]:
    """Stream q's rows in blocks against resident r; returns (q's top-k among r, r's top-k among q)."""
    n_q, n_r = q.shape[0], r.shape[0]
    k_r, k_q = min(k, n_r), min(k, n_q)  # neighbours per q row, per r row
    margin = MARGIN[precision]
    mm_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    block = block or default_block(n_r, device)
    r32 = r.to(device)
    r_mm = r32.to(mm_dtype)
    q_val = torch.full((n_q, k_r), -torch.inf)
    q_idx = torch.full((n_q, k_r), -1, dtype=torch.long)
    run_val = torch.full((n_r, k_q), -torch.inf, device=device)  # running top-k of each r row
    run_idx = torch.full((n_r, k_q), -1, dtype=torch.long, device=device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        buf = torch.empty(min(block, n_q), n_r, device=device)  # reused: fresh pages cost page faults
        for start in range(0, n_q, block):
            qb = q[start : start + block].to(device)
            tile = buf[: len(qb)]
            if mm_dtype == torch.float32:
                torch.mm(qb, r_mm.T, out=tile)
            else:
                tile.copy_(qb.to(mm_dtype) @ r_mm.T)
            v, i = _row_topk(tile, qb, r32, k_r, margin)
            q_val[start : start + len(qb)], q_idx[start : start + len(qb)] = v.cpu(), i.cpu()
            with one_thread():
                _merge_columns(tile, qb, r32, start, run_val, run_idx, margin)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return TopK(q_val, q_idx), TopK(run_val.cpu(), run_idx.cpu())


def default_block(n_r: int, device: torch.device) -> int:
    """Rows per tile: about 2^26 tile entries on CPU (256 MiB; keeps MKL's GEMM near its peak), 2^28 on GPU."""
    budget = 1 << (28 if device.type == "cuda" else 26)
    return int(min(max(budget // max(n_r, 1), 256), 8192 if device.type == "cuda" else 2048))


def _rescore(qb: torch.Tensor, r: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """fp32 cosines of the pairs (qb[i], r[j])."""
    out = torch.empty(len(i), device=qb.device)
    for s in range(0, len(i), _RESCORE_CHUNK):
        sl = slice(s, s + _RESCORE_CHUNK)
        out[sl] = (qb[i[sl]] * r[j[sl]]).sum(-1)
    return out


def _row_topk(tile, qb, r32, k, margin):
    """Top-k of every tile row; with a margin, all entries near the k-th best are rescored in fp32."""
    v, i = tile.topk(k, dim=1)
    if margin == 0:
        return v, i
    rows, cols = (tile >= (v[:, -1:] - 2 * margin)).nonzero(as_tuple=True)
    return segment_topk(rows, _rescore(qb, r32, rows, cols), cols, len(tile), k)


def _merge_columns(tile, qb, r32, start, run_val, run_idx, margin, group=8):
    """Merge this tile's entries into the running top-k of every column (= every row of r)."""
    bs, n_r = tile.shape
    k = run_val.shape[1]
    bound = run_val[:, -1] - margin  # an entry must beat the running k-th best to enter
    if bs >= k and bool(torch.isinf(bound).any()):  # first block: the tile's own k-th best per column
        v, i = tile.T.contiguous().topk(k, dim=1)  # faster than a topk along the strided axis
        if margin == 0 and bool(torch.isinf(bound).all()):
            run_val[:], run_idx[:] = v, i + start
            return
        bound = torch.maximum(bound, v[:, -1] - 2 * margin)
    # Groups of g rows; only groups whose maximum reaches the bound are read again.
    g = min(group, bs)
    n_full = bs // g
    gmax = tile[: n_full * g].view(n_full, g, n_r).amax(1)
    if n_full * g < bs:
        gmax = torch.cat([gmax, tile[n_full * g :].amax(0, keepdim=True)])
    hot = gmax >= bound
    n_hot = hot.sum(0)
    touched = n_hot.nonzero().squeeze(1)
    if len(touched) == 0:
        return
    col, grp = hot.T.nonzero(as_tuple=True)  # ordered by column
    first = torch.cumsum(n_hot, 0) - n_hot  # index of each column's first hot group
    slot = torch.arange(len(col), device=tile.device) - first[col]  # hot-group rank within its column
    offs = torch.arange(g, device=tile.device)
    rows = grp[:, None] * g + offs  # [pairs, g]
    inside = rows < bs  # the last group may be short
    rows = rows.clamp_max(bs - 1)
    vals = torch.take(tile, rows * n_r + col[:, None])
    keep = inside & (vals >= bound[col][:, None])
    if margin:
        vals[keep] = _rescore(qb, r32, rows[keep], col[:, None].expand_as(keep)[keep])
    vals = torch.where(keep, vals, -torch.inf)
    # Dense [touched, hot groups x g] candidates beside the running top-k, then one row-wise topk.
    width = int(n_hot.max()) * g
    at = ((torch.cumsum(n_hot > 0, 0) - 1)[col] * width + slot * g)[:, None] + offs
    cand_v = torch.full((len(touched), width), -torch.inf, device=tile.device)
    cand_i = torch.full((len(touched), width), -1, dtype=torch.long, device=tile.device)
    cand_v.view(-1)[at] = vals
    cand_i.view(-1)[at] = rows + start
    v, i = torch.cat([run_val[touched], cand_v], 1), torch.cat([run_idx[touched], cand_i], 1)
    top_v, top_at = v.topk(k, dim=1)
    run_val[touched], run_idx[touched] = top_v, i.gather(1, top_at)


def segment_topk(seg: torch.Tensor, val: torch.Tensor, idx: torch.Tensor, n_seg: int, k: int):
    """Top-k (val, idx) within each segment id in [0, n_seg): returns [n_seg, k] values and indices."""
    out_v = torch.full((n_seg, k), -torch.inf, device=val.device)
    out_i = torch.full((n_seg, k), -1, dtype=torch.long, device=val.device)
    live = val > -torch.inf
    seg, val, idx = seg[live], val[live], idx[live]
    # One sort by (segment ascending, value descending); cosines lie in [-1, 1].
    order = torch.argsort(seg.double() * 4 - val.double())
    seg, val, idx = seg[order], val[order], idx[order]
    rank = torch.arange(len(seg), device=seg.device) - torch.searchsorted(seg, seg)
    keep = rank < k
    out_v[seg[keep], rank[keep]] = val[keep]
    out_i[seg[keep], rank[keep]] = idx[keep]
    return out_v, out_i


# ---- cache ------------------------------------------------------------------------------------------
def _cache_read(folder: Path, key: str, k: int) -> Neighbors | None:
    """A cached result for this pair with at least k neighbours (either order), cut to k."""
    a_key, b_key = key.split("-")
    for name, swap in ((f"{a_key}-{b_key}", False), (f"{b_key}-{a_key}", True)):
        for path in sorted(folder.glob(f"{name}-k*.safetensors")):
            kk = int(path.stem.rsplit("-k", 1)[1])
            if kk < k:
                continue
            t = load_file(path)
            nb = Neighbors(TopK(t["a_val"], t["a_idx"]), TopK(t["b_val"], t["b_idx"]), kk, key, cached=True)
            nb = nb.swapped() if swap else nb
            nb.key = key
            return nb.truncated(k)
    return None


def _cache_write(folder: Path, key: str, nb: Neighbors) -> None:
    tensors = {"a_val": nb.a_to_b.values, "a_idx": nb.a_to_b.indices, "b_val": nb.b_to_a.values, "b_idx": nb.b_to_a.indices}
    with atomic_path(folder / f"{key}-k{nb.k}.safetensors") as tmp:
        save_file({n: t.contiguous() for n, t in tensors.items()}, tmp)
