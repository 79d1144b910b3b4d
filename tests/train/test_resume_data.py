"""Resuming is only ever a continuation: a checkpoint records what data it was trained on and a resume on
other data is refused; a resume of a finished run changes no file; --resume with nothing to resume says so."""

import pytest
import torch

from sae.data.synthetic import SyntheticData
from sae.train import SAESpec, TrainConfig, TrainingError, train
from sae.train.cli import main as train_main

SPEC = SAESpec(n_features=128, k=4)
CFG = TrainConfig(threads=1, total_tokens=256 * 8, batch_size=256, checkpoint_every=2)


def files_and_times(folder):
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_on_another_synthetic_dictionary_is_refused(tmp_path):
    train(SyntheticData(d=16, n_parents=16, seed=0), SPEC, CFG, out_dir=tmp_path, progress=False, stop_after=3)
    before = files_and_times(tmp_path)
    with pytest.raises(TrainingError, match=r"written on other data \(seed: 0 -> 1\)"):
        train(SyntheticData(d=16, n_parents=16, seed=1), SPEC, CFG, out_dir=tmp_path, resume=True, progress=False)
    assert files_and_times(tmp_path) == before


def test_resume_on_other_tensors_is_refused_and_on_the_same_accepted(tmp_path):
    x = torch.randn(4096, 16, generator=torch.Generator().manual_seed(0))
    train(x, SPEC, CFG, out_dir=tmp_path, progress=False, stop_after=3)
    other = x.clone()
    other[4096 // 256 * 7] += 1.0  # one row of the strided sample the fingerprint hashes
    with pytest.raises(TrainingError, match="other data"):
        train(other, SPEC, CFG, out_dir=tmp_path, resume=True, progress=False)
    done = train(x.clone(), SPEC, CFG, out_dir=tmp_path, resume=True, progress=False)
    assert done.steps == CFG.steps and not done.finished_before


def test_resume_of_a_finished_run_changes_nothing(tmp_path):
    data = SyntheticData(d=16, n_parents=16)
    first = train(data, SPEC, CFG, out_dir=tmp_path, progress=False)
    before = files_and_times(tmp_path)
    again = train(data, SPEC, CFG, out_dir=tmp_path, resume=True, progress=False)
    assert again.finished_before and again.tokens == 0 and not first.finished_before
    assert files_and_times(tmp_path) == before
    for key, p in first.saes["sae"].state_dict().items():
        assert torch.equal(p, again.saes["sae"].state_dict()[key]), key


def test_resume_with_nothing_to_resume_says_it_starts_anew(tmp_path, capsys):
    result = train(SyntheticData(d=16, n_parents=16), SPEC, CFG, out_dir=tmp_path / "run", resume=True,
                   progress=False)
    assert result.steps == CFG.steps
    assert f"nothing to resume in {tmp_path / 'run'}" in capsys.readouterr().err


def test_the_command_on_a_finished_run_says_so_and_rewrites_nothing(tmp_path, capsys):
    argv = ["--dataset", "synthetic", "--synthetic", "d=16,n_parents=16", "--sae", "s=x", "--n-features", "128",
            "--k", "4", "--tokens", "2048", "--batch-size", "256", "--threshold-tokens", "1024", "--quiet",
            "--threads", "1", "--out", str(tmp_path)]
    assert train_main(argv) == 0
    before = files_and_times(tmp_path)
    capsys.readouterr()
    assert train_main(argv + ["--resume"]) == 0
    assert "holds a finished run (8 of 8 steps); nothing was trained or changed" in capsys.readouterr().out
    assert files_and_times(tmp_path) == before
    with pytest.raises(TrainingError, match=r"other data \(seed: 0 -> 5\)"):
        train_main([a if a != "d=16,n_parents=16" else "d=16,n_parents=16,seed=5" for a in argv] + ["--resume"])


def test_stream_fingerprint_names_what_it_reads(tiny_llama, tiny_corpus):
    from sae.data.stream import ActivationStream

    model, tok = tiny_llama

    def fingerprint(**kw):
        return ActivationStream(model, tok, source=tiny_corpus, hooks=["blocks.1.hook_resid_post"], batch_size=32,
                                context=32, progress=False, **kw).fingerprint()

    base = fingerprint()
    assert base == fingerprint() and base["source"].startswith("sha256:")
    assert ActivationStream(model, tok, source=tiny_corpus[1:], hooks=["blocks.1.hook_resid_post"], batch_size=32,
                            context=32, progress=False).fingerprint()["source"] != base["source"]
    assert {k for k in base if base[k] != fingerprint(pack=True)[k]} == {"pack"}
    assert {k for k in base if base[k] != fingerprint(seed=4)[k]} == {"seed"}
