"""`make demo` end to end on a tiny budget (real model, real corpus, isolated cache), and the demo's
rebuild / resume decisions."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from types import SimpleNamespace

import pandas as pd
import pytest
from conftest import REPO, TINY_DEMO_ARGS

from sae.errors import SAEError, run_cli


@pytest.mark.real_model
def test_make_demo_end_to_end(tiny_demo):
    cache, out, stdout = tiny_demo
    suite = cache / "demo"
    for name, n in (("L15R-8x", 4608), ("L15R-32x", 18432), ("L15R-8x-Vanilla", 4608)):
        cfg = json.loads((suite / name / "cfg.json").read_text())
        assert cfg["d_sae"] == n and cfg["d_in"] == 576
    built = json.loads((suite / "build.json").read_text())
    assert (built["distinct_tokens"], built["epochs"], built["calibration"]) == (2048, 2, "per-feature")
    postprocessed = json.loads((suite / "L15R-8x" / "postprocess.json").read_text())
    assert postprocessed["calibration"] == "per-feature" and postprocessed["n_tokens"] == 2048
    full = pd.read_csv(out / "eval" / "eval.csv")
    assert sorted(full.loc[full["mode"] == "topk", "sae"]) == ["L15R-32x", "L15R-8x"]  # the vanilla SAE has no k
    assert (full.loc[full["mode"] == "topk", "l0"] <= 50 + 1e-9).all()
    table = full[full["mode"] == "native"].set_index("sae")
    assert set(table.index) == {"L15R-8x", "L15R-32x", "L15R-8x-Vanilla"}
    assert (full["tokens"] == 512).all() and (full["lm_tokens"] > 0).all()
    assert table.loc["L15R-32x", "n_features"] == 18432
    assert table.loc["L15R-8x", "arch"] == "jumprelu"  # post-processed
    summary = json.loads((out / "compare" / "summary.json").read_text())
    assert (summary["a"]["n_features"], summary["b"]["n_features"]) == (4608, 18432)
    assert (out / "compare" / "report.html").stat().st_size > 100_000
    assert str(out / "eval" / "eval.csv") in stdout
    atlas = out / "atlas"  # the feature atlas of the real model's three SAEs, linked from the compare report
    assert (atlas / "index.html").is_file() and len(list((atlas / "demo_L15R-32x" / "data").glob("features-*.js"))) == 72
    index = (atlas / "demo_L15R-8x" / "data" / "index.js").read_text()
    assert '"best in L15R-32x"' in index and '"class vs L15R-32x"' in index and '"best in L15R-8x-Vanilla"' in index
    assert "..\\u002fatlas\\u002fdemo_L15R-32x\\u002ffeature.html#" in (out / "compare" / "report.html").read_text()
    assert (out / "threats" / "seeds.csv").is_file()  # the keyword search ran; a tiny budget may find nothing
    if (out / "threats" / "members.csv").is_file():
        members = pd.read_csv(out / "threats" / "members.csv")
        assert members.groupby("sae").size().to_dict() == {"demo:L15R-8x-Vanilla": 6, "demo:L15R-8x": 6, "demo:L15R-32x": 24}
        assert (out / "threats" / "neighborhood.html").is_file()
    else:
        assert "no neighbourhood drawn" in stdout


@pytest.mark.real_model
def test_second_demo_run_reuses_the_suite(tiny_demo):
    cache, out, _ = tiny_demo
    before = {p: p.stat().st_mtime_ns for p in (cache / "demo").rglob("*.safetensors")}
    env = {**os.environ, "SAE_CACHE": str(cache)}
    run = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "sae.demo", "--out", str(out / "again"),
                          *TINY_DEMO_ARGS.split()], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "already built" in run.stdout
    assert {p: p.stat().st_mtime_ns for p in (cache / "demo").rglob("*.safetensors")} == before
    first = pd.read_csv(out / "eval" / "eval.csv")
    again = pd.read_csv(out / "again" / "eval" / "eval.csv")
    pd.testing.assert_series_equal(first["l0"], again["l0"])  # same SAEs, same held-out tokens
    # a third run into the same folder finds this suite's evaluation there and does not redo it
    written = (out / "again" / "eval" / "eval.csv").stat().st_mtime_ns
    run = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "sae.demo", "--out", str(out / "again"),
                          *TINY_DEMO_ARGS.split()], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "already in" in run.stdout and "L15R-8x-Vanilla" in run.stdout
    assert (out / "again" / "eval" / "eval.csv").stat().st_mtime_ns == written


@pytest.mark.real_model
def test_make_ladder_adds_16x_and_a_seed_and_compares_them(tiny_demo):
    cache, out, _ = tiny_demo
    env = {**os.environ, "SAE_CACHE": str(cache)}
    run = subprocess.run(["make", "-s", "ladder", f"DEMO_OUT={out}", f"DEMO_ARGS={TINY_DEMO_ARGS}"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    suite = cache / "demo"
    assert json.loads((suite / "L15R-16x" / "cfg.json").read_text())["d_sae"] == 16 * 576
    seeds = {name: json.loads((suite / name / "cfg.json").read_text())["d_sae"] for name in ("L15R-8x", "L15R-8x-s1")}
    assert seeds == {"L15R-8x": 4608, "L15R-8x-s1": 4608}
    table = pd.read_csv(out / "eval-ladder" / "eval.csv")
    assert set(table["sae"]) == {"L15R-16x", "L15R-8x-s1"} and (table["tokens"] == 512).all()
    summary = json.loads((out / "seeds" / "summary.json").read_text())
    assert (summary["a"]["name"], summary["b"]["name"]) == ("demo:L15R-8x", "demo:L15R-8x-s1")
    shared = summary["shared"]["decoder"]
    assert 0 <= shared["fraction"] < 1 and 0 < shared["pw_mcc"] < 1  # two seeds: neither identical nor unrelated
    for rung, n_b in (("8x-16x", 9216), ("16x-32x", 18432)):
        assert json.loads((out / "ladder" / rung / "summary.json").read_text())["b"]["n_features"] == n_b
    assert "already built" in subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "sae.demo", "--ladder",
                                              "--out", str(out), *TINY_DEMO_ARGS.split()], cwd=REPO, env=env,
                                             capture_output=True, text=True, timeout=600).stdout


class _FakeStream:
    massive_tokens = 0

    def n_tokens(self):
        return 8192


def _fake_training(calls: list):
    """Stands in for `sae.train.train` to record what the demo asks for (the decisions, not training)."""
    def run(source, specs, config, *, out_dir, resume):
        calls.append((config.total_tokens, resume, out_dir.name))
        (out_dir / "checkpoint" / "step_1").mkdir(parents=True, exist_ok=True)
        (out_dir / "checkpoint" / "step_1" / "state.json").write_text("{}")
        for name in ("L15R-8x", "L15R-32x", "L15R-8x-Vanilla"):
            (out_dir / name).mkdir(exist_ok=True)
            (out_dir / name / "cfg.json").write_text(json.dumps({"tokens": config.total_tokens}))
        return SimpleNamespace(saes={}, steps=1, tokens_per_second=1.0)
    return run


class _Killed(Exception):
    pass


def test_build_suite_resumes_same_settings_and_replaces_other_only_when_complete(tmp_path, monkeypatch):
    from sae.pipelines import demo, staging

    monkeypatch.setenv("SAE_CACHE", str(tmp_path))
    root = tmp_path / "demo"
    calls: list = []
    fake = _fake_training(calls)
    monkeypatch.setattr(demo, "train", fake)
    monkeypatch.setattr(demo, "training_stream", lambda settings: _FakeStream())
    monkeypatch.setattr(demo, "first_tokens", lambda *a: {})
    monkeypatch.setattr(staging, "latest_checkpoint",
                        lambda r: next(iter(sorted((r / "checkpoint").glob("step_*"))), None) if (r / "checkpoint").is_dir() else None)

    def cfg(name):
        return json.loads((root / name / "cfg.json").read_text())

    demo.build_suite(demo.DemoSettings(epochs=1))
    assert calls[-1] == (8192, False, "demo")  # one epoch over the 8,192-token split, in place (nothing to keep)
    demo.build_suite(demo.DemoSettings(epochs=1))  # built: no training at all
    assert len(calls) == 1
    (root / "L15R-32x" / "cfg.json").unlink()  # interrupted with the same settings: resume
    demo.build_suite(demo.DemoSettings(epochs=1))
    assert calls[-1] == (8192, True, "demo")
    (root / "notes.txt").write_text("mine")  # not the suite's: never touched

    def killed(source, specs, config, *, out_dir, resume):  # other settings, killed mid-training
        calls.append((config.total_tokens, resume, out_dir.name))
        (out_dir / "checkpoint" / "step_1").mkdir(parents=True, exist_ok=True)
        (out_dir / "checkpoint" / "step_1" / "state.json").write_text("{}")
        raise _Killed

    monkeypatch.setattr(demo, "train", killed)
    with pytest.raises(_Killed):
        demo.build_suite(demo.DemoSettings(epochs=2))
    assert calls[-1] == (16384, False, ".staging")
    assert cfg("L15R-8x") == {"tokens": 8192} and json.loads((root / "build.json").read_text())["epochs"] == 1
    monkeypatch.setattr(demo, "train", fake)
    demo.build_suite(demo.DemoSettings(epochs=2))  # the interrupted rebuild resumes in staging, then replaces
    assert calls[-1] == (16384, True, ".staging")
    assert cfg("L15R-8x") == {"tokens": 16384} and json.loads((root / "build.json").read_text())["epochs"] == 2
    assert not (root / ".staging").exists() and not (root / ".old").exists()
    assert (root / "notes.txt").read_text() == "mine"


def test_bad_budget_on_a_built_suite_deletes_nothing(tmp_path, monkeypatch, capsys):
    from sae.pipelines import demo

    monkeypatch.setenv("SAE_CACHE", str(tmp_path))
    suite = tmp_path / "demo" / "L15R-8x"
    suite.mkdir(parents=True)
    (suite / "cfg.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: demo.main(["--distinct-tokens", "-5"]))
    assert e.value.code == 2 and (suite / "cfg.json").is_file()
    assert capsys.readouterr().err == "error: --distinct-tokens -5: must be >= 1 and <= 2,000,000\n"


def test_a_replacement_killed_midway_is_finished_by_the_next_build(tmp_path, monkeypatch):
    from sae.pipelines import staging

    monkeypatch.setattr(staging, "latest_checkpoint", lambda r: None)
    names = ["a", "b"]
    root = tmp_path / "suite"
    for folder, tag in ((root, "old"), (root / staging.STAGING, "new")):
        for n in names:
            (folder / n).mkdir(parents=True)
            (folder / n / "cfg.json").write_text(tag)
        (folder / "build.json").write_text(json.dumps({"v": tag}))
    (root / staging.OLD).mkdir()  # the move had begun: "a" is already in place, the old "a" in .old
    (root / staging.OLD / "a").mkdir()
    (root / staging.OLD / "a" / "cfg.json").write_text("old")
    (root / "a" / "cfg.json").write_text("new")
    (root / staging.STAGING / "a" / "cfg.json").unlink()
    (root / staging.STAGING / "a").rmdir()
    build = staging.prepare(root, {"v": "new"}, names)
    assert build.done and [(root / n / "cfg.json").read_text() for n in names] == ["new", "new"]
    assert not (root / staging.OLD).exists() and not (root / staging.STAGING).exists()


def test_demo_settings_come_from_flags_and_environment(monkeypatch):
    from sae.pipelines import demo

    monkeypatch.setenv("DEMO_EPOCHS", "3")
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser, demo.DemoSettings, env_prefix="DEMO_")
    settings = demo.from_arguments(demo.DemoSettings, parser.parse_args(["--lr", "1e-3", "--aux-k", "0"]))
    assert (settings.epochs, settings.lr, settings.aux_k, settings.calibration) == (3.0, 1e-3, 0, "per-feature")
    other = demo.from_arguments(demo.DemoSettings, parser.parse_args(["--aux-coef", "0.25", "--dead-tokens", "100000"]))
    config = demo.train_config(other, 10_000)  # the AuxK settings reach the trainer
    assert (config.aux_coef, config.dead_tokens, config.aux_k) == (0.25, 100_000, 512)
    monkeypatch.setenv("DEMO_BATCH_SIZE", "1.5")
    with pytest.raises(SAEError, match=r"\$DEMO_BATCH_SIZE: expected a whole number"):
        demo.add_arguments(argparse.ArgumentParser(), demo.DemoSettings, env_prefix="DEMO_")
    with pytest.raises(SAEError, match=r"--lr -1: must be > 0 and <= 1"):
        demo.DemoSettings(lr=-1.0)


def test_the_ladder_trains_each_member_once_with_its_seed(tmp_path, monkeypatch, capsys):
    from sae.pipelines import demo

    root = tmp_path / "demo"
    root.mkdir()
    (root / "L15R-8x").mkdir()  # the suite's own SAEs are never touched
    (root / "L15R-8x" / "cfg.json").write_text("suite")
    calls: list = []

    def fake_suite(stream, specs, settings, folder, *, resume):
        calls.append((specs[0].name, specs[0].expansion, settings.seed, resume))
        (folder / specs[0].name).mkdir(parents=True, exist_ok=True)
        (folder / specs[0].name / "cfg.json").write_text(json.dumps({"seed": settings.seed}))
        return [folder / specs[0].name]

    monkeypatch.setattr(demo, "train_suite", fake_suite)
    monkeypatch.setattr(demo, "training_stream", lambda settings: _FakeStream())
    paths = demo.build_ladder(root, demo.DemoSettings(seed=3))
    assert calls == [("L15R-16x", 16, 3, False), ("L15R-8x-s1", 8, 4, False)]  # -s1: the suite's seed + 1
    assert paths == [root / "L15R-16x", root / "L15R-8x-s1"]
    assert json.loads((root / "L15R-8x-s1" / "cfg.json").read_text()) == {"seed": 4}
    assert not (root / ".ladder").exists() and (root / "L15R-8x" / "cfg.json").read_text() == "suite"
    demo.build_ladder(root, demo.DemoSettings(seed=3))  # built: nothing trains
    assert len(calls) == 2 and capsys.readouterr().out.count("already built with these settings") == 2
    (root / "L15R-16x" / "cfg.json").unlink()  # a member lost: only it is rebuilt
    demo.build_ladder(root, demo.DemoSettings(seed=3))
    assert calls[2:] == [("L15R-16x", 16, 3, False)]
    demo.build_ladder(root, demo.DemoSettings(seed=3, epochs=1))  # other settings: both again
    assert [c[0] for c in calls[3:]] == ["L15R-16x", "L15R-8x-s1"]
    assert set(json.loads((root / "ladder.json").read_text())) == {"L15R-16x", "L15R-8x-s1"}
