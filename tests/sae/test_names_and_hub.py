import os
import subprocess
import sys

import pytest
from llama_scope_fixture import write_fixture

import sae
from sae.formats.names import hook_points, parse_name, site_of_hooks


def test_all_256_llama_scope_names():
    names = [f"L{layer}{p}-{w}x" for layer in range(32) for p in ("R", "A", "M", "TC") for w in (8, 32)]
    parsed = {parse_name(n) for n in names}
    assert len(parsed) == 256
    n = parse_name("L15TC-32x")
    assert (n.suite, n.layer, n.position, n.expansion, n.n_features) == ("llama-scope", 15, "TC", 32, 131072)
    assert n.hf_repo == "fnlp/Llama3_1-8B-Base-LXTC-32x"
    assert n.hf_folder == "Llama3_1-8B-Base-L15TC-32x"
    assert n.hooks == ("blocks.15.ln2.hook_normalized", "blocks.15.hook_mlp_out")
    assert parse_name("llama-scope:L0R-8x-TopK") == parse_name("L0R-8x")
    assert str(parse_name("demo:L15R-8x-Vanilla")) == "L15R-8x-Vanilla"
    assert parse_name("demo:L29M-32x").n_features == 32 * 576
    ladder = parse_name("demo:L15R-8x-s1")
    assert (ladder.expansion, ladder.variant, ladder.seed, str(ladder)) == (8, "TopK", 1, "L15R-8x-s1")
    assert str(parse_name("demo:L15R-8x-Vanilla-s2")) == "L15R-8x-Vanilla-s2"
    assert str(parse_name("demo:L15R-8x-s0")) == "L15R-8x" and parse_name("demo:L15R-16x").n_features == 16 * 576


@pytest.mark.parametrize(
    "bad,message",
    [
        ("L32R-8x", "layer 32 out of range"),
        ("L15X-8x", "unknown position 'X'"),
        ("L15R-16x", "width 16x does not exist"),
        ("L15R-8x-Vanilla", "no Vanilla SAEs"),
        ("L15R-8x-s1", "no -s1 seeds"),
        ("demo:L15R-64x", "width 64x does not exist; demo has 8x, 16x, 32x"),
        ("demo:L30R-8x", "layer 30 out of range"),
        ("gemma:L1R-8x", "unknown suite 'gemma'"),
        ("llama-scope:R15", "not an SAE name"),
    ],
)
def test_bad_names(bad, message):
    with pytest.raises(sae.BadNameError, match=message):
        parse_name(bad)
    with pytest.raises(sae.BadNameError, match=message):
        sae.load(bad)


def test_hook_round_trip():
    for p in ("R", "A", "M", "TC"):
        assert site_of_hooks(*hook_points(7, p)) == (7, p)
    assert site_of_hooks("blocks.7.hook_resid_pre") is None


def test_local_dir_then_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    # 1. a folder given by $LLAMA_SCOPE_DIR (flat or per-repo)
    write_fixture(tmp_path / "local" / "Llama3_1-8B-Base-LXR-8x" / "Llama3_1-8B-Base-L15R-8x")
    monkeypatch.setenv("LLAMA_SCOPE_DIR", str(tmp_path / "local"))
    model = sae.load("L15R-8x")
    assert model.meta.name == "L15R-8x" and "local" in model.meta.source
    # 2. the HF hub cache layout: models--org--repo/snapshots/<rev>/<folder>, refs/main -> rev
    monkeypatch.delenv("LLAMA_SCOPE_DIR")
    repo = tmp_path / "hub" / "models--fnlp--Llama3_1-8B-Base-LXM-32x"
    rev = "0123456789abcdef0123456789abcdef01234567"
    write_fixture(repo / "snapshots" / rev / "Llama3_1-8B-Base-L2M-32x", layer=2, position="M", f=1024)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    model = sae.load("llama-scope:L2M-32x")
    assert model.n_features == 1024 and model.meta.source.endswith(f"{rev}/Llama3_1-8B-Base-L2M-32x")


def _run(code: str, **env) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter, as a script that opted into one-line error messages."""
    code = f"from sae.errors import install_excepthook; install_excepthook(); {code}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_offline_without_cache_prints_the_fetch_command(tmp_path):
    r = _run("import sae; sae.load('L15R-8x')", HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path), LLAMA_SCOPE_DIR="")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert "hf download fnlp/Llama3_1-8B-Base-LXR-8x --include 'Llama3_1-8B-Base-L15R-8x/*'" in r.stderr
    assert "demo:L15R-8x" in r.stderr


def test_unbuilt_demo_sae_says_how_to_build_it(tmp_path):
    r = _run("import sae; sae.load('demo:L15R-8x')", SAE_CACHE=str(tmp_path))
    assert r.returncode != 0 and "Traceback" not in r.stderr and "make demo" in r.stderr


def test_demo_names_resolve_to_the_cache(tmp_path, monkeypatch):
    from saes import random_sae

    monkeypatch.setenv("SAE_CACHE", str(tmp_path))
    sae.save(random_sae("topk"), tmp_path / "demo" / "L15R-8x")
    assert sae.load("demo:L15R-8x").meta.name == "demo:L15R-8x"


def test_importing_sae_leaves_the_excepthook_alone():
    r = subprocess.run([sys.executable, "-c", "import sys; before = sys.excepthook; import sae, geometry, sae.train; "
                        "print(sys.excepthook is before)"], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "True", r.stderr
