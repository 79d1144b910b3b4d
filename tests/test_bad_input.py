"""The bad-input battery: every command and the main Python API, given what a hostile new user types.

Each case asserts the exit code (2), that stderr holds no traceback, and the message. The commands run
in-process through `run_cli`, as their `python -m` shims do, and every one must fail before a model is
loaded (the whole battery takes seconds). The faults that need a real process (a full disk through
`ulimit -f`) run as subprocesses; SIGKILL and resume are in tests/train/test_train.py and
tests/interp/test_contexts.py, resume on other data in tests/train/test_resume_data.py, a bad budget on a
built suite in tests/pipelines/test_demo.py.
"""

from __future__ import annotations

import importlib
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from saes import random_sae

import sae
from sae.errors import SAEError, run_cli

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = not torch.cuda.is_available()

TRAIN = ["--dataset", "synthetic", "--synthetic", "d=16,n_parents=16", "--n-features", "64", "--k", "4",
         "--tokens", "2048", "--batch-size", "256", "--quiet", "--threads", "1", "--out", "{tmp}/run"]


NB = ["{tmp}/sae12", "--members", "{tmp}/sae12=4", "--seeds", "1"]


def _train(*extra: str) -> list[str]:
    return ["--sae", "s=x", *TRAIN, *extra]


# (command module, argv, a fragment the one-line message must hold); {tmp} is the test's folder holding
# sae12/ and sae16/ (random SAEs of width 12 and 16), corrupt/ (a cfg.json that is not JSON), nan/ (NaN
# weights) and a_file (a plain file)
CASES = [
    # sae.train
    ("sae.train.cli", _train("--lr", "-1"), "--lr -1: must be > 0"),
    ("sae.train.cli", _train("--lr", "nan"), "--lr nan: must be a finite number"),
    ("sae.train.cli", _train("--batch-size", "0"), "--batch-size 0: must be >= 1"),
    ("sae.train.cli", _train("--tokens", "1e99"), "--tokens"),
    ("sae.train.cli", _train("--k", "0"), "--k 0: must be >= 1"),
    ("sae.train.cli", _train("--aux-k", "-1"), "--aux-k -1: must be >= 0"),
    ("sae.train.cli", _train("--checkpoint-every", "-3"), "--checkpoint-every -3"),
    ("sae.train.cli", _train("--betas", "0.9"), "--betas wants two numbers"),
    ("sae.train.cli", _train("--synthetic", "d=abc"), "d"),
    ("sae.train.cli", _train("--synthetic", "nonsense"), "nonsense"),
    ("sae.train.cli", _train("--synthetic", "colour=3"), "colour"),
    ("sae.train.cli", _train("--threshold-calibration", "median"), "invalid choice: 'median'"),
    ("sae.train.cli", _train("--out", "{tmp}/a_file"), "is a file, not a folder"),
    ("sae.train.cli", _train("--out", "/dev/null/run"), "cannot be written: Not a directory"),
    ("sae.train.cli", _train("--device", "tpu"), "tpu"),
    ("sae.train.cli", _train("--dataset", "{tmp}/missing.txt"), "missing.txt"),
    ("sae.train.cli", TRAIN, "say what to train"),
    ("sae.train.cli", ["--sae", "L99R-8x", *TRAIN], "L99R-8x"),
    ("sae.train.cli", ["--sae", "L15Q-8x", *TRAIN], "L15Q-8x"),
    ("sae.train.cli", _train("--tokens", "lots"), "not a count: 'lots'"),
    # sae.evaluate
    ("sae.eval.cli", ["demo:L99R-8x"], "L99R-8x"),
    ("sae.eval.cli", ["{tmp}/no_such_sae"], "no_such_sae"),
    ("sae.eval.cli", ["{tmp}/corrupt"], "cfg.json"),
    ("sae.eval.cli", ["{tmp}/nan"], "NaN"),
    ("sae.eval.cli", ["{tmp}/sae12", "--tokens", "0"], "--tokens 0: must be >= 1"),
    ("sae.eval.cli", ["{tmp}/sae12", "--batch-size", "0"], "--batch-size 0: must be >= 1"),
    ("sae.eval.cli", ["{tmp}/sae12", "--dense-threshold", "7"], "--dense-threshold 7"),
    ("sae.eval.cli", ["{tmp}/sae12", "--lm-tokens", "-5"], "--lm-tokens"),
    ("sae.eval.cli", ["{tmp}/sae12", "--modes", "native,gelu"], "gelu"),
    ("sae.eval.cli", ["{tmp}/sae12", "--out", "{tmp}/a_file"], "is a file, not a folder"),
    ("sae.eval.cli", ["{tmp}/sae12", "--massive-factor", "-1"], "--massive-factor -1"),
    # sae.contexts
    ("sae.interp.cli", ["{tmp}/sae12", "--out", "{tmp}/ctx", "--n-top", "-1"], "--n-top -1"),
    ("sae.interp.cli", ["{tmp}/sae12", "--out", "{tmp}/ctx", "--tokens", "0"], "--tokens 0"),
    ("sae.interp.cli", ["{tmp}/sae12", "--out", "{tmp}/ctx", "--window", "-1", "3"], "--window"),
    ("sae.interp.cli", ["{tmp}/sae12", "--out", "{tmp}/ctx", "--batch-size", "0"], "--batch-size 0"),
    ("sae.interp.cli", ["{tmp}/sae12", "--out", "{tmp}/a_file"], "is a file, not a folder"),
    ("sae.interp.cli", ["{tmp}/sae12", "--out", "{tmp}/ctx", "--checkpoint-s", "0"], "--checkpoint-s 0"),
    # sae.postprocess
    ("sae.train.postprocess", ["{tmp}/no_run"], "no_run"),
    ("sae.train.postprocess", ["{tmp}/corrupt"], "cfg.json"),
    ("sae.train.postprocess", ["{tmp}/sae12", "--tokens", "0"], "--tokens 0"),
    # sae.demo
    ("sae.pipelines.demo", ["--distinct-tokens", "-5"], "--distinct-tokens -5: must be >= 1"),
    ("sae.pipelines.demo", ["--epochs", "0"], "--epochs 0"),
    ("sae.pipelines.demo", ["--lr", "2"], "--lr 2: must be > 0 and <= 1"),
    ("sae.pipelines.demo", ["--calibration", "median"], "invalid choice: 'median'"),
    ("sae.pipelines.demo", ["--out", "{tmp}/a_file"], "is a file, not a folder"),
    ("sae.pipelines.demo", ["--batch-size", "1.5"], "--batch-size: expected a whole number, not '1.5'"),
    # sae.grid
    ("sae.pipelines.grid", ["--layers", "99"], "99"),
    ("sae.pipelines.grid", ["--layers", "abc"], "abc"),
    ("sae.pipelines.grid", ["--out", "{tmp}/a_file"], "is a file, not a folder"),
    # geometry.compare
    ("geometry.compare", ["{tmp}/sae12", "{tmp}/missing"], "missing"),
    ("geometry.compare", ["{tmp}/sae12", "{tmp}/sae16"], "12"),
    ("geometry.compare", ["{tmp}/sae12", "{tmp}/sae12", "--cut", "2"], "--cut 2"),
    ("geometry.compare", ["{tmp}/sae12", "{tmp}/sae12", "--same", "-3"], "--same -3"),
    ("geometry.compare", ["{tmp}/sae12", "{tmp}/sae12", "--precision", "fp8"], "invalid choice: 'fp8'"),
    ("geometry.compare", ["{tmp}/sae12", "{tmp}/sae12", "--out", "{tmp}/a_file"], "is a file, not a folder"),
    ("geometry.compare", ["{tmp}/sae12", "{tmp}/sae12", "--json", "{tmp}/a_file/s.json"], "--json"),
    ("geometry.compare", ["{tmp}/sae12", "{tmp}/sae12", "--freq-a", "{tmp}/nofreq.npy"], "nofreq.npy"),
    ("geometry.compare", ["{tmp}/sae12", "{tmp}/corrupt"], "cfg.json"),
    # geometry.clusters
    ("geometry.clusters", ["{tmp}/sae12", "--out", "{tmp}/a_file"], "is a file, not a folder"),
    ("geometry.clusters", ["{tmp}/sae12", "--out", "{tmp}/cl", "--method", "kmeans"], "invalid choice: 'kmeans'"),
    ("geometry.clusters", ["{tmp}/sae12", "--out", "{tmp}/cl", "--labels-dir", "{tmp}/nolabels"], "nolabels"),
    ("geometry.clusters", ["{tmp}/sae12", "--out", "{tmp}/cl", "--n-neighbors", "0"], "--n-neighbors 0: must be >= 2"),
    ("geometry.clusters", ["{tmp}/sae12", "--out", "{tmp}/cl", "--min-dist", "5"], "--min-dist 5"),
    ("geometry.clusters", ["{tmp}/sae12", "--out", "{tmp}/cl", "--resolution", "-1"], "--resolution -1: must be > 0"),
    # geometry.neighborhood
    ("geometry.neighborhood", [*NB, "--out", "{tmp}/a_file"], "is a file, not a folder"),
    ("geometry.neighborhood", [*NB, "--out", "{tmp}/nb", "--edge-cut", "3"], "--edge-cut 3"),
    ("geometry.neighborhood", [*NB, "--out", "{tmp}/nb", "--n-seeds", "0"], "--n-seeds 0"),
    ("geometry.neighborhood", ["{tmp}/sae12", "--members", "{tmp}/sae12=many", "--seeds", "1", "--out", "{tmp}/nb"], "many"),
    # geometry.atlas
    ("geometry.atlas.cli", ["{tmp}/sae12", "--out", "{tmp}/a_file"], "is a file, not a folder"),
    ("geometry.atlas.cli", ["{tmp}/sae12", "--out", "{tmp}/at", "--cut", "2"], "--cut 2"),
    ("geometry.atlas.cli", ["{tmp}/sae12", "--out", "{tmp}/at", "--tokens", "0"], "--tokens 0"),
    ("geometry.atlas.cli", ["{tmp}/missing", "--out", "{tmp}/at"], "missing"),
    ("geometry.atlas.cli", ["{tmp}/sae12", "--out", "{tmp}/at", "--compare", "{tmp}/sae16"], "not a geometry.compare"),
    ("geometry.atlas.cli", ["{tmp}/sae12", "--out", "{tmp}/at", "--link", "nourl"], "expected NAME=URL"),
    ("geometry.atlas.cli", ["{tmp}/sae12", "{tmp}/sae12", "--out", "{tmp}/at"], "distinct names"),
    # geometry.figures
    ("geometry.plot.cli", ["--data", "{tmp}/no_tables", "--out", "{tmp}/fig"], "no_tables"),
    ("geometry.plot.cli", ["--data", "{tmp}", "--out", "{tmp}/a_file"], "is a file, not a folder"),
    ("geometry.plot.cli", ["--data", "{tmp}", "--out", "{tmp}/fig", "--format", "bmp"], "bmp"),
]
if NO_CUDA:
    CASES += [
        ("sae.train.cli", _train("--device", "cuda"), "cuda"),
        ("sae.eval.cli", ["{tmp}/sae12", "--device", "cuda"], "cuda"),
        ("sae.interp.cli", ["{tmp}/sae12", "--out", "{tmp}/ctx", "--device", "cuda"], "cuda"),
        ("geometry.compare", ["{tmp}/sae12", "{tmp}/sae12", "--device", "cuda"], "cuda"),
    ]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    sae.save(random_sae(d_in=12, n=48), tmp / "sae12")
    sae.save(random_sae(d_in=16, n=48), tmp / "sae16")
    sae.save(random_sae(d_in=12, n=48), tmp / "corrupt")
    (tmp / "corrupt" / "cfg.json").write_text("{not json")
    _save_with_a_nan(tmp / "nan")
    (tmp / "a_file").write_text("not a folder")
    return tmp


def _save_with_a_nan(folder: Path) -> None:
    """A saved SAE whose decoder holds a NaN (written behind `save`'s back)."""
    from safetensors.torch import load_file, save_file

    sae.save(random_sae(d_in=12, n=48), folder)
    path = folder / "sae_weights.safetensors"
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.startswith("W_dec"))
    tensors[key][3, 2] = math.nan
    save_file(tensors, str(path))


def _forbid_models(monkeypatch):
    """Every case must fail before a model is loaded."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was refused")

    import sae.lm.models

    monkeypatch.setattr(sae.lm.models, "load_model", refuse)
    for name in ("sae.data.stream", "sae.eval.evaluate", "sae.interp.contexts"):
        module = importlib.import_module(name)
        if hasattr(module, "load_model"):
            monkeypatch.setattr(module, "load_model", refuse)


@pytest.mark.parametrize("module, argv, fragment", CASES,
                         ids=[f"{m.split('.')[-1] if m != 'sae.train.cli' else 'train'}:{' '.join(a)[-60:]}"
                              for m, a, _ in CASES])
def test_bad_input_is_one_message_and_exit_2(module, argv, fragment, inputs, monkeypatch, capsys):
    monkeypatch.setenv("SAE_CACHE", str(inputs / "cache"))
    _forbid_models(monkeypatch)
    main = importlib.import_module(module).main
    args = [a.format(tmp=inputs) for a in argv]
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: main(args))
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "Traceback" not in err and "AssertionError" not in err, err
    assert fragment.format(tmp=inputs) in err, err
    message = [line for line in err.splitlines() if "error:" in line]
    assert len(message) == 1, err


def test_the_battery_is_big_enough():
    assert len(CASES) >= 60


API = [
    (lambda tmp: sae.load(tmp / "no_such_sae"), "no_such_sae"),
    (lambda tmp: sae.load(tmp / "corrupt"), "cfg.json"),
    (lambda tmp: sae.load(tmp / "sae12", device="cuda" if NO_CUDA else "cuda:99"), "cuda"),
    (lambda tmp: sae.load(tmp / "sae12", device="quantum"), "quantum"),
    (lambda tmp: sae.load("L99R-8x"), "L99R-8x"),
    (lambda tmp: sae.save(random_sae(), tmp / "a_file"), "a_file"),
    (lambda tmp: sae.SparseAutoencoder(12, 48, activation="gelu"), "gelu"),
    (lambda tmp: __import__("sae.train", fromlist=["TrainConfig"]).TrainConfig(lr=-1.0), "--lr -1"),
    (lambda tmp: __import__("sae.train", fromlist=["SAESpec"]).SAESpec(k=0), "--k 0"),
    (lambda tmp: __import__("sae.lm.embedded", fromlist=["corpus_articles"]).corpus_articles("dev"), "dev"),
    (lambda tmp: __import__("geometry.similarity", fromlist=["resolve"]).top_k_cosine(
        torch.ones(4, 3), torch.ones(4, 5), k=1), "same d"),
    (lambda tmp: __import__("geometry.comparison", fromlist=["compare"]).compare(
        str(tmp / "sae12"), str(tmp / "sae12"), cut=1.5), "--cut 1.5"),
]


@pytest.mark.parametrize("call, fragment", API, ids=[str(i) for i in range(len(API))])
def test_the_python_api_raises_one_typed_error(call, fragment, inputs):
    with pytest.raises(SAEError) as e:
        call(inputs)
    assert fragment in str(e.value) and "\n" not in str(e.value).strip()


def _run_with_file_limit(kib: int, out: Path) -> subprocess.CompletedProcess:
    """`sae.train` in a shell whose files may not grow past `kib` KiB; its SAE's checkpoint is ~1 MiB."""
    script = (f"ulimit -f {kib}; exec {sys.executable} -m sae.train --sae s=x "
              + " ".join(a.format(tmp=out.parent) for a in TRAIN[:-1]) + f" {out} --n-features 2048")
    return subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_full_disk_at_the_start_is_one_message_before_any_work(tmp_path):
    result = _run_with_file_limit(16, tmp_path / "run")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"error: --out {tmp_path / 'run'} cannot be written: File too large" in result.stderr


def test_a_disk_that_fills_during_the_run_names_the_file_and_leaves_no_partial_file(tmp_path):
    """Room for the probe (64 KiB) and the logs, not for the checkpoint."""
    result = _run_with_file_limit(80, tmp_path / "run")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    line = [s for s in result.stderr.splitlines() if s.startswith("error:")]
    assert len(line) == 1 and line[0].endswith("state.safetensors: File too large"), result.stderr
    assert not list((tmp_path / "run").rglob("*.tmp")), "a partial file was left behind"
