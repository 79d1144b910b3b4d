"""Is a wide feature the same, a refinement, a combination, or new? Geometry and function.

- `decompose`: greedy non-negative decomposition of each B row over at most `max_atoms` of its top
  candidate A rows (OMP with an exact non-negative least-squares refit at each step). It works in the
  Gram space of the candidates: the cosines to the target are already known from the top-k pass, so
  only the candidates' Gram matrix is computed.
- `classify`: same / refined / composite / novel / ambiguous, by the rule of docs/methods.md.
- `insertion_test`: Leask et al.'s test, closed form: inserting B's latent j into A changes the MSE
  on cached activations by mean_x[a_j^2 ||d_j||^2 - 2 a_j <x - x_hat_A, d_j>]; novel iff < 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
import torch

from geometry.options import GeometryError, Options
from geometry.similarity import one_thread

CLASSES = ("same", "refined", "composite", "novel", "ambiguous")


@dataclass
class Decomposition:
    atoms: torch.Tensor  # [n, T] rows of the dictionary, -1 where unused
    weights: torch.Tensor  # [n, T] non-negative
    r2: torch.Tensor  # [n] 1 - ||l - sum w_i s_i||^2 (the target is a unit vector)
    r2_single: torch.Tensor  # [n] the best single atom: max(cos, 0)^2


def decompose(
    dictionary: torch.Tensor,
    cand_idx: torch.Tensor,
    cand_cos: torch.Tensor,
    max_atoms: int = 4,
    *,
    chunk: int | None = None,
) -> Decomposition:
    """dictionary [n_a, d] unit rows; cand_idx / cand_cos [n, K]: each target's candidate rows (-1 pads)
    and their cosines to the target, best first."""
    n, K = cand_idx.shape
    T = min(max_atoms, K)
    out = Decomposition(
        torch.full((n, T), -1, dtype=torch.long), torch.zeros(n, T), torch.zeros(n), cand_cos[:, 0].clamp_min(0) ** 2
    )
    chunk = chunk or max(64, (1 << 26) // max(K * dictionary.shape[1], 1))  # C: about 256 MiB
    buf = torch.empty(min(chunk, n) * K, dictionary.shape[1], dtype=dictionary.dtype)
    for s in range(0, n, chunk):
        idx, c = cand_idx[s : s + chunk], cand_cos[s : s + chunk]
        valid = idx >= 0
        C = torch.index_select(dictionary, 0, idx.clamp_min(0).reshape(-1), out=buf[: idx.numel()])
        C = C.view(len(idx), K, -1)  # [m, K, d]; index_select into a reused buffer: 6x faster than C[idx]
        G = torch.bmm(C, C.transpose(1, 2))
        with one_thread():
            sel, w, r2 = _greedy_nn(G, torch.where(valid, c, 0.0), valid, T)
        out.atoms[s : s + chunk] = torch.where(sel >= 0, idx.gather(1, sel.clamp_min(0)), -1)
        out.weights[s : s + chunk], out.r2[s : s + chunk] = w, r2
    return out


def _greedy_nn(G: torch.Tensor, c: torch.Tensor, avail: torch.Tensor, T: int):
    """Batched greedy non-negative pursuit in Gram space: G [m, K, K], c [m, K] -> slots, weights, R^2."""
    m, K = c.shape
    avail = avail.clone()
    rows = torch.arange(m)
    sel = torch.full((m, T), -1, dtype=torch.long)
    w = torch.zeros(m, T)
    w_full = torch.zeros(m, K)  # the weights scattered onto the candidates
    r2 = torch.zeros(m)
    for t in range(T):
        corr = (c - torch.bmm(G, w_full[:, :, None])[:, :, 0]).masked_fill(~avail, -torch.inf)  # <cand, residual>
        best, j = corr.max(1)
        go = best > 1e-6  # no candidate can lower the residual any more: stop
        sel[go, t] = j[go]
        avail[rows[go], j[go]] = False
        S = sel.clamp_min(0)
        Gss = G.gather(1, S[:, :, None].expand(m, T, K)).gather(2, S[:, None, :].expand(m, T, T))
        w, r2 = support_nnls(Gss, c.gather(1, S), sel >= 0, t + 1)
        w_full = torch.zeros(m, K).scatter_add_(1, S, w)
    return sel, w, r2


def support_nnls(G: torch.Tensor, c: torch.Tensor, active: torch.Tensor,
                 n_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact non-negative least squares over the first n_slots (<= 4 or 5) atoms: the best feasible
    solution among all supports (the optimum is the unconstrained fit on its own support), every
    support solved in one batched call. G [m, T, T], c [m, T] -> weights [m, T], R^2 [m]."""
    m, T = c.shape
    supports = torch.tensor(list(product((False, True), repeat=n_slots))[1:])  # [S, n_slots]
    supports = torch.cat([supports, torch.zeros(len(supports), T - n_slots, dtype=torch.bool)], 1)
    on = active[:, None, :] & supports  # [m, S, T]
    eye = torch.eye(T)
    lhs = torch.where(on[..., :, None] & on[..., None, :], G[:, None], eye) + 1e-6 * eye
    w = torch.where(on, torch.linalg.solve(lhs, torch.where(on, c[:, None, :], 0.0)), 0.0)
    r2 = 2 * (w * c[:, None, :]).sum(-1) - torch.einsum("msi,mij,msj->ms", w, G, w)
    r2 = r2.masked_fill(~((w >= 0).all(-1) & on.any(-1)), 0.0)  # infeasible supports do not count
    best = r2.argmax(1)
    rows = torch.arange(m)
    return w[rows, best], r2[rows, best]


def classify(best_cos, mutual, dec: Decomposition, th: Options = Options()) -> np.ndarray:
    """One of CLASSES for every B row (thresholds: th.cut, same, composite_r2, composite_gain, novel_r2)."""
    best_cos, mutual = np.asarray(best_cos), np.asarray(mutual)
    r2, gain = dec.r2.numpy(), (dec.r2 - dec.r2_single).numpy()
    low = best_cos < th.cut
    composite = low & (r2 >= th.composite_r2) & (gain >= th.composite_gain)
    return np.select(
        [(best_cos >= th.same) & mutual, ~low, composite, low & (r2 < th.novel_r2)],
        ["same", "refined", "composite", "novel"],
        "ambiguous",
    )


@torch.no_grad()
def insertion_test(sae_a, sae_b, x: torch.Tensor, *, batch: int = 256) -> dict:
    """Per B latent, the change in A's MSE (summed over dimensions, mean over tokens) when the latent
    is inserted into A; firing frequencies of both. x: [n, d] activations at the SAEs' site.

    Exact when neither SAE is TopK (a threshold latent does not change the others); for TopK SAEs it
    uses B's own activations and A's unchanged code, an approximation (reported as `exact: False`).
    """
    if sae_a.d_in != sae_a.d_out or sae_b.d_in != sae_b.d_out:
        raise GeometryError("the insertion test needs SAEs that reconstruct their input (not transcoders)")
    dev, dt = sae_b.W_dec.device, sae_b.W_dec.dtype
    d_norm2 = (sae_b.W_dec.float() ** 2).sum(1)
    dmse = torch.zeros(sae_b.n_features, dtype=torch.float64, device=dev)
    fires_a = torch.zeros(sae_a.n_features, dtype=torch.float64, device=dev)
    fires_b = torch.zeros_like(dmse)
    for s in range(0, len(x), batch):
        xb = x[s : s + batch].to(dev, dt)
        code_a = sae_a.encode_sparse(xb)
        err = (xb - sae_a.decode(code_a)).float()
        vals, idx = sae_b.encode_sparse(xb)
        vals = vals.float()
        step = max(1, (1 << 25) // idx[0].numel() // sae_b.d_out)  # gathered decoder rows: <= 128 MiB
        proj = torch.cat([torch.einsum("nmd,nd->nm", sae_b.W_dec[idx[i : i + step]].float(), err[i : i + step])
                          for i in range(0, len(idx), step)])
        on = vals > 0
        contrib = vals**2 * d_norm2[idx] - 2 * vals * proj
        dmse.index_add_(0, idx[on], contrib[on].double())
        fires_b.index_add_(0, idx[on], torch.ones_like(contrib[on], dtype=torch.float64))
        on_a = code_a.values > 0
        fires_a.index_add_(0, code_a.indices[on_a], torch.ones(int(on_a.sum()), dtype=torch.float64, device=dev))
    n = max(len(x), 1)
    return {
        "dmse": (dmse / n).cpu().numpy(),
        "freq_a": (fires_a / n).cpu().numpy(),
        "freq_b": (fires_b / n).cpu().numpy(),
        "n_tokens": len(x),
        "exact": sae_a.activation != "topk" and sae_b.activation != "topk",
    }
