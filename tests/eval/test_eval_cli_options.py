"""`python -m sae.evaluate` and `python -m sae.postprocess` flags: out-of-range values are one `error:` line
(exit 2) before any model loads; `--lm-tokens all` means every token."""

from __future__ import annotations

import pytest

import sae.eval.cli as eval_cli
import sae.lm.models
import sae.train.postprocess as postprocess
from sae.errors import run_cli


class Stop(Exception):
    """Raised by the stand-ins: nothing past the flags may run."""


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model or evaluating fails the test; the fake evaluate records what it was given."""
    calls = []

    def fake_evaluate(*args, **kwargs):
        calls.append(kwargs)
        raise Stop

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(sae.lm.models, "load_model", refuse)
    monkeypatch.setattr("sae.eval.evaluate.load_model", refuse)
    monkeypatch.setattr(eval_cli, "evaluate", fake_evaluate)
    monkeypatch.setattr(postprocess, "postprocess_folder", refuse)
    return calls


def one_line_error(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: main(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("flag,value", [
    ("--tokens", "-5"), ("--tokens", "0"), ("--batch-size", "0"), ("--dense-threshold", "7"),
    ("--dense-threshold", "0"), ("--lm-tokens", "-1"), ("--lm-tokens", "-5"), ("--context", "1"),
    ("--dead-window", "0"), ("--massive-factor", "-1"), ("--modes", "native,bogus"), ("--position-buckets", "0"),
])
def test_evaluate_rejects_out_of_range_flags(no_model, capsys, tmp_path, flag, value):
    err = one_line_error(capsys, eval_cli.main, ["demo:L15R-8x", flag, value, "--out", str(tmp_path / "eval")])
    shown = value.split(",")[-1]  # --modes names the bad mode
    assert flag in err and shown in err
    assert not no_model and not (tmp_path / "eval").exists()  # failed before evaluate and before --out


@pytest.mark.parametrize("argv,lm_tokens", [([], 20_000), (["--lm-tokens", "all"], None), (["--lm-tokens", "0"], 0),
                                           (["--lm-tokens", "500"], 500)])
def test_lm_tokens_all_means_every_token(no_model, tmp_path, argv, lm_tokens):
    with pytest.raises(Stop):
        eval_cli.main(["demo:L15R-8x", *argv, "--out", str(tmp_path)])
    assert no_model[0]["lm_tokens"] == lm_tokens  # evaluate's None: all of --tokens


def test_evaluate_passes_the_flags_on(no_model, tmp_path):
    with pytest.raises(Stop):
        eval_cli.main(["demo:L15R-8x", "--tokens", "300", "--modes", "native, topk", "--dense-threshold", "1",
                       "--massive-factor", "0", "--pack", "--context", "64", "--out", str(tmp_path / "o")])
    kw = no_model[0]
    assert (kw["tokens"], kw["modes"], kw["dense_threshold"], kw["massive_factor"], kw["pack"], kw["context"]) == (
        300, ["native", "topk"], 1.0, 0.0, True, 64)
    assert (tmp_path / "o").is_dir()  # check_writable made --out


def test_postprocess_rejects_zero_tokens(no_model, capsys, tmp_path):
    err = one_line_error(capsys, postprocess.main, [str(tmp_path), "--tokens", "0"])
    assert "--tokens 0" in err
