"""`python -m sae.contexts` flags: out-of-range values are one `error:` line (exit 2) before any model loads;
a folder that already holds contexts is refused without --resume (command line and Python API)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_CORPUS
from saes import site_sae

import sae.interp.cli as contexts_cli
import sae.lm.models
from sae.errors import run_cli
from sae.interp.contexts import top_contexts
from sae.interp.store import STATE_FILE, ContextsError, TopContexts

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(sae.lm.models, "load_model", refuse)
    monkeypatch.setattr("sae.interp.contexts.load_model", refuse)


def one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: contexts_cli.main(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("flags,shown", [
    (["--tokens", "0"], "--tokens 0"), (["--n-top", "-1"], "--n-top -1"), (["--n-top", "0"], "--n-top 0"),
    (["--n-random", "-1"], "--n-random -1"), (["--context", "1"], "--context 1"),
    (["--batch-size", "0"], "--batch-size 0"), (["--checkpoint-s", "0"], "--checkpoint-s 0"),
    (["--window", "-1", "3"], "--window -1 3"), (["--window", "4", "-2"], "--window 4 -2"),
])
def test_contexts_rejects_out_of_range_flags(no_model, capsys, tmp_path, flags, shown):
    err = one_line_error(capsys, ["demo:L15R-8x", "--out", str(tmp_path / "c"), *flags])
    assert shown in err
    assert not (tmp_path / "c").exists()  # failed before --out was made


def test_collecting_into_a_folder_with_contexts_needs_resume(tiny_llama, tmp_path, capsys, monkeypatch):
    model, tok = tiny_llama
    s = site_sae(HOOK, activation="jumprelu", n=32)
    kw = dict(model=model, tokenizer=tok, dataset=TINY_CORPUS, n_top=3, n_random=2, window=(4, 1), batch_size=2,
              context=128, progress=False)
    folder = tmp_path / "c"
    part = top_contexts(s, tokens=40, out=folder, **kw)
    saved = (folder / STATE_FILE).read_bytes()
    with pytest.raises(ContextsError, match="already holds contexts.*resume"):
        top_contexts(s, tokens=40, out=folder, **kw)
    assert (folder / STATE_FILE).read_bytes() == saved  # untouched
    resumed = top_contexts(s, tokens=10**6, out=folder, resume=True, **kw)
    assert resumed.tokens > part.tokens and resumed.complete
    np.testing.assert_array_equal(TopContexts.load(folder).counts, resumed.counts)
    # the command line refuses the same way, before any model loads
    monkeypatch.setattr("sae.interp.contexts.load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    err = one_line_error(capsys, ["demo:L15R-8x", "--out", str(folder), "--quiet"])
    assert str(folder) in err and "--resume" in err
