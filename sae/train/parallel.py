"""Mixed parallelism on torch.distributed (Llama Scope's recipe): data-parallel activations, tensor-parallel SAEs.

Launch with `torchrun`; `setup(tp)` builds a DeviceMesh ("ddp", "tp") of shape (world / tp, tp):

- every process runs its own model copy on its own shard of the corpus into its own shuffle buffer
  (`ActivationStream(..., shard=(rank, world))`) and contributes batch_size / world rows per step;
- within a "tp" group the per-rank minibatches are all-gathered, so every shard of an SAE sees the
  group's batch, and the SAE's features are split over the group (DTensor placements over "tp":
  W_enc Shard(1), b_enc Shard(0), W_dec Shard(0), b_dec Replicate(); the firing history Shard(0));
  the TopK is exact across shards: local top-k candidates, all-gather of (score, global index), global
  top-k, each shard keeps the entries it owns; partial reconstructions are summed over "tp";
- the "ddp" groups hold replicas of the same shard on different data: gradients are averaged over
  "ddp" and statistics (loss, MSE, EV, L0, batch means) are reduced to the global batch.

`tp = 1` is pure data parallelism (a replicated SAE); one process (`Sharding()`) makes every method the
identity, so the single-process training step runs exactly as written. gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import torch

from sae.errors import SAEError
from sae.model import SparseAutoencoder
from sae.train.kernels import topk_by_bits

# Tensor-parallel placement of each training tensor: the dimension split over "tp" (None = replicated).
SHARD_DIMS: dict[str, int | None] = {"W_enc": 1, "b_enc": 0, "W_dec": 0, "b_dec": None, "threshold": 0, "last_fired": 0}
PARAM_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")


class Sharding:
    """One process: every collective is the identity. `MeshSharding` is the distributed version."""

    world, rank, tp, tp_rank, ddp, ddp_rank = 1, 0, 1, 0, 1, 0
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0 shows progress and writes logs, checkpoints and SAEs."""
        return self.rank == 0

    def layout(self) -> dict[str, int]:
        return {"world": self.world, "ddp": self.ddp, "tp": self.tp}

    def describe(self) -> str:
        return "one process"

    def validate(self, n_features: dict[str, int], batch_size: int) -> None:
        """Refuse layouts that do not split evenly (before any compute)."""

    # ---- data ------------------------------------------------------------------------------------
    def per_rank_source(self, source: Any) -> bool:
        """True when `source` already holds only this rank's data (an ActivationStream with shard=(rank, world))."""
        return False

    def local_rows(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's rows of a global batch (every rank reads the same source)."""
        return batch

    def until_any_ends(self, batches: Iterator[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
        """Per-rank sources may end at different steps: stop everywhere when the first one does."""
        return batches

    def gather_rows(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """All-gather the per-rank minibatches over "tp": every shard sees the group's batch."""
        return batch

    def rank_mean(self, t: torch.Tensor) -> torch.Tensor:
        """Mean over all ranks (per-rank statistics such as mean norms, equal-sized shards)."""
        return t

    def same_everywhere(self, value: int) -> bool:
        return True

    def barrier(self) -> None:
        """Wait for every rank (e.g. until rank 0 has written its files)."""

    # ---- SAE tensors -----------------------------------------------------------------------------
    def shard(self, full: torch.Tensor, dim: int | None) -> torch.Tensor:
        """This rank's part of a full tensor (Shard(dim) over "tp"; dim None = replicated). No communication."""
        return full

    def full(self, local: torch.Tensor, dim: int | None) -> torch.Tensor:
        """The full tensor from every shard's part (all-gather over "tp")."""
        return local

    def local_sae(self, sae: SparseAutoencoder) -> SparseAutoencoder:
        """This rank's features of a full SAE, as an SAE whose tensors are the local shards."""
        return sae

    def full_sae(self, sae: SparseAutoencoder, k: int | None) -> SparseAutoencoder:
        """The whole SAE from every rank's shard (on every rank)."""
        return sae

    # ---- the training step -----------------------------------------------------------------------
    def topk(self, score: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Top-k of score [B, F] over all features: (scores [B, m], local indices [B, m], owned [B, m] or None).

        One process: m = k. With shards, each keeps the m <= k entries per row of its own features
        (m = the most any row has); shorter rows are padded with owned = False and local index 0.
        """
        values, indices = topk_by_bits(score, k)
        return values, indices, None

    def common_width(self, n: int) -> int:
        """The largest n of the tensor-parallel shards (per-shard column counts that `topk` needs equal)."""
        return n

    def sum_partials(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of every shard's partial result (e.g. a reconstruction from its own features), differentiable."""
        return t

    def shard_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over the shards of a per-shard quantity (counts)."""
        return t

    def batch_mean(self, y: torch.Tensor) -> torch.Tensor:
        """Mean over the rows of the global batch (all ddp replicas): y [B, d] -> [d]."""
        return y.mean(0)

    def replica_sums(self, values: Sequence[torch.Tensor]) -> list[float]:
        """Scalars summed over the ddp replicas (the global batch), as Python floats."""
        return [float(v) for v in values]

    def feature_mean(self, t: torch.Tensor) -> float:
        """Mean of a per-feature quantity over all features."""
        return float(t.mean())

    def reduce_grads(self, params: Sequence[torch.Tensor]) -> None:
        """Average gradients over the ddp replicas."""

    def clip_grad_norm_(self, params: Sequence[torch.Tensor], max_norm: float, dims: Sequence[int | None]) -> None:
        torch.nn.utils.clip_grad_norm_(params, max_norm)

    def mark_fired(self, last_fired: torch.Tensor, fired: torch.Tensor, tokens: int) -> None:
        """last_fired[f] = tokens for every local feature f that fired in any replica."""
        last_fired[fired] = tokens

    def close(self) -> None:
        """Leave the process group (if this object created it)."""


class _SumOverShards(torch.autograd.Function):
    """All-reduce (sum) over "tp". Every shard computes the same loss from the sum, so the gradient
    of each partial is the gradient of the sum: the backward is the identity."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, group) -> torch.Tensor:
        import torch.distributed as dist

        out = t.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class MeshSharding(Sharding):
    """A DeviceMesh ("ddp", "tp") of shape (world / tp, tp); rank r is (ddp r // tp, tp r % tp)."""

    def __init__(self, mesh, device: torch.device, owns_group: bool = False):
        import torch.distributed as dist

        self.dist = dist
        self.mesh = mesh
        self.device = device
        self.owns_group = owns_group
        self.world, self.rank = dist.get_world_size(), dist.get_rank()
        self.ddp, self.tp = mesh.shape
        self.ddp_rank, self.tp_rank = mesh.get_local_rank("ddp"), mesh.get_local_rank("tp")
        self.tp_group, self.ddp_group = mesh.get_group("tp"), mesh.get_group("ddp")
        self._gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

    def describe(self) -> str:
        backend = self.dist.get_backend()
        return f"{self.world} processes: ddp {self.ddp} x tp {self.tp} ({backend})"

    def validate(self, n_features: dict[str, int], batch_size: int) -> None:
        if batch_size % self.world:
            raise SAEError(f"the batch size ({batch_size}) must split evenly over {self.world} processes")
        for name, n in n_features.items():
            if n % self.tp:
                raise SAEError(f"{name}: {n} features do not split evenly over {self.tp} tensor-parallel shards (--tp)")

    # ---- data ------------------------------------------------------------------------------------
    def per_rank_source(self, source: Any) -> bool:
        shard = getattr(source, "shard", None)
        if shard is None or tuple(shard) == (0, 1):
            return False
        if tuple(shard) != (self.rank, self.world):
            raise SAEError(f"the activation stream is shard {tuple(shard)}, but this process is rank {self.rank} "
                           f"of {self.world}: give it shard=({self.rank}, {self.world})")
        return True

    def local_rows(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n = next(iter(batch.values())).shape[0] // self.world
        return {h: t[self.rank * n : (self.rank + 1) * n] for h, t in batch.items()}

    def until_any_ends(self, batches: Iterator[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            batch = next(batches, None)
            have = torch.tensor([int(batch is not None)], device=self.device)
            self.dist.all_reduce(have, op=self.dist.ReduceOp.MIN)
            if not int(have):
                return
            yield batch

    def gather_rows(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.tp == 1:
            return batch
        return {h: self._all_gather(t) for h, t in batch.items()}

    def _all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """[n, ...] on every tp rank -> [tp * n, ...] in tp-rank order."""
        t = t.contiguous()
        out = t.new_empty((self.tp * t.shape[0], *t.shape[1:]))
        self._gather(out, t, group=self.tp_group)
        return out

    def rank_mean(self, t: torch.Tensor) -> torch.Tensor:
        out = t.to(self.device, copy=True)
        self.dist.all_reduce(out)
        return (out / self.world).to(t.device)

    def same_everywhere(self, value: int) -> bool:
        t = torch.tensor([value, -value], dtype=torch.long, device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return int(t[0]) == value and -int(t[1]) == value

    def barrier(self) -> None:
        self.dist.barrier()

    # ---- SAE tensors -----------------------------------------------------------------------------
    def shard(self, full: torch.Tensor, dim: int | None) -> torch.Tensor:
        if dim is None or self.tp == 1:
            return full
        # the local chunk of DTensor's Shard(dim) placement (even split), cut here without communication
        return full.tensor_split(self.tp, dim)[self.tp_rank].clone(memory_format=torch.contiguous_format)

    def full(self, local: torch.Tensor, dim: int | None) -> torch.Tensor:
        if dim is None or self.tp == 1:
            return local
        from torch.distributed.tensor import DTensor, Shard

        return DTensor.from_local(local.contiguous(), self.mesh["tp"], [Shard(dim)], run_check=False).full_tensor()

    def local_sae(self, sae: SparseAutoencoder) -> SparseAutoencoder:
        if self.tp == 1:
            return sae
        parts = {name: self.shard(getattr(sae, name).detach(), SHARD_DIMS[name]) for name in (*PARAM_NAMES, "threshold")}
        n_local = sae.n_features // self.tp
        k = min(sae.k, n_local) if sae.activation == "topk" else sae.k  # the step takes k from the schedule
        return SparseAutoencoder.from_weights(**parts, activation=sae.activation, k=k,
                                              topk_by_decoder_norm=sae.topk_by_decoder_norm, meta=sae.meta)

    def full_sae(self, sae: SparseAutoencoder, k: int | None) -> SparseAutoencoder:
        if self.tp == 1:
            return sae
        parts = {name: self.full(getattr(sae, name).detach(), SHARD_DIMS[name]) for name in (*PARAM_NAMES, "threshold")}
        parts["b_dec"] = parts["b_dec"].clone()
        return SparseAutoencoder.from_weights(**parts, activation=sae.activation, k=k,
                                              topk_by_decoder_norm=sae.topk_by_decoder_norm, meta=sae.meta)

    # ---- the training step -----------------------------------------------------------------------
    def topk(self, score: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if self.tp == 1:
            return super().topk(score, k)
        B, n_local = score.shape
        offset = self.tp_rank * n_local
        # Every feature above the global k-th score is among its own shard's top k, so the global
        # top-k of the gathered candidates [B, tp * k] is the top-k over all F features.
        top = score.topk(min(k, n_local), dim=1, sorted=False)  # exact order, negatives included, across shards
        scores = self._gather_columns(top.values)
        index = self._gather_columns(top.indices + offset)
        best = scores.topk(k, dim=1, sorted=False)
        chosen = index.gather(1, best.indices)
        owned = (chosen >= offset) & (chosen < offset + n_local)
        # keep this shard's entries first, as few columns as the fullest row needs (<= k / tp on average)
        m = max(1, int(owned.sum(1).max()))
        keep = owned.to(torch.uint8).sort(dim=1, descending=True, stable=True).indices[:, :m]
        chosen, owned = chosen.gather(1, keep), owned.gather(1, keep)
        return best.values.gather(1, keep), torch.where(owned, chosen - offset, 0), owned

    def _gather_columns(self, t: torch.Tensor) -> torch.Tensor:
        """[B, m] per tp rank -> [B, tp * m], shard-major."""
        B, m = t.shape
        return self._all_gather(t).view(self.tp, B, m).transpose(0, 1).reshape(B, self.tp * m)

    def common_width(self, n: int) -> int:
        if self.tp == 1:
            return n
        t = torch.tensor([n], dtype=torch.long, device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX, group=self.tp_group)
        return int(t)

    def sum_partials(self, t: torch.Tensor) -> torch.Tensor:
        if self.tp == 1:
            return t
        if t.requires_grad and torch.is_grad_enabled():
            return _SumOverShards.apply(t, self.tp_group)
        self.dist.all_reduce(t, group=self.tp_group)
        return t

    def shard_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.tp == 1:
            return t
        out = t.detach().clone()
        self.dist.all_reduce(out, group=self.tp_group)
        return out

    def batch_mean(self, y: torch.Tensor) -> torch.Tensor:
        if self.ddp == 1:
            return y.mean(0)
        total = y.sum(0)
        self.dist.all_reduce(total, group=self.ddp_group)
        return total / (y.shape[0] * self.ddp)

    def replica_sums(self, values: Sequence[torch.Tensor]) -> list[float]:
        if self.ddp == 1:
            return [float(v) for v in values]
        t = torch.stack([torch.as_tensor(v, device=self.device).detach().double() for v in values])
        self.dist.all_reduce(t, group=self.ddp_group)
        return t.tolist()

    def feature_mean(self, t: torch.Tensor) -> float:
        if self.tp == 1:
            return float(t.mean())
        return float(self.shard_sum(t.sum())) / (t.numel() * self.tp)

    def reduce_grads(self, params: Sequence[torch.Tensor]) -> None:
        if self.ddp == 1:
            return
        works = [self.dist.all_reduce(p.grad, group=self.ddp_group, async_op=True) for p in params]
        for w, p in zip(works, params):
            w.wait()
            p.grad.div_(self.ddp)

    def clip_grad_norm_(self, params: Sequence[torch.Tensor], max_norm: float, dims: Sequence[int | None]) -> None:
        """torch's clip_grad_norm_ (coefficient max_norm / (norm + 1e-6), at most 1) on the global norm."""
        sharded = sum(p.grad.double().pow(2).sum() for p, d in zip(params, dims) if d is not None)
        replicated = sum(p.grad.double().pow(2).sum() for p, d in zip(params, dims) if d is None)
        norm = (self.shard_sum(sharded) + replicated).sqrt()
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0).float()
        for p in params:
            p.grad.mul_(coef)

    def mark_fired(self, last_fired: torch.Tensor, fired: torch.Tensor, tokens: int) -> None:
        if self.ddp == 1:
            last_fired[fired] = tokens
            return
        mask = torch.zeros(last_fired.shape[0], dtype=torch.uint8, device=last_fired.device)
        mask[fired] = 1
        self.dist.all_reduce(mask, op=self.dist.ReduceOp.MAX, group=self.ddp_group)
        last_fired[mask.bool()] = tokens

    def close(self) -> None:
        if self.owns_group and self.dist.is_initialized():
            self.dist.destroy_process_group()


def setup(tp: int = 1, *, device: str | torch.device = "cpu", timeout_s: float = 1800) -> Sharding:
    """Join the torchrun process group (gloo on CPU, nccl on CUDA) and build the ("ddp", "tp") mesh.

    Reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). One process
    (no torchrun, or --nproc-per-node 1) gives `Sharding()`, the identity. With device "cuda" every
    process takes the GPU cuda:LOCAL_RANK.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if tp < 1:
        raise SAEError(f"--tp must be at least 1, not {tp}")
    if world == 1:
        if tp > 1:
            raise SAEError(f"--tp {tp} shards each SAE over {tp} processes: launch with "
                           f"torchrun --nproc-per-node {tp} -m sae.train ... --tp {tp}")
        return Sharding()
    if world % tp:
        raise SAEError(f"{world} processes do not split into tensor-parallel groups of --tp {tp}")
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise SAEError(f"distributed training runs on cpu (gloo) or cuda (nccl), not {device!r}")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    mesh = init_device_mesh(dev.type, (world // tp, tp), mesh_dim_names=("ddp", "tp"))
    return MeshSharding(mesh, dev, owns_group=owns)
