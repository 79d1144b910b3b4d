"""Cross-library checks against SAELens itself; skipped unless `sae_lens` is importable.

    python3 -m venv /tmp/slvenv && /tmp/slvenv/bin/pip install torch==2.13.0 && \
    /tmp/slvenv/bin/pip install sae-lens pytest && /tmp/slvenv/bin/pip install --no-deps -e .
    /tmp/slvenv/bin/python -m pytest tests/sae/test_saelens_interop.py
"""

import pytest
import torch
from saes import random_sae

import sae
from sae import save

sae_lens = pytest.importorskip("sae_lens")


@pytest.mark.parametrize("fmt", ["saelens", "native"])
@pytest.mark.parametrize("activation,d_out", [("topk", None), ("relu", None), ("jumprelu", None), ("relu", 9), ("jumprelu", 9)])
def test_our_files_open_in_saelens(tmp_path, fmt, activation, d_out):
    ours = random_sae(activation, d_out=d_out, threshold=0.5)
    ours.meta.hook_in = ours.meta.hook_out = "blocks.4.hook_resid_post"
    save(ours, tmp_path, format=fmt)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path), device="cpu")
    x = torch.randn(32, 12)
    with torch.no_grad():
        assert torch.allclose(theirs(x), ours(x), atol=1e-4)


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_saelens_files_open_here(tmp_path, architecture):
    from sae_lens.saes.sae import SAE, SAEConfig

    cfg_cls = {"standard": sae_lens.StandardSAEConfig, "topk": sae_lens.TopKSAEConfig,
               "jumprelu": sae_lens.JumpReLUSAEConfig}[architecture]
    kwargs = {"k": 4} if architecture == "topk" else {}
    cfg = cfg_cls(d_in=12, d_sae=48, apply_b_dec_to_input=architecture == "standard", **kwargs)
    theirs = SAE.from_dict(cfg.to_dict()) if hasattr(SAE, "from_dict") else sae_lens.SAE(cfg)
    assert isinstance(cfg, SAEConfig)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, generator=g).abs() if p.ndim == 1 and p.shape[0] == 48 else torch.randn(p.shape, generator=g))
    theirs.save_model(str(tmp_path))
    ours = sae.load(tmp_path)
    x = torch.randn(32, 12)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-4)
