"""CI smoke run of benchmarks/bench_compare.py, downscaled to seconds."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_compare_smoke(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_compare.py"), "--scale", "0.004", "--d", "64",
                    "--repeats", "1", "--data", "planted", "--out", str(out)], check=True, capture_output=True, timeout=300)
    r = json.loads(out.read_text())
    assert r["shape"] == {"a": [131, 64], "b": [524, 64]}
    assert r["best_s"]["floor"] > 0 and r["ratio_compare_to_floor"] > 0 and r["compare_peak_rss_gib"] > 0
    assert {"similarity", "decomposition", "assignment", "total"} <= set(r["compare_timings_s"])
