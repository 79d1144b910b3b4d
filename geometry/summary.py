"""A comparison's summary (the JSON of `compare`, schema in docs/compare.md)
as the text `python -m geometry.compare` prints."""

from __future__ import annotations


def summary_text(s: dict) -> str:
    """The summary `s` in a dozen lines: both sides, max cosines against the baselines, classes, families,
    split factor, the one-to-one assignment, the insertion test and the timings."""
    pct = lambda n, tot: f"{n} ({100 * n / tot:.1f}%)" if tot else str(n)  # noqa: E731
    lines = []
    for key in ("a", "b"):
        x = s[key]
        left_out = ", ".join(f"{x[f'n_{w}']} {w}" for w in ("dead", "zero", "nonfinite") if x[f"n_{w}"])
        lines.append(f"{key.upper()}: {x['name']}  {x['n_features']} x {x['d']}, {x['n_live']} compared"
                     + (f" (left out: {left_out})" if left_out else "")
                     + ("" if x["firing_stats"] else " (no firing statistics: dead features not known)"))
    mc = s["max_cos"]
    for key, arrow in (("b_to_a", "B->A"), ("a_to_b", "A->B")):
        q, bq, iq = mc[key]["quantiles"], mc[f"baseline_{key}"]["quantiles"], mc[f"isotropic_{key}"]["quantiles"]
        lines.append(f"max cos {arrow}: median {q['0.5']:.3f} [p10 {q['0.1']:.3f}, p90 {q['0.9']:.3f}], "
                     f">= {s['options']['cut']}: {100 * mc[key]['frac_ge_cut']:.1f}%;  random median "
                     f"{bq['0.5']:.3f} (isotropic {iq['0.5']:.3f})")
    lines.append(f"epsilon = sqrt(12 ln F / D): A {s['epsilon']['a']:.3f}, B {s['epsilon']['b']:.3f}")
    n_live_b = s["b"]["n_live"]
    lines.append("B classes: " + ", ".join(f"{c} {pct(n, n_live_b)}" for c, n in s["classes_b"].items() if c != "dead"))
    lines.append("families: " + ", ".join(f"{t} {n}" for t, n in s["families"].items()))
    sf = s["split_factor"]
    lines.append(f"split factor: {100 * sf['frac_split']:.1f}% of A features have >= 2 children "
                 f"(mean {sf['mean_children_given_any']:.2f} among those with any, max {sf['max_children']}); "
                 f"mutual nearest neighbours {s['mutual_nn']}")
    asg = s["assignment"]
    mean = f"{asg['mean_cos']:.3f}" if asg["mean_cos"] is not None else "-"
    lines.append(f"one-to-one (cos > {asg['tau']}): {asg['matched']} pairs, {100 * asg['matched_fraction_a']:.1f}% of A, "
                 f"{100 * asg['matched_fraction_b']:.1f}% of B, mean cos {mean}")
    for rows, g in s.get("shared", {}).items():
        bound = "" if g["exact"] else f" (candidate graph: a lower bound; at most {g['pw_mcc_upper']:.3f})"
        lines.append(f"shared ({rows} rows, optimal one-to-one matching of the smaller side's {g['n_rows']} live rows): "
                     f"{100 * g['fraction']:.1f}% at cos >= {g['tau']}, PW-MCC {g['pw_mcc']:.3f}{bound}")
    if s["saturated"]["a"] or s["saturated"]["b"]:
        lines.append(f"note: {s['saturated']['a']} A / {s['saturated']['b']} B features have >= k neighbours above "
                     f"the cut; raise --k to see all their edges")
    if "functional" in s:
        f = s["functional"]
        lines.append(f"insertion test on {f['n_tokens']} tokens{'' if f['exact'] else ' (approximate: TopK)'}: "
                     f"novel {f['novel']}, reconstruction {f['reconstruction']}, silent {f['silent']}")
    lines.append("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in s["timings_s"].items()))
    return "\n".join(lines)
