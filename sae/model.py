"""SparseAutoencoder: one dictionary, its activation function, and the transforms that keep its outputs.

Weights follow SAELens names and shapes, so export is a rename:
    W_enc [d_in, F], b_enc [F], W_dec [F, d_out] (row i = feature i's direction), b_dec [d_out],
    threshold [F] (used by `jumprelu` only).
After loading, an SAE reads raw model activations and returns raw units.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sae.errors import FormatError, ShapeError

Activation = Literal["topk", "relu", "jumprelu"]
ACTIVATIONS = ("topk", "relu", "jumprelu")


@dataclass
class SAEMeta:
    """What an SAE reads and where it came from. Every field is optional; files keep what they know."""

    name: str | None = None  # e.g. "L15R-8x"
    model: str | None = None  # the language model it reads, e.g. "meta-llama/Llama-3.1-8B"
    layer: int | None = None
    position: str | None = None  # R | A | M | TC
    hook_in: str | None = None  # TransformerLens-style hook names, as Llama Scope's files write them
    hook_out: str | None = None
    dataset_norm_in: float | None = None  # mean activation norm of the training data, raw units
    dataset_norm_out: float | None = None
    source: str | None = None  # the file or name it was loaded from
    provenance: dict[str, Any] = field(default_factory=dict)  # training config, original hyperparams

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SAEMeta":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


class SparseCode(NamedTuple):
    """Sparse feature activations: values and feature indices, both [..., m]; padding has value 0."""

    values: torch.Tensor
    indices: torch.Tensor


class SparseAutoencoder(nn.Module):
    """A TopK, ReLU (vanilla) or JumpReLU sparse autoencoder; `d_in != d_out` makes it a transcoder.

    `topk` is the Llama Scope variant: features are ranked by ReLU(pre) x ||W_dec row|| and keep their
    unscaled ReLU values, so the chosen set does not change when decoder rows are rescaled.
    """

    def __init__(
        self,
        d_in: int,
        n_features: int,
        *,
        d_out: int | None = None,
        activation: Activation = "topk",
        k: int | None = 50,
        threshold: float | torch.Tensor = 0.0,
        topk_by_decoder_norm: bool = True,
        meta: SAEMeta | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise FormatError(f"activation must be one of {ACTIVATIONS}, not {activation!r}")
        if activation == "topk" and not (k and 0 < k <= n_features):
            raise ShapeError(f"TopK needs 0 < k <= n_features ({n_features}), got k={k}")
        d_out = d_in if d_out is None else d_out
        kw = {"dtype": dtype, "device": device}
        self.W_enc = nn.Parameter(torch.zeros(d_in, n_features, **kw))
        self.b_enc = nn.Parameter(torch.zeros(n_features, **kw))
        self.W_dec = nn.Parameter(torch.zeros(n_features, d_out, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_out, **kw))
        self.register_buffer("threshold", torch.zeros(n_features, **kw).add_(threshold))
        self.activation: Activation = activation
        self.k = k
        self.topk_by_decoder_norm = topk_by_decoder_norm
        self.meta = meta or SAEMeta()

    @classmethod
    def from_weights(
        cls,
        W_enc: torch.Tensor,
        b_enc: torch.Tensor,
        W_dec: torch.Tensor,
        b_dec: torch.Tensor,
        threshold: float | torch.Tensor = 0.0,
        **kwargs: Any,
    ) -> "SparseAutoencoder":
        """Wrap existing tensors without copying: W_enc [d_in, F], b_enc [F], W_dec [F, d_out], b_dec [d_out]."""
        (d_in, n), d_out = W_enc.shape, W_dec.shape[-1]
        expected = {"b_enc": (n,), "W_dec": (n, d_out), "b_dec": (d_out,)}
        for key, t in {"b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}.items():
            if tuple(t.shape) != expected[key]:
                raise ShapeError(f"{key} has shape {list(t.shape)}, expected {list(expected[key])} for W_enc {[d_in, n]}")
        sae = cls(d_in, n, d_out=d_out, dtype=W_enc.dtype, device="meta", **kwargs)
        sae.W_enc, sae.b_enc = nn.Parameter(W_enc), nn.Parameter(b_enc.to(W_enc.dtype))
        sae.W_dec, sae.b_dec = nn.Parameter(W_dec.to(W_enc.dtype)), nn.Parameter(b_dec.to(W_enc.dtype))
        sae.threshold = torch.zeros(n, dtype=W_enc.dtype, device=W_enc.device).add_(threshold)
        return sae

    # ---- shapes -------------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_out(self) -> int:
        return self.W_dec.shape[1]

    @property
    def n_features(self) -> int:
        return self.W_enc.shape[1]

    def extra_repr(self) -> str:
        act = f"topk, k={self.k}" if self.activation == "topk" else self.activation
        name = f"{self.meta.name}: " if self.meta.name else ""
        return f"{name}d_in={self.d_in}, n_features={self.n_features}, d_out={self.d_out}, {act}"

    # ---- encode / decode ----------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.d_in:
            raise ShapeError(f"input has width {x.shape[-1]} but this SAE reads d_in={self.d_in}")

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., d_in] -> pre-activations [..., F]."""
        self._check_input(x)
        return torch.addmm(self.b_enc, x.reshape(-1, self.d_in), self.W_enc).reshape(*x.shape[:-1], -1)

    def decoder_norms(self) -> torch.Tensor:
        """||W_dec row i|| for every feature: [F]."""
        return torch.linalg.vector_norm(self.W_dec, dim=1)

    def _topk_code(self, pre: torch.Tensor) -> SparseCode:
        score = pre.relu()
        if self.topk_by_decoder_norm:
            score.mul_(self.decoder_norms())
        idx = score.topk(self.k, dim=-1, sorted=False).indices
        return SparseCode(pre.gather(-1, idx).clamp_min(0), idx)

    def _threshold_code(self, pre: torch.Tensor) -> SparseCode:
        # ReLU(pre) x (pre > theta) is pre wherever pre > max(theta, 0): one mask, then its non-zeros in
        # row order in each row's first slots (no dense activation tensor, no top-m sort)
        floor = self.threshold.clamp_min(0) if self.activation == "jumprelu" else torch.zeros(())
        flat = pre.reshape(-1, pre.shape[-1])
        mask = flat > floor.to(flat.device, flat.dtype)  # [n, F]
        counts = mask.sum(-1)
        m = max(int(counts.max()) if counts.numel() else 0, 1)
        rows, cols = mask.nonzero(as_tuple=True)
        slot = torch.arange(rows.numel(), device=pre.device) - (counts.cumsum(0) - counts)[rows]
        values = flat.new_zeros(flat.shape[0], m)
        idx = torch.zeros(flat.shape[0], m, dtype=torch.long, device=pre.device)
        values[rows, slot] = flat[rows, cols]
        idx[rows, slot] = cols
        # the other slots point at inactive features, distinct within the row (scatter_ stays safe): a row
        # with c active features has at least m - c inactive ones among its first min(F, 2m) features
        free = ~mask[:, : min(mask.shape[1], 2 * m)]
        rank = free.cumsum(1) - 1
        r, c = (free & (rank < (m - counts)[:, None])).nonzero(as_tuple=True)
        idx[r, counts[r] + rank[r, c]] = c
        return SparseCode(values.reshape(*pre.shape[:-1], m), idx.reshape(*pre.shape[:-1], m))

    def _dense_acts(self, pre: torch.Tensor) -> torch.Tensor:
        if self.activation == "relu":
            return pre.relu()
        return pre.relu() * (pre > self.threshold)  # jumprelu

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., d_in] -> dense feature activations [..., F]."""
        pre = self.pre_acts(x)
        if self.activation == "topk":
            values, idx = self._topk_code(pre)
            return torch.zeros_like(pre).scatter_(-1, idx, values)
        return self._dense_acts(pre)

    def encode_sparse(self, x: torch.Tensor) -> SparseCode:
        """x: [..., d_in] -> SparseCode of [..., m] values and indices, never a dense [..., F] output.

        TopK gives m = k. For relu/jumprelu, m is the largest number of active features in any row and
        shorter rows are padded with value 0 at features inactive in the row (a row's indices are distinct).
        """
        return self.sparse_code(self.pre_acts(x))

    def sparse_code(self, pre: torch.Tensor) -> SparseCode:
        """Pre-activations [..., F] (left unchanged, so several inference modes can share them) -> the
        SparseCode of this SAE's activation, as `encode_sparse` returns it."""
        if self.activation == "topk":
            return self._topk_code(pre)
        return self._threshold_code(pre)

    def decode(self, f: torch.Tensor | SparseCode) -> torch.Tensor:
        """Dense f [..., F] or a SparseCode -> reconstruction [..., d_out]."""
        if isinstance(f, tuple):
            return self.decode_sparse(*f)
        if f.shape[-1] != self.n_features:
            raise ShapeError(f"features have width {f.shape[-1]}, this SAE has {self.n_features}")
        return torch.addmm(self.b_dec, f.reshape(-1, self.n_features), self.W_dec).reshape(
            *f.shape[:-1], -1
        )

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """values, indices: [..., m] -> [..., d_out] as a gather-and-sum over m decoder rows."""
        lead = values.shape[:-1]
        m = values.shape[-1]
        out = F.embedding_bag(
            indices.reshape(-1, m), self.W_dec, per_sample_weights=values.reshape(-1, m), mode="sum"
        )
        return (out + self.b_dec).reshape(*lead, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., d_in] -> reconstruction [..., d_out]."""
        if self.activation == "topk":
            return self.decode_sparse(*self.encode_sparse(x))
        return self.decode(self.encode(x))

    def feature_directions(self) -> torch.Tensor:
        """Unit-norm decoder rows [F, d_out]; an all-zero row stays zero."""
        return self.W_dec / self.decoder_norms().clamp_min(torch.finfo(self.W_dec.dtype).tiny)[:, None]

    @torch.no_grad()
    def mean_l0(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> float:
        """Mean number of active features per token. x: [..., d_in]; mask [...] keeps True positions.

        Exclude BOS/EOS/pad positions with `mask`: at BOS, Llama Scope SAEs fire ~17,000 features.
        """
        l0 = (self.encode_sparse(x).values > 0).sum(-1).float()
        if mask is not None:
            l0 = l0[mask]
        return float(l0.mean())

    # ---- output-preserving transforms ---------------------------------------------------------
    @torch.no_grad()
    def scale_features(self, c: float | torch.Tensor) -> "SparseAutoencoder":
        """Multiply every feature's activation by c ([F] or scalar), dividing its decoder row by c.

        Outputs are unchanged for all three activations (TopK ranks by activation x decoder norm).
        """
        c = torch.as_tensor(c, dtype=self.W_enc.dtype, device=self.W_enc.device)
        self.W_enc.mul_(c)
        self.b_enc.mul_(c)
        self.threshold.mul_(c)
        self.W_dec.div_(c[:, None] if c.ndim else c)
        return self

    @torch.no_grad()
    def set_unit_decoder_norms(self) -> "SparseAutoencoder":
        """Rescale so every decoder row has norm 1 (all-zero rows are left alone)."""
        n = self.decoder_norms()
        return self.scale_features(torch.where(n > 0, n, torch.ones_like(n)))

    @torch.no_grad()
    def fold_scales(self, s_in: float, s_out: float) -> "SparseAutoencoder":
        """Fold input/output normalisation into the weights (Llama Scope's convention).

        Before: the SAE reads s_in * x and predicts s_out * y. After: it reads raw x and returns raw y;
        W_enc is unchanged, so feature activations shrink by s_in (b_enc, threshold /= s_in,
        W_dec *= s_in / s_out, b_dec /= s_out). Transcoders use separate s_in and s_out.
        """
        self.b_enc.div_(s_in)
        self.threshold.div_(s_in)
        self.W_dec.mul_(s_in / s_out)
        self.b_dec.div_(s_out)
        return self
