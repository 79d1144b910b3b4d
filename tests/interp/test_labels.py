"""sae.interp.labels: the offline labeller finds planted words and titles; the LLM explainer against a local fake server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from saes import detector_sae

from sae.interp.contexts import top_contexts
from sae.interp.labels import ExplainerError, explain_features, format_contexts, label_features, parse_reply
from sae.interp.store import TopContexts

FILLER = ["the rain fell on the old town all night", "a small boat crossed the lake at dawn",
          "people sang songs in the market square", "the train left the station on time"]


def planted_corpus(words: list[str], where: dict[str, list[int]], n_docs: int = 24) -> list[dict]:
    docs = []
    for i in range(n_docs):
        text = FILLER[i % len(FILLER)]
        planted = [w for w in words if i in where[w]]
        if planted:
            text = f"{text} and then {' '.join(planted)} came back"
        docs.append({"title": f"Article {i}", "text": text})
    return docs


def test_labeller_finds_planted_words_and_titles(tiny_llama):
    model, tok = tiny_llama
    z, q = tok.convert_tokens_to_ids(["Z", "Q"])
    where = {"ZZ": [3, 11, 17], "QQQ": [5]}
    docs = planted_corpus(list(where), where)
    ctx = top_contexts(detector_sae(model, [z, q]), model=model, tokenizer=tok, dataset=docs, n_top=5,
                       context=256, shuffle=False, progress=False)
    labels = label_features(ctx)
    assert list(labels.columns[:5]) == ["feature", "label", "top_tokens", "top_titles", "score"]
    z_row, q_row, dead = labels.iloc[0], labels.iloc[1], labels.iloc[2]
    # the tiny tokenizer has one token per byte: the feature fires on each "Z" and labels the whole word
    assert z_row.top_tokens.split(", ")[0] == "zz" and z_row.score == 1.0 and z_row.n_contexts == 3
    assert z_row.top_titles == "Article 3; Article 11; Article 17"  # equal maxima: the document read first
    assert z_row.label == "zz (Article 3; Article 11)"
    assert q_row.top_tokens == "qqq" and q_row.top_titles == "Article 5"
    assert dead.label == "" and np.isnan(dead.score) and dead.n_contexts == 0
    assert label_features(ctx, features=[1]).equals(labels.iloc[[1]].reset_index(drop=True))


@pytest.mark.real_model
def test_labeller_on_the_embedded_model(smollm2):
    model, tok = smollm2
    words = [" pandemic", " famine"]
    ids = [tok(w, add_special_tokens=False)["input_ids"] for w in words]
    assert all(len(i) == 1 for i in ids)
    where = {"pandemic": [1, 6, 9], "famine": [2, 14]}
    docs = planted_corpus(list(where), where)
    ctx = top_contexts(detector_sae(model, [i[0] for i in ids]), model=model, tokenizer=tok, dataset=docs,
                       shuffle=False, progress=False)
    labels = label_features(ctx)
    assert labels.label.tolist()[:2] == ["pandemic (Article 1; Article 6)", "famine (Article 2; Article 14)"]
    assert labels.score.tolist()[:2] == [1.0, 1.0]


def test_labels_rank_whole_words_by_their_corpus_frequency(tiny_llama, tmp_path):
    """A feature on "Z" inside four words (one token per byte here, so "É" is two pieces that decode to
    U+FFFD alone): the words rank by share * log(share / frequency) with word counts of the corpus, equal
    to an independent count over the documents' words (each word has a letter of its own, so the bound by
    its rarest token is its count); score is the share of contexts peaking in a label word."""
    model, tok = tiny_llama
    where = {"JZ": [1, 4, 9, 13], "KZZZK": [6], "VZ": [2, 20], "ÉZ": [15]}
    assert all(tok.decode([i]) == "\ufffd" for i in tok("É", add_special_tokens=False)["input_ids"])
    docs = planted_corpus(list(where), where)
    ctx = top_contexts(detector_sae(model, tok.convert_tokens_to_ids(["Z"])), model=model, tokenizer=tok,
                       dataset=docs, n_top=20, context=256, shuffle=False, progress=False)
    assert ctx.counts[0] == sum(d["text"].count("Z") for d in docs)  # it fires on "Z" alone
    corpus = [w.lower() for d in docs for w in d["text"].split()]
    mass = {w.lower(): len(at) * w.count("Z") for w, at in where.items()}
    kl = {w: m / sum(mass.values()) * np.log(m / sum(mass.values()) / (corpus.count(w) / len(corpus)))
          for w, m in mass.items()}
    ranked = sorted(kl, key=kl.get, reverse=True)
    row = label_features(ctx).iloc[0]
    assert row.top_tokens == ", ".join(ranked) and "éz" in ranked
    peaks = [w.lower() for w, at in where.items() for _ in at]  # one context per document, on its word
    assert row.n_contexts == len(peaks) and row.score == np.mean([w in ranked[:3] for w in peaks]) < 1
    assert label_features(TopContexts.load(ctx.save(tmp_path))).equals(label_features(ctx))  # the bytes are saved


@pytest.mark.real_model
def test_labels_are_whole_words_on_the_embedded_model(smollm2):
    """Features on a byte piece of "ő" in " Erdős" and on middle pieces of " antidisestablishment" and
    " Dvořák" are labelled with the whole words, never with U+FFFD pieces."""
    model, tok = smollm2
    where = {"Erdős": [1, 6, 9], "antidisestablishment": [2, 14], "Dvořák": [5, 17]}
    ids = {w: tok(" " + w, add_special_tokens=False)["input_ids"] for w in where}
    assert all(tok.decode(i) == " " + w and len(i) >= 3 for w, i in ids.items())
    pieces = [i for i in ids["Erdős"] if tok.decode([i]) == "\ufffd"]
    assert len(pieces) == 2  # "ő": two byte pieces, each U+FFFD alone
    fire = [pieces[1], ids["antidisestablishment"][1], ids["Dvořák"][1]]
    docs = planted_corpus(list(where), where)
    ctx = top_contexts(detector_sae(model, fire), model=model, tokenizer=tok, dataset=docs, shuffle=False,
                       progress=False)
    labels = label_features(ctx).iloc[:3]
    assert labels.label.tolist() == ["erdős (Article 1; Article 6)", "antidisestablishment (Article 2; Article 14)",
                                     "dvořák (Article 5; Article 17)"]
    assert labels.score.tolist() == [1.0, 1.0, 1.0]  # every context peaks in its planted word
    assert not labels.top_tokens.str.contains("\ufffd").any()


# ---------------------------------------------------------------------------------------------------
# the explainer against a fake OpenAI-compatible server on 127.0.0.1
# ---------------------------------------------------------------------------------------------------
class FakeServer:
    """Answers chat completions; records every request. mode: ok | garbage | error."""

    def __init__(self, mode: str = "ok"):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if mode == "error":
                    self.send_response(503)
                    self.end_headers()
                    self.wfile.write(b"overloaded")
                    return
                user = body["messages"][1]["content"]
                n = user.count("<START>")
                content = (json.dumps({"description": f"saw {n} contexts", "score": 4}) if mode == "ok"
                           else "I cannot tell.")
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def many_contexts(tiny_llama):
    model, tok = tiny_llama
    e = tok.convert_tokens_to_ids("e")
    docs = [{"title": f"T{i}", "text": f"{FILLER[i % 4]} number {i}"} for i in range(30)]
    return top_contexts(detector_sae(model, [e]), model=model, tokenizer=tok, dataset=docs, context=256,
                        progress=False)


def test_explainer_protocol_against_a_fake_server(many_contexts, monkeypatch):
    server = FakeServer("ok")
    try:
        monkeypatch.setenv("SAE_EXPLAINER_URL", server.url)
        monkeypatch.setenv("SAE_EXPLAINER_MODEL", "fake-model")
        monkeypatch.setenv("SAE_EXPLAINER_KEY", "sk-test")
        out = explain_features(many_contexts, [0, 1], progress=False)
    finally:
        server.close()
    assert out.columns.tolist() == ["feature", "description", "score"]
    assert out.iloc[0].description == "saw 20 contexts" and out.iloc[0].score == 4.0
    assert out.iloc[1].description == "" and np.isnan(out.iloc[1].score)  # never fired: not sent
    (req,) = server.requests
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["model"] == "fake-model"
    user = req["body"]["messages"][1]["content"]
    assert user == format_contexts(many_contexts, 0)
    assert user.count("<START>") == user.count("<END>") == 20
    block = user.split("<START>\n")[1].split("\n<END>")[0].splitlines()
    pieces = [line.rsplit("\t", 1) for line in block]
    assert all(a.isdigit() and 0 <= int(a) <= 10 for _, a in pieces)
    assert any(t == "e" and a == "10" for t, a in pieces)  # the planted token carries the maximum


def test_explainer_failures(many_contexts, monkeypatch):
    monkeypatch.delenv("SAE_EXPLAINER_URL", raising=False)
    with pytest.raises(ExplainerError, match="SAE_EXPLAINER_URL"):
        explain_features(many_contexts, [0], model="m")
    for mode in ("garbage", "error"):
        server = FakeServer(mode)
        try:
            if mode == "garbage":
                out = explain_features(many_contexts, [0], url=server.url, model="m", progress=False)
                assert out.iloc[0].description == "I cannot tell." and np.isnan(out.iloc[0].score)
            else:
                with pytest.raises(ExplainerError, match="HTTP 503"):
                    explain_features(many_contexts, [0], url=server.url, model="m", progress=False)
        finally:
            server.close()
    with pytest.raises(ExplainerError, match="cannot reach"):
        explain_features(many_contexts, [0], url="http://127.0.0.1:9/v1", model="m", timeout=5, progress=False)


def test_parse_reply():
    assert parse_reply('Sure: {"description": "dates", "score": 5}') == ("dates", 5.0)
    assert parse_reply("Years in history.\nScore: 3") == ("Years in history.\nScore: 3", 3.0)
    d, s = parse_reply('{"description": "x", "score": 9}')
    assert d == "x" and np.isnan(s)
