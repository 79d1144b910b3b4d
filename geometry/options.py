"""Every threshold and knob of `compare`, with the defaults of docs/methods.md and the help text
the command line shows (`python -m geometry.compare --help` is generated from these fields)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from sae import SAEError
from sae.cli import option, option_error


class GeometryError(SAEError, ValueError):
    """A bad option or input to a comparison (the command line prints it as one line)."""


def check_settings(settings) -> None:
    """Raise GeometryError with the first declared range or choice a settings dataclass breaks."""
    message = option_error(settings)
    if message:
        raise GeometryError(message)


@dataclass
class Options:
    cut: float = option(0.7, "cosine cut: parent-child edges, the family graph, and 'refined' (best cos >= cut)", min=-1, max=1)
    same: float = option(0.9, "'same': best cos >= this and mutual nearest neighbours", min=-1, max=1)
    composite_r2: float = option(0.7, "'composite': R^2 of the non-negative decomposition at least this ...", min=0, max=1)
    composite_gain: float = option(0.15, "... and at least this much above the best single atom's R^2", min=0, max=1)
    novel_r2: float = option(0.5, "'novel': best cos < cut and decomposition R^2 below this", min=0, max=1)
    max_atoms: int = option(4, "atoms in the non-negative decomposition of a B feature", min=1)
    candidates: int = option(16, "top A candidates per B feature the decomposition chooses from (at most k)", min=1)
    k: int = option(32, "neighbours kept per feature in both directions (the cached similarity pass)", min=1)
    assign_tau: float = option(0.7, "one-to-one assignment: only pairs above this cosine are matched", min=-1, max=1)
    baseline_samples: int = option(1024, "random directions for the baseline (at most; n/64, at least 128, for smaller SAEs)", min=1)
    dead_freq: float = option(0.0, "features firing at most this often are dead (when frequencies are known)", min=0, max=1)
    rows: str = option("decoder", "compare 'decoder' rows (feature directions) or 'encoder' rows",
                       choices=("decoder", "encoder"))
    shared: str = option("both", "rows whose one-to-one agreement (shared fraction, PW-MCC) is reported: both "
                         "(decoder and encoder) or compared (the --rows only; above 10^8 pairs the other rows cost "
                         "one more similarity pass)", choices=("both", "compared"))
    seed: int = option(0, "seed of the random baseline")

    def __post_init__(self):
        check_settings(self)

    @classmethod
    def from_kwargs(cls, **kw) -> "Options":
        unknown = set(kw) - {f.name for f in fields(cls)}
        if unknown:
            raise GeometryError(f"unknown option(s) {', '.join(sorted(unknown))}; options: {', '.join(cls.names())}")
        return cls(**kw)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

