"""Every threshold and knob of `compare`, with the defaults of docs/methods.md and the help text
the command line shows (`python -m geometry.compare --help` is generated from these fields)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from sae import SAEError
from sae.cli import option


class GeometryError(SAEError, ValueError):
    """A bad option or input to a comparison (the command line prints it as one line)."""


@dataclass
class Options:
    cut: float = option(0.7, "cosine cut: parent-child edges, the family graph, and 'refined' (best cos >= cut)")
    same: float = option(0.9, "'same': best cos >= this and mutual nearest neighbours")
    composite_r2: float = option(0.7, "'composite': R^2 of the non-negative decomposition at least this ...")
    composite_gain: float = option(0.15, "... and at least this much above the best single atom's R^2")
    novel_r2: float = option(0.5, "'novel': best cos < cut and decomposition R^2 below this")
    max_atoms: int = option(4, "atoms in the non-negative decomposition of a B feature")
    candidates: int = option(16, "top A candidates per B feature the decomposition chooses from (at most k)")
    k: int = option(32, "neighbours kept per feature in both directions (the cached similarity pass)")
    assign_tau: float = option(0.7, "one-to-one assignment: only pairs above this cosine are matched")
    baseline_samples: int = option(1024, "random directions for the baseline (at most; n/64, at least 128, for smaller SAEs)")
    dead_freq: float = option(0.0, "features firing at most this often are dead (when frequencies are known)")
    rows: str = option("decoder", "compare 'decoder' rows (feature directions) or 'encoder' rows",
                       choices=("decoder", "encoder"))
    seed: int = option(0, "seed of the random baseline")

    def __post_init__(self):
        if self.rows not in ("decoder", "encoder"):
            raise GeometryError(f"rows must be 'decoder' or 'encoder', not {self.rows!r}")
        if self.candidates < 1 or self.k < 1 or self.max_atoms < 1:
            raise GeometryError("k, candidates and max_atoms must be positive")

    @classmethod
    def from_kwargs(cls, **kw) -> "Options":
        unknown = set(kw) - {f.name for f in fields(cls)}
        if unknown:
            raise GeometryError(f"unknown option(s) {', '.join(sorted(unknown))}; options: {', '.join(cls.names())}")
        return cls(**kw)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

