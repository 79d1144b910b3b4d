"""Shared fixtures. Each group is in clearly named functions; add new groups below, do not reuse names.

Language-model fixtures (sites, data, activations, evaluate):
- `tiny_tokenizer`: a byte-level fast tokenizer (259 ids: 0 <|endoftext|>, 1 BOS <s>, 2 EOS/pad </s>).
- `tiny_llama`: (model, tokenizer) of a 4-layer random LlamaForCausalLM (d_model 64), float32, eval mode.
- `tiny_llama_dir`: the same saved as an HF folder (for paths given to the CLI).
- `smollm2`: (model, tokenizer) of the embedded SmolLM2-135M-Instruct; skips if it cannot be fetched.
- `tiny_corpus`: a few dozen short English documents.

Suite fixtures (demo, grid, notebooks):
- `isolated_cache`: a fresh $SAE_CACHE folder sharing the fetched embedded model and corpus (a symlink),
  so tests that build suites never touch the user's own `$SAE_CACHE/demo`.
- `tiny_demo`: (cache folder, output folder) after `make demo` ran with a tiny budget in `isolated_cache`.
"""

from __future__ import annotations

import pytest
import torch

TINY_D = 64
TINY_LAYERS = 4


def make_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<|endoftext|>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>", unk_token="<|endoftext|>"
    )


def make_tiny_llama(seed: int = 0, model_type: str = "llama", **overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = dict(
        vocab_size=259, hidden_size=TINY_D, intermediate_size=128, num_hidden_layers=TINY_LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1,
        eos_token_id=2, pad_token_id=2, tie_word_embeddings=False,
    )
    cfg.update(overrides)
    config = AutoConfig.for_model(model_type, **cfg)
    model = AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)
    with torch.no_grad():  # larger random weights so every site carries a real signal
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0, 0.15)
    return model


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama(tiny_tokenizer):
    return make_tiny_llama(), tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_llama, tmp_path_factory):
    model, tok = tiny_llama
    folder = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def smollm2():
    from sae.errors import FetchError
    from sae.lm.embedded import load_model

    try:
        return load_model()
    except FetchError as e:
        pytest.skip(f"the embedded model is not available here: {e}")


TINY_CORPUS = [
    "The cat sat on the mat and looked out of the window at the rain.",
    "Paris is the capital of France. It is known for the Eiffel Tower.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "A sparse autoencoder learns a dictionary of features from activations.",
    "The mitochondria is the powerhouse of the cell, producing energy.",
    "In 1969, astronauts landed on the Moon for the first time.",
    "Bach wrote many cantatas, fugues and concertos in the Baroque era.",
    "Photosynthesis turns light, water and carbon dioxide into sugar.",
] * 4


@pytest.fixture
def tiny_corpus():
    return list(TINY_CORPUS)


REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
TINY_DEMO_ARGS = "--distinct-tokens 2048 --epochs 2 --threshold-tokens 2048 --eval-tokens 512 --lm-tokens 128"


@pytest.fixture(scope="session")
def isolated_cache(smollm2, tmp_path_factory):
    from sae.io import cache_dir
    from sae.lm.embedded import corpus_articles

    corpus_articles("heldout")  # fetched into the shared folder before it is linked
    root = tmp_path_factory.mktemp("sae_cache")
    (root / "embedded").symlink_to(cache_dir("embedded"), target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def tiny_demo(isolated_cache, tmp_path_factory):
    import os
    import subprocess

    out = tmp_path_factory.mktemp("demo_out")
    env = {**os.environ, "SAE_CACHE": str(isolated_cache)}
    env.pop("DEMO_REBUILD", None)
    run = subprocess.run(["make", "-s", "demo", f"DEMO_OUT={out}", f"DEMO_ARGS={TINY_DEMO_ARGS}", "DEMO_CONTEXT_TOKENS=1024"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return isolated_cache, out, run.stdout
