"""The trainer: the hand-written TopK backward against autograd, the recipe's schedules and init,
multi-SAE / transcoder runs, bad input, NaN handling, logs, and resume after SIGKILL."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sae import SAEError, ShapeError, load
from sae.data.synthetic import SyntheticData
from sae.train import SAESpec, SAETrainer, TrainConfig, TrainingError, init_sae, latest_checkpoint, train, validate

ROOT = Path(__file__).resolve().parents[2]


def make_job(activation="topk", d_in=16, d_out=None, n=64, k=6, **cfg):
    cfg.setdefault("score_dtype", "float32")  # the exact selection the autograd reference makes
    config = TrainConfig(threads=1, total_tokens=64 * 100, batch_size=64, **cfg)
    spec = SAESpec(name="t", hook_in="x", hook_out="y" if d_out else None, n_features=n, k=k, activation=activation)
    g = torch.Generator().manual_seed(0)
    sae = init_sae(spec, d_in, d_out or d_in, config, g)
    with torch.no_grad():  # make every parameter matter
        sae.b_enc.copy_(0.1 * torch.randn(n, generator=g))
        sae.b_dec.copy_(0.1 * torch.randn(sae.d_out, generator=g))
        sae.W_dec.mul_(0.5 + torch.rand(n, 1, generator=g))
    return SAETrainer(spec, sae, config, 1.0, 1.0)


def sae_grads(job) -> list[torch.Tensor]:
    """The gradients Adam got, in the SAE's layout (W_enc [d, F])."""
    return [job.in_sae_layout(i, q.grad) for i, q in enumerate(job.opt_params)]


def reference_grads(job, x, y, k, aux_idx=None):
    """Dense autograd on the same loss, with the same selected features."""
    params = [p.detach().clone().requires_grad_() for p in job.params]
    W_enc, b_enc, W_dec, b_dec = params
    pre = x @ W_enc + b_enc
    score = pre.relu() * W_dec.norm(dim=1).detach()
    idx = score.topk(k, dim=1).indices
    f = torch.zeros_like(pre).scatter(1, idx, pre.gather(1, idx).relu())
    y_hat = f @ W_dec + b_dec
    e = y_hat - y
    loss = job.recon_loss(e, y)
    if aux_idx is not None:
        fa = torch.zeros_like(pre).scatter(1, aux_idx, pre.gather(1, aux_idx).relu())
        r = -e.detach()
        loss = loss + job.config.aux_coef * ((fa @ W_dec - r).pow(2).sum() / (r - r.mean(0)).pow(2).sum())
    loss.backward()
    return float(loss.detach()), [p.grad for p in params]


@pytest.mark.parametrize("loss", ["mse", "batch-norm-mse"])
@pytest.mark.parametrize("d_out", [None, 12])
def test_sparse_topk_backward_matches_autograd(loss, d_out):
    job = make_job(loss=loss, d_out=d_out)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 16, generator=g)
    y = torch.randn(64, d_out, generator=g) if d_out else x
    ref_loss, ref = reference_grads(job, x, y, 6)
    got_loss, stats, fired = job.topk_grads(x, y, 6, 0)
    assert got_loss == pytest.approx(ref_loss, rel=1e-5)
    for g, r in zip(sae_grads(job), ref):
        assert torch.allclose(g, r, atol=1e-6, rtol=1e-4)
    assert stats["l0"] <= 6 and fired.numel() > 0


def test_auxk_gradient_matches_autograd():
    job = make_job(aux_k=4, dead_tokens=10)
    job.last_fired[:32] = 1_000  # features 32.. never fired: dead at token 1,000
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        W_enc, b_enc, W_dec, _ = job.params
        score = (x @ W_enc + b_enc) * W_dec.norm(dim=1)
        score[:, :32] = -math.inf
        aux_idx = score.topk(4, dim=1).indices
    ref_loss, ref = reference_grads(job, x, x, 6, aux_idx=aux_idx)
    got_loss, stats, _ = job.topk_grads(x, x, 6, 1_000)
    assert "aux" in stats
    assert got_loss == pytest.approx(ref_loss, rel=1e-5)
    for g, r in zip(sae_grads(job), ref):
        assert torch.allclose(g, r, atol=1e-6, rtol=1e-4)


def test_gradient_buffers_reused_across_steps_hold_only_the_last_step():
    """The weight gradients are written into the previous step's tensors: nothing of it may remain."""
    job = make_job()
    g = torch.Generator().manual_seed(5)
    first = torch.randn(64, 16, generator=g)
    job.topk_grads(first, first, 6, 0)
    buffers = [q.grad for q in job.opt_params]
    x = torch.randn(64, 16, generator=g)
    _, ref = reference_grads(job, x, x, 6)
    job.topk_grads(x, x, 6, 0)
    assert job.opt_params[0].grad is buffers[0] and job.opt_params[2].grad is buffers[2]
    for got, r in zip(sae_grads(job), ref):
        assert torch.allclose(got, r, atol=1e-6, rtol=1e-4)


def test_auxk_in_bfloat16_is_close_to_fp32():
    """AuxK's matmuls run in the score dtype: its share of the gradients stays within 8%."""
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(2))
    shares, losses = [], []
    for dt in ("float32", "bfloat16"):
        job = make_job(aux_k=4, dead_tokens=10, score_dtype=dt)
        job.last_fired[:32] = 1_000
        job.topk_grads(x, x, 6, 0)  # before dead_tokens: no AuxK
        without = [g.clone() for g in sae_grads(job)]
        _, stats, _ = job.topk_grads(x, x, 6, 1_000)
        losses.append(stats["aux"])
        shares.append([g - w for g, w in zip(sae_grads(job), without)])
    assert losses[1] == pytest.approx(losses[0], rel=0.02)
    for a, b in zip(*shares):
        assert (a - b).norm() <= 0.08 * b.norm() + 1e-7  # 8-bit mantissas through three products


def _vanilla_reference(job, x, lam):
    """MSE + lam x sum_f f x ||W_dec row f||, by autograd on fresh fp32 copies."""
    params = [p.detach().clone().requires_grad_() for p in job.params]
    W_enc, b_enc, W_dec, b_dec = params
    f = (x @ W_enc + b_enc).relu()
    loss = (f @ W_dec + b_dec - x).pow(2).mean() + lam * (f * W_dec.norm(dim=1)).sum(1).mean()
    loss.backward()
    return float(loss), [p.grad for p in params]


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 0.03)])
def test_vanilla_step_gradients(dtype, tol):
    """The vanilla step's matmuls run in the score dtype: fp32 is exact, bf16 within a few percent."""
    job = make_job(activation="relu", score_dtype=dtype)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(6))
    ref_loss, ref = _vanilla_reference(job, x, 0.01)
    loss, stats, fired = job.relu_grads(x, x, 0.01)
    assert loss == pytest.approx(ref_loss, rel=tol)
    for p, r in zip(job.params, ref):
        assert p.grad.dtype == torch.float32 and (p.grad - r).norm() <= tol * r.norm() + 1e-7
    assert 0 < stats["l0"] < 64 and fired.numel() > 0


def test_bfloat16_ranking_keeps_fp32_values():
    """With a bf16 ranking matmul only the choice is approximate: values and gradients stay fp32-exact."""
    job32, job16 = make_job(n=256, k=10), make_job(n=256, k=10, score_dtype="bfloat16")
    x = torch.randn(128, 16, generator=torch.Generator().manual_seed(4))
    job32.topk_grads(x, x, 10, 0)
    job16.topk_grads(x, x, 10, 0)
    with torch.no_grad():
        W_enc, b_enc, W_dec, _ = job16.params
        pre = x @ W_enc + b_enc
        score = pre.relu() * W_dec.norm(dim=1)
        exact = score.topk(10, dim=1).indices
        low = torch.addmm((b_enc * W_dec.norm(dim=1)).bfloat16(), x.bfloat16(), (W_enc * W_dec.norm(dim=1)).bfloat16())
        chosen = low.topk(10, dim=1).indices
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(exact, chosen)) / exact.numel()
    assert overlap > 0.9
    grads = sae_grads(job16)
    ref_loss, ref = reference_grads(job16, x, x, 10)  # same parameters, exact selection
    if overlap == 1.0:
        for g, r in zip(grads, ref):
            assert torch.allclose(g, r, atol=1e-6, rtol=1e-4)
    assert torch.allclose(grads[3], ref[3], atol=1e-2)


def test_schedules():
    c = TrainConfig(threads=1, total_tokens=100 * 10, batch_size=10, warmup=0.1)
    assert c.steps == 100 and c.warmup_steps() == 10
    assert c.lr_at(0) == pytest.approx(8e-4 / 10) and c.lr_at(9) == pytest.approx(8e-4)
    assert c.lr_at(50) == pytest.approx(8e-4) and c.lr_at(80) == pytest.approx(8e-4)
    assert c.lr_at(90) == pytest.approx(8e-4 * 0.5) and c.lr_at(99) == pytest.approx(8e-4 * 0.05)
    assert TrainConfig(threads=1, total_tokens=1000, batch_size=10, warmup=5).warmup_steps() == 5
    spec = SAESpec(k=50)
    # released code: ceil(k_start + (k - k_start) t / T_w), k_start = d/2; T_w = 10 steps here
    assert [c.k_at(t, spec, 576, 4608) for t in (0, 5, 10, 50)] == [288, math.ceil(288 - 238 * 0.5), 50, 50]
    paper = TrainConfig(threads=1, total_tokens=1000, batch_size=10, k_start="d_model")
    assert paper.k_at(0, spec, 576, 4608) == 576
    assert c.k_at(0, SAESpec(k=50, k_anneal=False), 576, 4608) == 50
    assert c.k_at(0, spec, 576, 100) == 100  # never above n_features


@pytest.mark.parametrize("init,expected", [("paper", math.sqrt(2 * 32 / 512)), ("code", 0.5), (0.3, 0.3)])
def test_init(init, expected):
    cfg = TrainConfig(decoder_init_norm=init)
    sae = init_sae(SAESpec(n_features=512), 32, 32, cfg, torch.Generator().manual_seed(0))
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.full((512,), expected), atol=1e-5)
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    assert not sae.b_enc.any() and not sae.b_dec.any()
    tc = init_sae(SAESpec(n_features=512, hook_in="a", hook_out="b"), 32, 24, cfg, torch.Generator().manual_seed(0))
    assert tc.W_enc.shape == (32, 512) and tc.W_dec.shape == (512, 24)
    assert torch.allclose(tc.W_enc.norm(dim=0), tc.W_dec.norm(dim=1), atol=1e-5)  # same norms, not tied


def test_bad_input_refused_before_compute(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("computed before refusing")

    monkeypatch.setattr(SAETrainer, "step", boom)
    x = torch.randn(256, 16)
    cfg = TrainConfig(threads=1, total_tokens=256, batch_size=64)
    with pytest.raises(ShapeError, match="k = 100"):
        train(x, SAESpec(n_features=64, k=100), cfg, progress=False)
    with pytest.raises(SAEError, match="unknown site 'blocks.3.hook_resid_post'"):
        train(x, SAESpec(hook_in="blocks.3.hook_resid_post"), cfg, progress=False)
    with pytest.raises(ShapeError, match="d_in is 576"):
        train(x, SAESpec(d_in=576), cfg, progress=False)
    with pytest.raises(SAEError, match="activation"):
        train(x, SAESpec(activation="gelu"), cfg, progress=False)
    # CLI: one line, non-zero exit, before any model is loaded
    r = subprocess.run([sys.executable, "-m", "sae.train", "--sae", "L15R-8x", "--k", "99999", "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "sae.train", "--dataset", "synthetic", "--sae", "s=nope", "--out",
                        str(tmp_path / "r")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "unknown site 'nope'" in r.stderr and "Traceback" not in r.stderr


class NaNAfter:
    """Synthetic batches, the fourth poisoned."""

    def __init__(self, data, bad_step):
        self.data, self.bad_step = data, bad_step

    def __iter__(self):
        for i, t in enumerate(self.data.batches(64)):
            yield t * float("nan") if i == self.bad_step else t


def test_nan_stops_and_keeps_last_checkpoint(tmp_path):
    data = SyntheticData(d=16, n_parents=16, children_per_parent=1)
    cfg = TrainConfig(threads=1, total_tokens=64 * 10, batch_size=64, checkpoint_every=1, normalize=False)
    with pytest.raises(TrainingError, match="step 3"):
        train(NaNAfter(data, 3), SAESpec(n_features=32, k=4), cfg, out_dir=tmp_path, progress=False)
    ckpt = latest_checkpoint(tmp_path)
    assert json.loads((ckpt / "state.json").read_text())["step"] == 3
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(ckpt / "state.safetensors").values() if t.is_floating_point())


def test_several_saes_one_stream_logs_and_transcoder(tmp_path):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2048, 16, generator=g)
    b = torch.tanh(a @ torch.randn(16, 12, generator=g))

    def stream():  # an iterable of dicts with odd batch sizes: re-chunked to batch_size
        for i in range(0, 2048, 100):
            yield {"in": a[i : i + 100], "out": b[i : i + 100]}

    class Stream:
        def __iter__(self):
            return stream()

    specs = [
        SAESpec(name="r8", hook_in="in", expansion=8, k=4),
        SAESpec(name="r32", hook_in="in", expansion=32, k=4),
        SAESpec(name="tc", hook_in="in", hook_out="out", expansion=8, k=4),
        SAESpec(name="van", hook_in="in", expansion=8, activation="relu"),
    ]
    cfg = TrainConfig(threads=1, total_tokens=2048 * 2, batch_size=128, log_every=4)
    r = train(Stream(), specs, cfg, out_dir=tmp_path, progress=False)
    assert r.steps == 32
    assert r.saes["r32"].n_features == 512 and r.saes["tc"].d_out == 12
    for name in ("r8", "r32", "tc", "van"):
        log = r.logs[name]
        assert list(log["step"])[-1] == 32
        for col in ("step", "tokens", "lr", "k", "mse", "ev", "l0", "alive"):
            assert col in log.columns
        assert (tmp_path / name / "config.json").is_file()
        sae = load(tmp_path / name / "trained")
        assert sae.meta.provenance["space"] == "normalised"
    assert r.logs["r8"]["k"].iloc[0] > 4 and r.logs["r8"]["k"].iloc[-1] == 4  # annealed from d/2 = 8
    assert r.logs["r8"]["ev"].iloc[-1] > 0.3
    assert r.logs["van"]["l0"].iloc[-1] > 0
    # the run's normalisation: average norm sqrt(d) in training
    norms = json.loads((tmp_path / "tc" / "config.json").read_text())
    assert norms["scale_in"] == pytest.approx(4 / float(a[:16384].norm(dim=1).mean()), rel=1e-4)


@pytest.mark.parametrize("threads", [1, 2])
def test_resume_in_process_equals_uninterrupted(tmp_path, threads):
    data = SyntheticData(d=32, n_parents=32, children_per_parent=1)
    cfg = TrainConfig(threads=threads, total_tokens=512 * 30, batch_size=512, checkpoint_every=5)
    spec = SAESpec(n_features=256, k=8)
    full = train(data, spec, cfg, out_dir=tmp_path / "a", progress=False).saes["sae"]
    train(data, spec, cfg, out_dir=tmp_path / "b", progress=False, stop_after=12)  # checkpoint at 12
    with pytest.raises(TrainingError, match="resume"):
        train(data, spec, cfg, out_dir=tmp_path / "b", progress=False)
    resumed = train(data, spec, cfg, out_dir=tmp_path / "b", resume=True, progress=False).saes["sae"]
    for name, p in full.state_dict().items():
        assert torch.equal(p, resumed.state_dict()[name]), name
    steps = [int(line.split(",")[0]) for line in (tmp_path / "b" / "sae" / "log.csv").read_text().splitlines()[1:]]
    assert steps == [10, 12, 20, 30]  # the partial run's last step, then the resumed run


def _cli(out, *extra):
    return [sys.executable, "-m", "sae.train", "--dataset", "synthetic", "--synthetic", "d=32,n_parents=32",
            "--sae", "s=x", "--n-features", "256", "--k", "8", "--tokens", "160k", "--batch-size", "256",
            "--checkpoint-every", "25", "--log-every", "25", "--quiet", "--no-postprocess", "--threads", "1",
            "--out", str(out), *extra]


def test_sigkill_and_resume_gives_the_same_weights(tmp_path):
    """A real subprocess, killed with SIGKILL mid-run, resumed: bit-identical to an uninterrupted run."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(_cli(tmp_path / "full"), check=True, cwd=ROOT, env=env, capture_output=True)
    proc = subprocess.Popen(_cli(tmp_path / "killed"), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = tmp_path / "killed" / "checkpoint" / "latest.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if pointer.is_file() and json.loads(pointer.read_text())["step"] >= 150:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step = json.loads(pointer.read_text())["step"]
    assert 0 < step < 625
    assert not (tmp_path / "killed" / "s" / "trained").exists()
    subprocess.run(_cli(tmp_path / "killed", "--resume"), check=True, cwd=ROOT, env=env, capture_output=True)
    a = load(tmp_path / "full" / "s" / "trained")
    b = load(tmp_path / "killed" / "s" / "trained")
    for name, p in a.state_dict().items():
        assert torch.equal(p, b.state_dict()[name]), name
    assert (tmp_path / "killed" / "s" / "log.csv").read_text() .count("\n625,") == 1


def test_validate_checks_spec_options():
    with pytest.raises(SAEError, match="distinct"):
        validate([SAESpec(), SAESpec()], TrainConfig(), None)
    with pytest.raises(SAEError, match="loss"):
        validate([SAESpec()], TrainConfig(loss="l2"), None)


def test_r_a_m_tc_from_one_model_stream_and_resume(tiny_llama, tiny_corpus, tmp_path):
    """All four positions of a layer from one ActivationStream of a real (tiny, random) Llama; an
    interrupted run resumed from its checkpoint matches the uninterrupted one."""
    from sae.data.stream import ActivationStream
    from sae.formats.names import hook_points

    model, tok = tiny_llama
    specs = []
    for pos in ("R", "A", "M", "TC"):
        hook_in, hook_out = hook_points(1, pos)
        specs.append(SAESpec(name=f"L1{pos}-8x", hook_in=hook_in, hook_out=hook_out if pos == "TC" else None, k=8))
    hooks = list(dict.fromkeys(h for s in specs for h in (s.hook_in, s.out_hook)))

    def stream():
        return ActivationStream(model, tok, source=tiny_corpus, hooks=hooks, batch_size=50, context=64,
                                buffer_tokens=200, seed=3, progress=False)

    cfg = TrainConfig(threads=1, total_tokens=64 * 12, batch_size=64, checkpoint_every=4, log_every=4)
    full = train(stream(), specs, cfg, out_dir=tmp_path / "a", progress=False)
    assert full.saes["L1TC-8x"].meta.hook_in.endswith("ln2.hook_normalized")
    for name, log in full.logs.items():
        assert log["ev"].notna().all() and log["l0"].iloc[-1] <= 8, name
    train(stream(), specs, cfg, out_dir=tmp_path / "b", progress=False, stop_after=5)  # checkpoint at 5
    resumed = train(stream(), specs, cfg, out_dir=tmp_path / "b", resume=True, progress=False)
    for name in full.saes:
        for key, p in full.saes[name].state_dict().items():
            assert torch.equal(p, resumed.saes[name].state_dict()[key]), (name, key)
