"""Ground truth: the generator's structure, the recovery metric, and recovery of planted features by
training (budgets stated in each test)."""

import torch

from sae.data.synthetic import SyntheticData, recovery
from sae.train import SAESpec, TrainConfig, train


def test_generator_structure():
    data = SyntheticData(d=32, n_parents=16, children_per_parent=2, child_cos=0.5, corr=0.6, group_size=4)
    P = 16
    assert data.features.shape == (48, 32)
    assert torch.allclose(data.features.norm(dim=1), torch.ones(48), atol=1e-5)
    cos = (data.features[P:].view(P, 2, 32) * data.features[:P, None]).sum(-1)
    assert torch.allclose(cos, torch.full((P, 2), 0.5), atol=1e-5)  # children refine their parent
    x, codes = data.sample(50_000, torch.Generator().manual_seed(3), return_codes=True)
    assert x.shape == (50_000, 32)
    on = codes > 0
    child_on = on[:, P:].view(-1, P, 2).any(-1)
    assert not (child_on & ~on[:, :P]).any()  # never a child without its parent
    assert (on[:, P:].view(-1, P, 2).sum(-1) <= 1).all()  # at most one child per family
    freq = on[:, :P].float().mean(0)
    assert torch.allclose(freq, data.freq, rtol=0.25, atol=0.003)
    # correlated firing: parents of one group co-fire more than parents of different groups
    f = on[:, :P].float()
    c = torch.corrcoef(f.T)
    same = data.group[:, None] == data.group[None, :]
    off = ~torch.eye(P, dtype=torch.bool)
    assert c[same & off].mean() > c[~same].mean() + 0.05
    # heavy tails: magnitudes' kurtosis well above a Gaussian's 3
    m = codes[on]
    z = (m - m.mean()) / m.std()
    assert float(z.pow(4).mean()) > 5
    # reproducible by (seed, batch index)
    assert torch.equal(data.batch(7, 100), data.batch(7, 100))
    assert not torch.equal(data.batch(7, 100), data.batch(8, 100))


def test_recovery_metric():
    true = torch.eye(4)
    assert recovery(true, torch.eye(4) * 3)["frac_recovered"] == 1.0
    learned = torch.tensor([[1.0, 0.1, 0, 0], [0, 1.0, 0, 0], [0, 0, 1, 1]])
    r = recovery(true, learned)
    assert r["frac_recovered"] == 0.5  # rows 0 and 1 recover features 0 and 1; features 2, 3 only at 0.71
    assert abs(r["mean_max_cos"] - (0.995 + 1 + 2 * 0.7071) / 4) < 1e-3


def test_topk_recovers_planted_features():
    """Budget: d = 64, 96 flat features, F = 384, k = 8, 300 steps x 1,024 tokens (~5 s on 2 cores)."""
    data = SyntheticData(d=64, n_parents=96, children_per_parent=0)
    cfg = TrainConfig(threads=1, total_tokens=300 * 1024, batch_size=1024, lr=4e-3)
    sae = train(data, SAESpec(n_features=384, k=8), cfg, progress=False).saes["sae"]
    r = data.recovery(sae.W_dec)
    assert r["frac_recovered"] >= 0.9 and r["mean_max_cos"] >= 0.95, r


def test_topk_on_hierarchical_families():
    """Budget: default generator (48 parents x 2 children, d = 64), F = 384, k = 8, 300 steps x 1,024.

    Parents are recovered; children, which only fire with their parent, are partly absorbed
    (measured: parents 98%, children ~45% at cos >= 0.9; docs/training.md, "Ground truth")."""
    data = SyntheticData()
    cfg = TrainConfig(threads=1, total_tokens=300 * 1024, batch_size=1024, lr=4e-3)
    sae = train(data, SAESpec(n_features=384, k=8), cfg, progress=False).saes["sae"]
    P = data.config.n_parents
    assert recovery(data.features[:P], sae.W_dec)["frac_recovered"] >= 0.9
    assert data.recovery(sae.W_dec)["mean_max_cos"] >= 0.85


def test_k_annealing_keeps_more_features_alive(tmp_path):
    """Fig. 12's claim on ground truth. Budget: d = 128, 1,024 planted features with firing rates
    0.05%-2%, F = 1,024, k = 8, 400 steps x 1,024 tokens, both SAEs from one stream (~40 s on 2 cores).
    Measured: alive (fired in the last 100k tokens) stays >= 98.8% with annealing and dips to 96.2%
    without; annealing pays ~10% higher MSE at this budget (docs/training.md, "K-annealing and dead features")."""
    data = SyntheticData(d=128, children_per_parent=0, n_parents=1024, freq_min=0.0005, freq_max=0.02)
    cfg = TrainConfig(threads=1, total_tokens=400 * 1024, batch_size=1024, log_every=33, alive_window=100_000)
    specs = [SAESpec(name="anneal", n_features=1024, k=8), SAESpec(name="fixed", n_features=1024, k=8, k_anneal=False)]
    logs = train(data, specs, cfg, out_dir=tmp_path, progress=False).logs
    a, f = logs["anneal"]["alive"], logs["fixed"]["alive"]
    assert a.min() > f.min() + 0.01
    assert a.iloc[-1] > f.iloc[-1]
