import json

import pytest
import torch
from llama_scope_fixture import write_fixture
from safetensors.torch import load_file, save_file

import sae


@pytest.fixture
def folder(tmp_path):
    f = tmp_path / "Llama3_1-8B-Base-L15R-8x"
    write_fixture(f)
    return f


def _edit_json(folder, **changes):
    hp = json.loads((folder / "hyperparams.json").read_text())
    for k, v in changes.items():
        if v is None:
            hp.pop(k)
        else:
            hp[k] = v
    (folder / "hyperparams.json").write_text(json.dumps(hp))


def _edit_tensors(folder, **changes):
    path = folder / "checkpoints" / "final.safetensors"
    t = load_file(path)
    t.update(changes)
    save_file(t, path)


def test_missing_folder(tmp_path):
    with pytest.raises(sae.SAEFileError, match="no such file or folder"):
        sae.load(tmp_path / "nope")


def test_folder_without_sae(tmp_path):
    with pytest.raises(sae.SAEFileError, match="holds no SAE"):
        sae.load(tmp_path)


def test_missing_weights(folder):
    (folder / "checkpoints" / "final.safetensors").unlink()
    with pytest.raises(sae.SAEFileError, match="missing file: .*final.safetensors"):
        sae.load(folder)


def test_malformed_json(folder):
    (folder / "hyperparams.json").write_text("{'d_model': 32,")
    with pytest.raises(sae.FormatError, match="hyperparams.json is not valid JSON"):
        sae.load(folder)


def test_missing_keys(folder):
    _edit_json(folder, d_sae=None, jump_relu_threshold=None)
    with pytest.raises(sae.FormatError, match="lacks required key.*d_sae, jump_relu_threshold"):
        sae.load(folder)


def test_json_disagrees_with_tensors(folder):
    _edit_json(folder, d_sae=512)
    with pytest.raises(sae.FormatError, match=r"encoder.weight has shape \[256, 32\], expected \[512, 32\]"):
        sae.load(folder)


def test_tensors_disagree_with_each_other(folder):
    _edit_tensors(folder, **{"decoder.bias": torch.zeros(31, dtype=torch.bfloat16)})
    with pytest.raises(sae.FormatError, match=r"decoder.bias has shape \[31\], expected \[32\]"):
        sae.load(folder)


def test_missing_tensor(tmp_path, folder):
    t = load_file(folder / "checkpoints" / "final.safetensors")
    del t["encoder.bias"]
    save_file(t, folder / "checkpoints" / "final.safetensors")
    with pytest.raises(sae.FormatError, match="lacks tensor.*encoder.bias"):
        sae.load(folder)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights(folder, bad):
    w = load_file(folder / "checkpoints" / "final.safetensors")["decoder.weight"].clone()
    w[3, 7] = bad
    _edit_tensors(folder, **{"decoder.weight": w})
    with pytest.raises(sae.FormatError, match="decoder.weight holds 1 NaN/Inf"):
        sae.load(folder)


def test_non_finite_threshold(folder):
    _edit_json(folder, jump_relu_threshold="0.3")
    with pytest.raises(sae.FormatError, match="jump_relu_threshold must be a finite number"):
        sae.load(folder)


def test_truncated_safetensors(folder):
    path = folder / "checkpoints" / "final.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(sae.SAEFileError, match="not a readable safetensors file"):
        sae.load(folder)


def test_pickle_refused_unless_opted_in(folder):
    path = folder / "checkpoints" / "final.safetensors"
    torch.save(load_file(path), folder / "checkpoints" / "final.pt")
    path.unlink()
    with pytest.raises(sae.SAEFileError, match="pickle file.*allow_pickle=True"):
        sae.load(folder)
    with pytest.raises(sae.SAEFileError, match="pickle file"):
        sae.load(folder / "checkpoints" / "final.pt")
    model = sae.load(folder, allow_pickle=True)
    assert model.n_features == 256


def test_pickle_opt_in_still_refuses_code(folder, tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    (folder / "checkpoints" / "final.safetensors").unlink()
    torch.save({"x": Evil()}, folder / "checkpoints" / "final.pt")
    with pytest.raises(sae.SAEFileError, match="weights-only"):
        sae.load(folder, allow_pickle=True)


def test_unsupported_saelens_architecture(tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "gated", "d_in": 4, "d_sae": 8}))
    with pytest.raises(sae.FormatError, match="architecture 'gated' is not supported; supported: standard"):
        sae.load(tmp_path)
