"""Meta-features: a planted dictionary whose atoms the meta SAE must find, dead rows, labels, the files,
the command's bad input, and the command on the tiny demo suite."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from geometry.meta import main, meta_features
from sae.errors import run_cli

ROOT = Path(__file__).resolve().parents[2]
D, M, F = 64, 32, 512
PLANTED = dict(n_meta=M, k=4, epochs=100, batch_size=128, lr=2e-2)
# TopK always fills its k slots, so a row of 2-3 atoms also gets small fill-in activations; planted
# coefficients are >= ~0.25 (weights 0.5-1 over at most 4 atoms, normalised), so "active" means > 0.1
ACTIVE = 0.1


def planted(seed: int = 0, noise: float = 0.02) -> tuple[np.ndarray, np.ndarray, list[set[int]]]:
    """atoms [M, d] (unit), rows [F, d]: each a normalised positive combination of 2-4 atoms plus noise."""
    g = np.random.default_rng(seed)
    atoms = g.standard_normal((M, D))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    rows, sets = [], []
    for _ in range(F):
        s = g.choice(M, g.integers(2, 5), replace=False)
        r = g.uniform(0.5, 1.0, len(s)) @ atoms[s] + noise * g.standard_normal(D)
        rows.append(r / np.linalg.norm(r))
        sets.append(set(s.tolist()))
    return atoms, np.asarray(rows, dtype=np.float32), sets


def mean_f1(members: pd.DataFrame, meta_to_atom: np.ndarray, sets: list[set[int]], threshold: float) -> float:
    active = members[members.activation > threshold].groupby("feature")["meta"].agg(
        lambda s: {int(meta_to_atom[m]) for m in s})
    scores = []
    for i, truth in enumerate(sets):
        got = active.get(i, set())
        tp = len(got & truth)
        scores.append(0.0 if tp == 0 else 2 * tp / (len(got) + len(truth)))
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def planted_run():
    atoms, rows, sets = planted()
    return atoms, rows, sets, meta_features(torch.from_numpy(rows), **PLANTED)


def test_planted_atoms_are_recovered(planted_run):
    atoms, rows, sets, m = planted_run
    dirs = m.sae.feature_directions().detach().numpy()  # [n_meta, d]
    cos = atoms @ dirs.T  # [M, n_meta]
    assert np.median(cos.max(1)) >= 0.9
    meta_to_atom = cos.argmax(0)
    assert mean_f1(m.members, meta_to_atom, sets, ACTIVE) >= 0.8
    assert mean_f1(m.members, meta_to_atom, sets, 0.0) >= 0.7  # every positive activation counted
    assert m.l0 <= 4 and m.explained_variance > 0.8


def test_explained_variance_is_the_centred_one(planted_run):
    _, rows, _, m = planted_run
    with torch.no_grad():
        rec = m.sae(torch.from_numpy(rows)).numpy().astype(np.float64)
    x = rows.astype(np.float64)
    ev = 1 - ((x - rec) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert m.explained_variance == pytest.approx(ev, abs=1e-6)
    assert m.summary["explained_variance"] == m.explained_variance


def test_tables_are_consistent(planted_run):
    _, rows, _, m = planted_run
    t, mem = m.table, m.members
    assert len(t) == M and sorted(t.meta) == list(range(M))
    counts = mem.groupby("meta").size().reindex(range(M), fill_value=0).to_numpy()
    assert (t.set_index("meta").n_members.sort_index().to_numpy() == counts).all()
    assert t.share.to_numpy() == pytest.approx(t.n_members.to_numpy() / F)
    assert (mem.activation > 0).all() and mem.feature.between(0, F - 1).all()
    assert mem.groupby("feature").size().max() <= 4


def test_dead_rows_are_left_out_and_labels_appear(tmp_path):
    _, rows, _ = planted()
    rows = rows[:256]
    dead = np.zeros(len(rows), dtype=bool)
    dead[::4] = True
    labels = pd.DataFrame({"feature": np.arange(len(rows)), "label": [f"concept {i}" for i in range(len(rows))]})
    small = dict(n_meta=16, k=2, epochs=5, batch_size=64, lr=1e-2)
    m = meta_features(torch.from_numpy(rows), dead=dead, labels=labels, **small)
    assert m.summary["n_rows"] == 192 and m.summary["n_dead"] == 64
    assert not set(m.members.feature) & set(np.flatnonzero(dead))
    assert (m.members.label == "concept " + m.members.feature.astype(str)).all()
    assert m.table.top_labels.str.contains("concept").any() and m.table.nearest_labels.str.contains("concept").any()
    nearest = {int(i) for s in m.table.nearest for i in s.split()}
    assert not nearest & set(np.flatnonzero(dead))
    # ids instead of a mask give the same rows
    m2 = meta_features(torch.from_numpy(rows), dead=np.flatnonzero(dead), **small)
    assert m2.summary["n_rows"] == 192

    m.write(tmp_path / "meta")
    table = pd.read_csv(tmp_path / "meta" / "meta_features.csv", keep_default_na=False)
    members = pd.read_csv(tmp_path / "meta" / "members.csv", keep_default_na=False)
    summary = json.loads((tmp_path / "meta" / "summary.json").read_text())
    assert list(table.columns[:3]) == ["meta", "n_members", "share"] and len(table) == 16
    assert list(members.columns) == ["meta", "feature", "activation", "label"] and len(members) == len(m.members)
    assert summary["n_meta"] == 16 and summary["explained_variance"] == pytest.approx(m.explained_variance)
    assert not list((tmp_path / "meta").glob(".*tmp"))


def test_bad_dead_mask_is_one_typed_error():
    from sae.errors import SAEError

    with pytest.raises(SAEError, match="dead mask"):
        meta_features(torch.randn(32, 8), dead=np.zeros(5, dtype=bool), epochs=1)
    with pytest.raises(SAEError, match="--k 9"):
        meta_features(torch.randn(32, 8), n_meta=4, k=9, epochs=1)


@pytest.mark.parametrize("argv, fragment", [
    (["{sae}", "--out", "{tmp}/o", "--k", "0"], "--k 0: must be >= 1"),
    (["{sae}", "--out", "{tmp}/o", "--lr", "nan"], "--lr nan: must be a finite number"),
    (["{sae}", "--out", "{tmp}/o", "--epochs", "-1"], "--epochs -1: must be > 0"),
    (["{tmp}/no_such_sae", "--out", "{tmp}/o"], "no_such_sae"),
    (["{sae}", "--out", "{tmp}/a_file"], "is a file, not a folder"),
    (["{sae}", "--out", "{tmp}/o", "--labels", "{tmp}/no_labels"], "no_labels"),
    (["{sae}", "--out", "{tmp}/o", "--freq", "{tmp}/freq.csv"], "3 firing frequencies for 48 features"),
])
def test_bad_input_is_one_error_line_and_exit_2(argv, fragment, tmp_path, capsys):
    from saes import random_sae

    import sae

    sae.save(random_sae(d_in=12, n=48), tmp_path / "sae12")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "freq.csv").write_text("feature,frequency\n0,0.1\n1,0\n2,0.3\n")
    args = [a.format(tmp=tmp_path, sae=tmp_path / "sae12") for a in argv]
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: main(args))
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "Traceback" not in err
    assert fragment in err.format(tmp=tmp_path), err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1, err


def test_the_command_writes_its_files(tmp_path, capsys):
    from saes import random_sae

    import sae

    sae.save(random_sae(d_in=12, n=48), tmp_path / "sae12")
    freq = pd.DataFrame({"feature": range(48), "frequency": [0.0] * 8 + [0.1] * 40})
    freq.to_csv(tmp_path / "freq.csv", index=False)
    code = main([str(tmp_path / "sae12"), "--out", str(tmp_path / "o"), "--freq", str(tmp_path / "freq.csv"),
                 "--epochs", "2", "--batch-size", "16", "--quiet"])
    assert code == 0 and capsys.readouterr().out == ""
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["n_rows"] == 40 and summary["n_dead"] == 8 and summary["n_meta"] == 10


@pytest.mark.real_model
def test_on_the_tiny_demo_suite(tiny_demo, tmp_path):
    cache, out, _ = tiny_demo
    labels = Path(out) / "threats" / "labels"
    cmd = [sys.executable, "-m", "geometry.meta", "demo:L15R-32x", "--out", str(tmp_path / "meta"),
           "--epochs", "2", "--n-meta", "512"]
    if labels.is_dir():
        cmd += ["--labels", str(labels)]
    run = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "SAE_CACHE": str(cache)}, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    summary = json.loads((tmp_path / "meta" / "summary.json").read_text())
    ev = summary["explained_variance"]
    assert math.isfinite(ev) and -1 < ev <= 1
    table = pd.read_csv(tmp_path / "meta" / "meta_features.csv", keep_default_na=False)
    members = pd.read_csv(tmp_path / "meta" / "members.csv", keep_default_na=False)
    assert len(table) == summary["n_meta"] and len(members) > 0
    if labels.is_dir() and summary["labelled"]:
        assert (members.label != "").any()
