"""geometry.stamps: a build is current only while its settings, SAEs, input files and code are unchanged."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from geometry.stamps import contents_digest, current, make_stamp, write_stamp
from sae.model import SparseAutoencoder


@dataclass
class Settings:
    out: Path
    tokens: int = 100
    members: tuple = (1, 2)
    quiet: bool = False
    rebuild: bool = False


def test_a_stamp_is_current_until_an_input_changes(tmp_path):
    torch.manual_seed(0)
    model = SparseAutoencoder(d_in=8, n_features=16, activation="relu")
    inputs = tmp_path / "contexts"
    inputs.mkdir()
    (inputs / "a.bin").write_bytes(b"1234")
    out = tmp_path / "out"
    stamp = make_stamp(Settings(out), [model], [inputs], links=[("a", "b")])
    assert not current(out, stamp)  # nothing written yet
    write_stamp(out, stamp)
    assert current(out, make_stamp(Settings(out), [model], [inputs], links=[("a", "b")]))
    assert current(out, make_stamp(Settings(out, quiet=True, rebuild=True), [model], [inputs], links=[("a", "b")]))
    assert not current(out, make_stamp(Settings(out, tokens=101), [model], [inputs], links=[("a", "b")]))
    assert not current(out, make_stamp(Settings(out), [model], [inputs], links=[("a", "c")]))
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.W_dec[3, 1] += 1e-3
    assert not current(out, make_stamp(Settings(out), [model], [inputs], links=[("a", "b")]))
    model.load_state_dict(saved)
    assert current(out, make_stamp(Settings(out), [model], [inputs], links=[("a", "b")]))
    st = (inputs / "a.bin").stat()
    os.utime(inputs / "a.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # touched, same bytes
    assert not current(out, make_stamp(Settings(out), [model], [inputs], links=[("a", "b")]))
    (out / "stamp.json").write_text("{not json")
    assert not current(out, stamp)


def test_contents_digest_ignores_rewrites_with_the_same_bytes(tmp_path):
    path = tmp_path / "features_b.csv"
    path.write_text("feature,class\n0,novel\n")
    before = contents_digest([path, tmp_path / "missing.csv"])
    path.write_text("feature,class\n0,novel\n")
    assert contents_digest([path, tmp_path / "missing.csv"]) == before
    path.write_text("feature,class\n0,same\n")
    assert contents_digest([path, tmp_path / "missing.csv"]) != before
