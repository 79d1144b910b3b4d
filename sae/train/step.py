"""One SAE's training state and step (`SAETrainer`): the hand-written TopK forward and backward (with
AuxK), the autograd ReLU + L1 step, Adam, the feature-firing history and the logged statistics.

The TopK step never builds a dense [batch, F] gradient: pre-activations are one dense matmul (the
floor), then only the k selected entries per token take part in decoding (a gather-sum over decoder
rows) and in the backward pass (the encoder gradient is x^T G with G sparse, k entries per row).
Every collective goes through `sharding` (the identity in one process).
"""

from __future__ import annotations

import math

import torch

from sae.eval.metrics import explained_variance
from sae.model import SparseAutoencoder
from sae.precision import resolve_dtype
from sae.train.config import SAESpec, TrainConfig, TrainingError
from sae.train.kernels import csr, csr_matmul, exact_pre, feature_rows, gather_sum, owned_only, sampled_dot
from sae.train.parallel import PARAM_NAMES, SHARD_DIMS, Sharding


class SAETrainer:
    """One SAE's training state: the SAE, its optimiser, feature-firing history and log.

    With a tensor-parallel `sharding`, `sae` holds this rank's features only (`Sharding.local_sae`).
    """

    def __init__(self, spec: SAESpec, sae: SparseAutoencoder, config: TrainConfig, scale_in: float, scale_out: float,
                 sharding: Sharding | None = None):
        self.spec, self.sae, self.config = spec, sae, config
        self.sh = sharding or Sharding()
        self.n_features = sae.n_features * self.sh.tp  # over all shards
        self.scale_in, self.scale_out = scale_in, scale_out
        self.params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]  # in the SAE's own layout
        self.opt_params = list(self.params)  # what Adam updates: the same memory
        if sae.activation == "topk":
            # W_enc [d, F] is kept feature-major ([F, d] in memory) and Adam updates that contiguous [F, d]
            # view: the sparse product yields the gradient as [F, d] (no transpose of [d, F] per step), the
            # sampled product reads W_enc 2-7x faster in this order, and Adam's fused kernel stays fast.
            sae.W_enc.data = sae.W_enc.data.T.contiguous().T
            self.opt_params[0] = torch.nn.Parameter(sae.W_enc.data.T)
        fused = torch.device(config.device).type in ("cpu", "cuda")
        self.opt = torch.optim.Adam(
            self.opt_params, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps, fused=fused
        )
        self.score_dtype = resolve_dtype(config.score_dtype, sae.W_enc.device)
        self.last_fired = torch.full((sae.n_features,), -1, dtype=torch.long, device=sae.W_enc.device)
        self.acc: dict[str, tuple[float, int]] = {}

    # ---- the step ---------------------------------------------------------------------------------
    def step(self, x: torch.Tensor, y: torch.Tensor, step: int, tokens_before: int) -> dict[str, float]:
        """One optimiser step on x [B, d_in] -> y [B, d_out] (this rank's rows); returns the step's statistics."""
        cfg = self.config
        lr = cfg.lr_at(step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        if self.sae.activation == "topk":
            k = cfg.k_at(step, self.spec, self.sae.d_in, self.n_features)
            loss, stats, fired = self.topk_grads(x, y, k, tokens_before)
        else:
            k = 0
            loss, stats, fired = self.relu_grads(x, y, cfg.l1_at(step, self.spec))
        if not math.isfinite(loss):
            raise TrainingError(
                f"{self.spec.name}: the loss became {loss} at step {step}; training stopped and the last "
                "good checkpoint (if any) is intact. Try a lower --lr or --grad-clip."
            )
        self.sh.reduce_grads(self.opt_params)
        if cfg.grad_clip > 0:
            self.sh.clip_grad_norm_(self.opt_params, cfg.grad_clip, [SHARD_DIMS[n] for n in PARAM_NAMES])
        self.opt.step()
        self.sh.mark_fired(self.last_fired, fired, tokens_before + x.shape[0] * self.sh.ddp)
        stats.update(loss=loss, lr=lr, k=k)
        return stats

    def recon_loss(self, e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The reconstruction loss (autograd-friendly; the TopK step uses its closed-form gradient)."""
        if self.config.loss == "batch-norm-mse":  # released code: per token / ||y - mean_batch(y)||
            return (e.pow(2) / _token_scale(y, self.sh.batch_mean(y))).mean()
        return e.pow(2).mean()

    @torch.no_grad()
    def topk_grads(self, x: torch.Tensor, y: torch.Tensor, k: int,
                   tokens_before: int) -> tuple[float, dict[str, float], torch.Tensor]:
        """Forward and backward of the TopK SAE by hand, touching only the k selected features per token:
        x [B, d_in], y [B, d_out] -> (loss, statistics, the local features that fired); gradients in `.grad`.

        loss = mean((y_hat - y)^2), y_hat = sum_j v_j W_dec[idx_j] + b_dec, v = ReLU(pre[idx]).
        Gradients: dL/dy_hat = dy; b_dec: sum dy; v: <W_dec[idx_j], dy> (sampled, never [B, F]);
        W_dec[f]: sum over (token, slot) choosing f of v * dy; pre = v's grad where pre > 0;
        W_enc = x^T G and b_enc = column sums of G, with G [B, F] holding k entries per row.
        Sharded, every rank selects the global top k, keeps the entries of its own features (the others
        get value 0, so they add nothing to the sum or the gradients) and the partial y_hat are summed.
        """
        sae, sh = self.sae, self.sh
        W_enc, b_enc, W_dec, b_dec = self.params
        B, F_ = x.shape[0], sae.n_features
        # Rank by ReLU(pre) x ||W_dec row||: fold the norms into the matmul instead of a pass over
        # [B, F]; the order of positive scores is the same and ties at zero decode to nothing.
        # The ranking matmul may run in bfloat16 (the paper trains in bf16; ~2x on CPUs with AVX512-BF16):
        # then only the choice of features is bf16, their pre-activations are recomputed in fp32.
        n = W_dec.norm(dim=1).clamp_min(1e-12) if sae.topk_by_decoder_norm else torch.ones_like(b_enc)
        low = self.score_dtype
        score = torch.addmm((b_enc * n).to(low), x.to(low), (W_enc * n).to(low))
        top_scores, idx, owned = sh.topk(score, k)
        pre = owned_only(exact_pre(idx, top_scores, n, x, W_enc, b_enc, low), owned)
        del score
        values = pre.clamp_min(0)
        e = sh.sum_partials(gather_sum(idx, W_dec, values)).add_(b_dec).sub_(y)  # y_hat - y
        numel = e.numel()
        y_mean = sh.batch_mean(y)
        recon = _recon_sums(e, y, y_mean)
        if self.config.loss == "batch-norm-mse":
            c = _token_scale(y, y_mean)
            loss_sum = (e.pow(2) / c).sum()
            dy = e * (2 / numel) / c
        else:
            loss_sum = recon[0]
            dy = e * (2 / numel)
        active = values > 0
        # one reduction over the replicas for the loss, the statistics and L0 (numel: the global batch)
        loss_sum, *sums, n_active = sh.replica_sums([loss_sum, *recon, sh.shard_sum(active.sum())])
        numel *= sh.ddp
        loss = loss_sum / numel
        stats = _recon_stats(*sums, numel)

        # dL/dpre at the selected entries, then both weight gradients through one [F, B] CSR pattern
        g = (sampled_dot(idx, dy, W_dec) * (pre > 0)).reshape(-1)
        feats = idx.reshape(-1)
        crow, col, order = feature_rows(feats, torch.arange(B, device=x.device).repeat_interleave(idx.shape[1]), F_)
        W_dec.grad = csr_matmul(csr(crow, col, values.reshape(-1)[order], (F_, B)), dy, W_dec.grad)
        enc = self.opt_params[0]  # [F, d]: W_enc's memory order
        enc.grad = csr_matmul(csr(crow, col, g[order], (F_, B)), x, enc.grad)
        b_enc.grad = torch.zeros_like(b_enc).index_add_(0, feats, g)
        b_dec.grad = dy.sum(0)
        aux = self._auxk(n, x, e, tokens_before)
        if aux is not None:
            stats["aux"] = aux
            loss += self.config.aux_coef * aux
        stats["l0"] = n_active / (B * sh.ddp)
        return loss, stats, idx[active]

    def _auxk(self, n: torch.Tensor, x: torch.Tensor, e: torch.Tensor, tokens_before: int) -> float | None:
        """AuxK (Gao et al.): the top aux_k dead features of each token reconstruct its residual -e [B, d].

        Adds its gradients to the `.grad` of the step and returns the aux loss, or None while no feature is
        dead. Dense over the dead features only (n [F]: decoder norms): five [B, d] x [d, n_dead] matmuls
        in the score dtype (an auxiliary loss: bf16 is precise enough), far cheaper than ranking, gathering
        and sampling aux_k of all F features per token while the dead are a small part of the dictionary,
        as AuxK keeps them."""
        cfg, sh = self.config, self.sh
        if cfg.aux_k <= 0 or tokens_before < cfg.dead_tokens:
            return None
        is_dead = (tokens_before - self.last_fired) > cfg.dead_tokens  # never fired: last = -1
        n_dead = int(sh.shard_sum(is_dead.sum()))  # on the features' device (a collective under tp)
        dead = is_dead.nonzero().squeeze(1)
        if not n_dead:
            return None
        _, b_enc, W_dec, _ = self.params
        # every tensor-parallel shard ranks the same number of columns (padding: feature 0 at value 0)
        width = sh.common_width(dead.numel())
        valid = torch.arange(width, device=x.device) < dead.numel()
        cols = torch.nn.functional.pad(dead, (0, width - dead.numel()))
        enc, low = self.opt_params[0], self.score_dtype  # W_enc as [F, d]
        # ranked in fp32 from a product in the score dtype; the chosen values and their gradient [B, width]
        # are made in the score dtype, not converted to it before each product
        x_lo, W_rows = x.to(low), W_dec[cols].to(low)  # [B, d], [width, d]
        pre = torch.mm(x_lo, enc[cols].to(low).T).float().add_(b_enc[cols]).mul_(valid)  # [B, width]
        _, pick, owned = sh.topk(pre * n[cols], min(cfg.aux_k, n_dead))  # [B, m]
        picked = pre.gather(1, pick).clamp_min_(0)
        if owned is not None:  # other shards' picks add 0 at column 0
            picked.mul_(owned)
        values = x_lo.new_zeros(pre.shape).scatter_add_(1, pick, picked.to(low))  # [B, width]: aux_k per token at most
        residual = -e
        diff = sh.sum_partials(torch.mm(values, W_rows).float()) - residual  # [B, d], across shards in fp32
        denom, diff_sq = sh.replica_sums([(residual - sh.batch_mean(residual)).pow(2).sum(), diff.pow(2).sum()])
        denom = denom or 1e-12
        # x ddp: the replicas' gradients are averaged, this term is a sum over the global batch
        d_aux = (diff * (2 * cfg.aux_coef * sh.ddp / denom)).to(low)
        g = torch.mm(d_aux, W_rows.T).masked_fill_(values == 0, 0)  # dL/dpre [B, width]
        W_dec.grad.index_add_(0, cols, torch.mm(values.T, d_aux).float())
        enc.grad.index_add_(0, cols, torch.mm(g.T, x_lo).float())
        b_enc.grad.index_add_(0, cols, g.sum(0, dtype=torch.float32))
        return diff_sq / denom

    def relu_grads(self, x: torch.Tensor, y: torch.Tensor, lam: float) -> tuple[float, dict[str, float], torch.Tensor]:
        """The vanilla step by autograd: MSE + lam x L1 weighted by decoder-row norms (as topk_grads returns)."""
        sh = self.sh
        W_enc, b_enc, W_dec, b_dec = self.params
        # the matmuls forward and backward in the score dtype (bf16 where fast, as the paper trains);
        # the weights, their gradients and the losses stay fp32
        low = self.score_dtype
        with torch.autocast(x.device.type, dtype=low, enabled=low != torch.float32):
            f = torch.addmm(b_enc, x, W_enc).relu()
            # partial sums cross the shards in fp32
            y_hat = sh.sum_partials((f @ W_dec).float()) + b_dec if sh.tp > 1 else torch.addmm(b_dec, f, W_dec)
            l1 = sh.sum_partials((f @ W_dec.norm(dim=1)).float()).mean()  # L1 weighted by decoder-row norms
        e = y_hat.float() - y
        mse = self.recon_loss(e, y)
        loss = mse + lam * l1
        for p in self.params:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            active = f > 0
            loss, l1, *sums, n_active = sh.replica_sums(
                [loss.detach(), l1.detach(), *_recon_sums(e.detach(), y, sh.batch_mean(y)), sh.shard_sum(active.sum())]
            )
            stats = _recon_stats(*sums, e.numel() * sh.ddp)
            stats["l0"] = n_active / (x.shape[0] * sh.ddp)
            stats["l1"] = l1 / sh.ddp
            fired = active.any(0).nonzero().squeeze(1)
        return loss / sh.ddp, stats, fired

    def in_sae_layout(self, i: int, t: torch.Tensor) -> torch.Tensor:
        """A tensor shaped like Adam's i-th parameter (e.g. its state), viewed as the SAE's i-th tensor."""
        return t if self.opt_params[i] is self.params[i] else t.T

    # ---- metrics ------------------------------------------------------------------------------------
    def alive_fraction(self, tokens: int) -> float:
        """Fraction of all features that fired within the last `alive_window` tokens."""
        window = self.config.alive_window
        fired = self.last_fired >= 0
        recent = fired & (tokens - self.last_fired <= window)
        return self.sh.feature_mean(recent.float())

    def accumulate(self, stats: dict[str, float]) -> None:
        """Add one step's statistics to the means `flush` returns."""
        for key, v in stats.items():
            total, n = self.acc.get(key, (0.0, 0))
            self.acc[key] = (total + float(v), n + 1)

    def flush(self) -> dict[str, float]:
        """Means since the last flush (a key present in only some steps, like aux, over those steps)."""
        out = {key: total / n for key, (total, n) in self.acc.items()}
        self.acc = {}
        return out


def _token_scale(y: torch.Tensor, y_mean: torch.Tensor) -> torch.Tensor:
    return (y - y_mean).norm(dim=-1, keepdim=True).clamp_min(1e-8)


def _recon_sums(e: torch.Tensor, y: torch.Tensor, y_mean: torch.Tensor) -> list[torch.Tensor]:
    """The sums behind _recon_stats: squared error, centred and uncentred squared norm of the target."""
    return [_sum_sq(e), _sum_sq(y - y_mean), _sum_sq(y)]


def _sum_sq(t: torch.Tensor) -> torch.Tensor:
    flat = t.reshape(-1)
    return torch.dot(flat, flat)  # no [B, d] temporary, unlike t.pow(2).sum()


def _recon_stats(sq: float, var: float, yy: float, numel: int) -> dict[str, float]:
    return {
        "mse": sq / numel,
        "ev": explained_variance(sq, var),  # centred, pooled (Gemma Scope / SAELens)
        "ev_uncentred": explained_variance(sq, yy),  # the paper's Eq. 6
    }
