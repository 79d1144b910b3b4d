"""Mixed parallelism (sae.train.parallel) with real processes: gloo on CPU, 2 and 4 processes on 127.0.0.1.

Each process group runs once (a module fixture) and writes what it computed; the tests compare that with
one process. Layouts: 2 processes as tp 2 and as ddp 2; 4 processes as tp 4 and as ddp 2 x tp 2.

Tolerance. A sharded run does the same arithmetic as one process in another float32 summation order
(partial reconstructions summed over shards, gradients and statistics summed over replicas), so it
agrees to rounding, not bit for bit. Measured over these 20-step runs, all four layouts: weights within
2.6e-7 of each tensor's largest entry, losses within 1.9e-7 (relative), L0 identical at every step. A
one-process run on the same batches with the rows of every batch permuted (nothing changes but the
order of the float32 sums) moves them by 2.0e-7 and 1.3e-7: the same scale, re-measured by
`test_the_tolerance_is_float32_summation_order`. The tolerances (5e-6, 2e-6) leave 10-20x room. Real
errors are far outside: gradients not reduced over replicas move the weights by 0.3-0.8; summed instead
of averaged, by 0.1 in the clipped transcoder case (Adam alone hardly sees a constant factor: 8e-6).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae import SAEError, load
from sae.data.synthetic import SyntheticData
from sae.train import SAESpec, TrainConfig, train
from sae.train.kernels import topk_by_bits

ROOT = Path(__file__).resolve().parents[2]
WEIGHT_RTOL = 5e-6  # |difference| / max|entry| per tensor
LOSS_RTOL = 2e-6
LOG_COLUMNS = ("loss", "mse", "ev", "l0", "alive", "aux", "l1")
STEPS, BATCH = 20, 256
LAYOUTS = {2: {"tp2": 2, "ddp2": 1}, 4: {"tp4": 4, "ddp2xtp2": 2}}  # world -> name -> tp


# ---------------------------------------------------------------------------------------------------
# what every layout trains (the same in one process and in the workers)
# ---------------------------------------------------------------------------------------------------
def _data() -> SyntheticData:
    return SyntheticData(d=32, n_parents=32, children_per_parent=1)


def _transcoder_data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = _data().sample(2048, g)
    return {"x": x, "y": torch.tanh(x @ torch.randn(32, 24, generator=g))}


def _config(**kw) -> TrainConfig:
    # fp32 ranking: a bf16 score has many exact ties, whose order one process and shards break differently
    return TrainConfig(threads=1, total_tokens=STEPS * BATCH, batch_size=BATCH, log_every=1, score_dtype="float32", **kw)


CASES = {
    # TopK, K-annealing from k_start 24 (more than a shard's 16 features at tp 4)
    "topk": lambda: (_data(), SAESpec(n_features=64, k=6), _config(k_start=24, checkpoint_every=5)),
    # transcoder from a tensor dict, the released code's loss, AuxK, clipping, b_dec from the data mean
    "transcoder": lambda: (_transcoder_data(), SAESpec(n_features=256, k=4, k_anneal=False, hook_in="x", hook_out="y"),
                           _config(loss="batch-norm-mse", aux_k=8, dead_tokens=256, grad_clip=0.05, b_dec_init="mean")),
    "vanilla": lambda: (_data(), SAESpec(n_features=128, activation="relu"), _config()),
}


def _train_case(name: str, sharding=None, source=None, **kw):
    data, spec, cfg = CASES[name]()
    return train(data if source is None else source, spec, cfg, progress=False, sharding=sharding, **kw)


def _log_tensors(log) -> dict[str, torch.Tensor]:
    return {f"log/{c}": torch.tensor(log[c].to_numpy(dtype=float)) for c in LOG_COLUMNS if c in log}


def _sae_tensors(sae) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in sae.state_dict().items()}


# ---------------------------------------------------------------------------------------------------
# the worker processes
# ---------------------------------------------------------------------------------------------------
def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from sae.train.parallel import setup

    first = setup(world, timeout_s=120)
    out = Path(out)
    try:
        for layout, tp in LAYOUTS[world].items():
            sh = setup(tp)
            for name in CASES:
                r = _train_case(name, sh, out_dir=out / f"{name}-{layout}")
                tensors = _sae_tensors(r.saes["sae"])
                if sh.is_main:
                    tensors.update(_log_tensors(r.logs["sae"]))
                save_file(tensors, out / f"{name}-{layout}-rank{rank}.safetensors")
        _topk_scenario(first, out)
        _checkpoint_scenario(setup(2), out)
        if world == 2:
            _per_rank_stream_scenario(setup(1), out)
        _bad_layout_scenario(first, out)
    finally:
        first.close()


def _selection_mask(sh, scores_local: torch.Tensor, k: int) -> torch.Tensor:
    """The sharded top-k as a full [B, F] mask (on every rank)."""
    _, idx, owned = sh.topk(scores_local, k)
    mask = torch.zeros_like(scores_local, dtype=torch.uint8).scatter_add_(1, idx, owned.to(torch.uint8))
    return sh.full(mask, 1)


def _topk_scores(F: int) -> dict[str, torch.Tensor]:
    """Score matrices [B, F]: continuous, heavy ties (small integers), duplicate features across shards."""
    g = torch.Generator().manual_seed(7)
    cont = torch.randn(96, F, generator=g)
    ties = torch.randint(0, 6, (96, F), generator=g).float()
    dup = torch.randn(96, F, generator=g)
    dup[:, F // 2 :] = dup[:, : F // 2]  # feature j and j + F/2 (another shard) score the same
    return {"continuous": cont, "ties": ties, "duplicates": dup}


def _decoder_norm_sae(F: int):
    """A TopK SAE whose decoder norms spread over 0.1..10, so ReLU(pre) alone would rank differently."""
    from sae import SparseAutoencoder

    g = torch.Generator().manual_seed(8)
    sae = SparseAutoencoder(32, F, k=8)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(32, F, generator=g))
        sae.b_enc.copy_(torch.randn(F, generator=g))
        sae.W_dec.copy_(torch.randn(F, 32, generator=g) * torch.logspace(-1, 1, F)[torch.randperm(F, generator=g), None])
    return sae, torch.randn(96, 32, generator=g)


def _topk_scenario(sh, out: Path) -> None:
    F = 64
    result = {}
    for name, scores in _topk_scores(F).items():
        for k in (1, 8, 20):  # 20 > a shard's 16 features at tp 4
            result[f"{name}/k{k}"] = _selection_mask(sh, sh.shard(scores, 1), k)
    sae, x = _decoder_norm_sae(F)
    local = sh.local_sae(sae)
    with torch.no_grad():
        score = local.pre_acts(x).relu() * local.decoder_norms()  # the definition, not the step's folded matmul
    result["decoder_norm/k8"] = _selection_mask(sh, score, 8)
    if sh.is_main:
        save_file(result, out / f"topk-tp{sh.tp}.safetensors")


def _sharded_encode(sh, sae, x: torch.Tensor) -> torch.Tensor:
    """Encode x [B, d] with the features split over the shards; the dense code [B, F] gathered."""
    local = sh.local_sae(sae)
    with torch.no_grad():
        pre = local.pre_acts(x)
        _, idx, owned = sh.topk(pre.relu() * local.decoder_norms(), sae.k)
        values = pre.gather(1, idx).relu() * owned
        return sh.full(torch.zeros_like(pre).scatter_add_(1, idx, values), 1)


def _checkpoint_scenario(sh, out: Path) -> None:
    """tp 2 (2 processes) or ddp 2 x tp 2 (4): uninterrupted vs stopped and resumed; a one-process
    checkpoint resumed sharded; a sharded checkpoint left for one process; the sharded encoding."""
    tag = f"w{sh.world}"
    full = _train_case("topk", sh, out_dir=out / f"full-{tag}")
    _train_case("topk", sh, out_dir=out / f"stopped-{tag}", stop_after=8)
    resumed = _train_case("topk", sh, out_dir=out / f"stopped-{tag}", resume=True)
    _train_case("topk", sh, out_dir=out / f"half-{tag}", stop_after=8)  # for the parent to resume in one process
    from_single = _train_case("topk", sh, out_dir=out / f"single-{tag}", resume=True)  # the parent stopped it at 8
    x = _data().sample(128, torch.Generator().manual_seed(11))
    code = _sharded_encode(sh, full.saes["sae"], x)
    if sh.is_main:
        save_file({"x": x, "code": code, **{f"full/{k}": v for k, v in _sae_tensors(full.saes["sae"]).items()},
                   **{f"resumed/{k}": v for k, v in _sae_tensors(resumed.saes["sae"]).items()},
                   **{f"from_single/{k}": v for k, v in _sae_tensors(from_single.saes["sae"]).items()}},
                  out / f"checkpoint-{tag}.safetensors")


def _stream(rank: int, world: int):
    from conftest import TINY_CORPUS, make_tiny_llama, make_tiny_tokenizer

    from sae.data.stream import ActivationStream

    corpus = [f"Article {i}. {text}" for i, text in enumerate(TINY_CORPUS)]  # 32 distinct documents
    return ActivationStream(make_tiny_llama(), make_tiny_tokenizer(), source=corpus, hooks=["blocks.1.hook_resid_post"],
                            batch_size=32 // world, context=64, buffer_tokens=128, seed=3, shard=(rank, world), progress=False)


def _per_rank_stream_scenario(sh, out: Path) -> None:
    """ddp 2, every process running its own model on its own shard of the corpus."""
    spec = SAESpec(hook_in="blocks.1.hook_resid_post", n_features=256, k=8)
    r = train(_stream(sh.rank, sh.world), spec, TrainConfig(threads=1, total_tokens=32 * 6, batch_size=32),
              out_dir=out / "stream", progress=False, sharding=sh)
    first = next(iter(_stream(sh.rank, sh.world)))["blocks.1.hook_resid_post"]
    save_file({**_sae_tensors(r.saes["sae"]), "first_batch": first}, out / f"stream-rank{sh.rank}.safetensors")


def _bad_layout_scenario(sh, out: Path) -> None:
    messages = []
    for spec, batch in ((SAESpec(n_features=33, k=4), 256), (SAESpec(n_features=64, k=4), 255)):
        try:
            train(_data(), spec, TrainConfig(threads=1, total_tokens=batch * 2, batch_size=batch), progress=False, sharding=sh)
        except SAEError as e:
            messages.append(str(e))
    (out / f"bad-rank{sh.rank}.json").write_text(json.dumps(messages))


# ---------------------------------------------------------------------------------------------------
# running the group
# ---------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(world: int, out: Path, timeout_s: float = 300) -> None:
    import torch.multiprocessing as mp

    ctx = mp.start_processes(_worker, args=(world, _free_port(), str(out)), nprocs=world, join=False, start_method="spawn")
    deadline = time.time() + timeout_s
    try:
        while not ctx.join(timeout=1):
            if time.time() > deadline:
                raise TimeoutError(f"{world} worker processes did not finish in {timeout_s} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """world -> the folder the group wrote, after one-process checkpoints for it to resume."""
    folders = {}
    for world in LAYOUTS:
        out = tmp_path_factory.mktemp(f"world{world}")
        _train_case("topk", out_dir=out / f"single-w{world}", stop_after=8)
        _spawn(world, out)
        folders[world] = out
    return folders


@pytest.fixture(scope="module")
def single_logged(tmp_path_factory):
    """The one-process reference for every case: weights and log."""
    refs = {}
    for name in CASES:
        r = _train_case(name, out_dir=tmp_path_factory.mktemp(name))
        refs[name] = {**_sae_tensors(r.saes["sae"]), **_log_tensors(r.logs["sae"])}
    return refs


def _weight_error(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12))
               for k in ("W_enc", "b_enc", "W_dec", "b_dec") if b[k].abs().max() > 0)


def _loss_error(a: dict, b: dict) -> float:
    return float(((a["log/loss"] - b["log/loss"]).abs() / b["log/loss"].abs()).max())


# ---------------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("world,layout", [(w, name) for w, names in LAYOUTS.items() for name in names])
@pytest.mark.parametrize("case", list(CASES))
def test_layouts_match_one_process(runs, single_logged, world, layout, case):
    """Same data, same loss curve and final weights as one process; every rank holds the same SAE."""
    ref = single_logged[case]
    got = [load_file(runs[world] / f"{case}-{layout}-rank{r}.safetensors") for r in range(world)]
    assert _weight_error(got[0], ref) < WEIGHT_RTOL
    assert _loss_error(got[0], ref) < LOSS_RTOL
    assert torch.equal(got[0]["log/l0"], ref["log/l0"])  # the same number of features fired at every step
    for col in ("mse", "ev", "alive", "aux", "l1"):
        if f"log/{col}" in ref:
            assert torch.allclose(got[0][f"log/{col}"], ref[f"log/{col}"], rtol=LOSS_RTOL * 10, atol=1e-6, equal_nan=True), col
    for other in got[1:]:
        for key in ("W_enc", "b_enc", "W_dec", "b_dec"):
            assert torch.equal(other[key], got[0][key]), key
    if case == "transcoder":
        assert torch.isfinite(ref["log/aux"]).any()  # AuxK took part


def test_the_tolerance_is_float32_summation_order(single_logged, runs):
    """One process on the same batches with each batch's rows permuted: only the float32 summation
    order changes, and the difference is of the layouts' size (~2e-7), well inside the tolerance."""
    class Permuted:
        def __iter__(self):
            g = torch.Generator().manual_seed(5)
            for t in _data().batches(BATCH):
                yield t[torch.randperm(BATCH, generator=g)]

    r = _train_case("topk", source=Permuted(), out_dir=runs[2] / "permuted")
    got = {**_sae_tensors(r.saes["sae"]), **_log_tensors(r.logs["sae"])}
    control = _weight_error(got, single_logged["topk"])
    assert 0 < control < WEIGHT_RTOL / 5
    assert _loss_error(got, single_logged["topk"]) < LOSS_RTOL


@pytest.mark.parametrize("tp", [2, 4])
def test_sharded_topk_selects_what_one_process_selects(runs, tp):
    got = load_file(runs[tp] / f"topk-tp{tp}.safetensors")
    tie_rows = 0
    for name, scores in _topk_scores(64).items():
        for k in (1, 8, 20):
            mask = got[f"{name}/k{k}"].bool()
            top = scores.topk(k, dim=1)  # one process
            assert (mask.sum(1) == k).all()  # exactly k, each owned by one shard
            for row, m in zip(range(scores.shape[0]), mask):
                chosen = scores[row][m].sort(descending=True).values
                assert torch.equal(chosen, top.values[row])  # the same scores, ties included
                ordered = scores[row].sort(descending=True).values
                if k < scores.shape[1] and ordered[k - 1] == ordered[k]:  # a tie at the k-th place: the set is not unique
                    tie_rows += 1
                    assert m[scores[row] > ordered[k - 1]].all()  # still every feature above the tie
                else:
                    assert set(m.nonzero().squeeze(1).tolist()) == set(top.indices[row].tolist())
    assert tie_rows > 100  # the tie cases did exercise ties
    sae, x = _decoder_norm_sae(64)
    ref = sae.encode_sparse(x).indices  # the model's own TopK: ReLU(pre) x ||W_dec row||
    mask = got["decoder_norm/k8"].bool()
    for m, r in zip(mask, ref):
        assert set(m.nonzero().squeeze(1).tolist()) == set(r.tolist())
    plain = x @ sae.W_enc.detach() + sae.b_enc.detach()  # ranking without the decoder norms differs
    assert any(set(p.topk(8).indices.tolist()) != set(r.tolist()) for p, r in zip(plain, ref))


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_checkpoints_resume_and_load_in_one_process(runs, single_logged, world):
    out = runs[world]
    got = load_file(out / f"checkpoint-w{world}.safetensors")
    full = {k[5:]: v for k, v in got.items() if k.startswith("full/")}
    # stopped at step 8 and resumed in the same layout: bit for bit the uninterrupted run
    for key, v in full.items():
        assert torch.equal(got[f"resumed/{key}"], v), key
    assert _weight_error(full, single_logged["topk"]) < WEIGHT_RTOL
    # the trained SAE a sharded run wrote loads in one process and encodes as the shards did
    sae = load(out / f"full-w{world}" / "sae" / "trained")
    code = sae.encode(got["x"])
    assert torch.equal(code > 0, got["code"] > 0)
    assert torch.allclose(code, got["code"], rtol=1e-6, atol=1e-6)
    # a sharded checkpoint (step 8) resumed in one process; a one-process checkpoint resumed sharded
    cont = _train_case("topk", out_dir=out / f"half-w{world}", resume=True).saes["sae"]
    assert _weight_error(_sae_tensors(cont), single_logged["topk"]) < WEIGHT_RTOL
    from_single = {k[12:]: v for k, v in got.items() if k.startswith("from_single/")}
    assert _weight_error(from_single, single_logged["topk"]) < WEIGHT_RTOL
    state = json.loads(next((out / f"full-w{world}" / "checkpoint").glob("step-*/state.json")).read_text())
    assert state["layout"] == {"world": world, "ddp": world // 2, "tp": 2, "per_rank_data": False}


def test_per_rank_streams_stay_in_sync(runs):
    """ddp 2 over a real (tiny, random) Llama: each process reads its own half of the corpus, the
    replicas stay identical and the normalisation is the mean of the two shards' norms."""
    out = runs[2]
    a, b = (load_file(out / f"stream-rank{r}.safetensors") for r in (0, 1))
    assert not torch.equal(a["first_batch"], b["first_batch"])
    for key in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(a[key], b[key]), key
    hook = "blocks.1.hook_resid_post"
    expected = (_stream(0, 2).mean_norms()[hook] + _stream(1, 2).mean_norms()[hook]) / 2
    saved = json.loads((out / "stream" / "sae" / "config.json").read_text())["mean_norms"][hook]
    assert saved == pytest.approx(expected, rel=1e-12)
    log = (out / "stream" / "sae" / "log.csv").read_text().splitlines()
    assert len(log) == 2 and log[-1].startswith("6,192,")  # rank 0 logged the 6 steps of 32 tokens


def test_layouts_that_do_not_split_are_refused(runs):
    for world in LAYOUTS:
        for rank in range(world):
            messages = json.loads((runs[world] / f"bad-rank{rank}.json").read_text())
            assert len(messages) == 2
            assert f"33 features do not split evenly over {world} tensor-parallel shards" in messages[0]
            assert f"batch size (255) must split evenly over {world} processes" in messages[1]


def test_tp_without_torchrun_is_one_clear_error(tmp_path):
    from sae.train.parallel import Sharding, setup

    assert type(setup(1)) is Sharding  # one process: the identity
    with pytest.raises(SAEError, match="torchrun --nproc-per-node 2"):
        setup(2)
    r = subprocess.run([sys.executable, "-m", "sae.train", "--dataset", "synthetic", "--sae", "s=x", "--tp", "2",
                        "--out", str(tmp_path / "r")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and r.stderr.startswith("error:") and "Traceback" not in r.stderr


@pytest.mark.real_model
def test_torchrun_on_the_embedded_model(smollm2, tmp_path):
    """`torchrun --nproc-per-node 2 -m sae.train ... --tp 2` on SmolLM2: each process runs the model on
    its half of the corpus; rank 0 writes a trained, post-processed SAE that loads in one process."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "sae.train", "--sae", "L15R-8x", "--tokens", "512",
           "--batch-size", "256", "--buffer-tokens", "256", "--context", "64", "--no-normalize",
           "--threshold-tokens", "256", "--threads", "1", "--quiet", "--tp", "2", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("trained L15R-8x: 2 steps, 512 tokens") == 1  # printed by rank 0 only
    assert "ddp 1 x tp 2" in r.stdout
    trained = load(out / "L15R-8x" / "trained")
    assert trained.n_features == 4608 and trained.meta.provenance["layout"] == {"world": 2, "ddp": 1, "tp": 2}
    sae = load(out / "L15R-8x")  # JumpReLU, raw units
    x = torch.randn(4, 576) * 10
    assert sae.encode(x).shape == (4, 4608)
    assert (out / "L15R-8x" / "log.csv").read_text().splitlines()[-1].startswith("2,512,")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_topk_by_bits_chooses_what_torch_topk_chooses_among_positive_scores(dtype):
    g = torch.Generator().manual_seed(0)
    score = (torch.randn(300, 257, generator=g) - 2.4).to(dtype)  # ~2 positives per row: some rows have < k
    score[:5] = score[:5].abs()  # and some rows are all positive
    score[5, :40] = 1.5  # ties
    for k in (1, 3, 10):
        values, indices = topk_by_bits(score, k)
        assert torch.equal(score.gather(1, indices), values)
        ref = score.topk(k, dim=1).values
        for row in range(score.shape[0]):
            n_pos = int((score[row] > 0).sum())
            got = values[row].sort(descending=True).values
            if n_pos >= k:
                assert torch.equal(got, ref[row])
            else:  # every positive score, then other non-positive ones
                assert torch.equal(got[:n_pos], ref[row, :n_pos]) and (got[n_pos:] <= 0).all()
                assert len(set(indices[row].tolist())) == k
