"""`python -m geometry.atlas SAE [SAE ...] --out DIR`: the feature atlas (parse, build, print)."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path

from geometry.atlas.build import build_atlas
from geometry.options import check_settings
from geometry.stamps import contents_digest, current, make_stamp, write_stamp
from sae.cli import add_arguments, from_arguments, option, parse_count
from sae.io import check_writable


@dataclass
class AtlasSettings:
    """The atlas's flags (the SAEs, --compare and --link are argparse's own)."""

    out: Path = option(MISSING, "the site's folder (index.html, one folder per SAE, assets/)", parse=Path)
    contexts_dir: Path | None = option(None, "where the SAEs' top contexts are kept and resumed (default OUT/contexts)",
                                       parse=Path)
    tokens: int = option(100_000, "token budget of the top contexts and histograms", parse=parse_count, min=1)
    n_random: int = option(20, "random activating contexts kept per feature (the activation-quantile samples)", min=0)
    cut: float = option(0.7, "cosine of a parent-child link between SAEs", min=-1, max=1)
    model: str = option("embedded", "the model the SAEs read (and the logit lens's unembedding)")
    dataset: str = option("embedded-train", "corpus of the top contexts")
    device: str | None = option(None, "device for the model and SAEs (default: cpu)")
    neuronpedia: bool = option(False, "also write Neuronpedia batch files (OUT/<SAE>/neuronpedia/batch-N.json: "
                               "uncompressed, about 11 kB per feature)", switch=True)
    quiet: bool = option(False, "no progress bars", switch=True)
    rebuild: bool = option(False, "build even if OUT holds this atlas (same SAEs, contexts, settings and code)",
                           switch=True)

    def __post_init__(self) -> None:
        check_settings(self)


def _link(text: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    if not sep or not name.strip() or not url.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=URL, not {text!r}")
    return name.strip(), url.strip()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m geometry.atlas", description=__doc__.split(":", 1)[1].strip(),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("saes", nargs="+", metavar="SAE", help="SAEs: names (demo:L15R-8x) or folders, anything sae.load reads")
    p.add_argument("--compare", action="append", default=[], type=Path, metavar="DIR",
                   help="a geometry.compare --out folder of two of the SAEs: its classes and families join the pages "
                   "(repeatable)")
    p.add_argument("--link", action="append", default=[], type=_link, metavar="NAME=URL",
                   help="a link on the front page, relative to OUT (e.g. 'compare report=../compare/report.html')")
    add_arguments(p, AtlasSettings)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = from_arguments(AtlasSettings, args)
    check_writable(settings.out)
    options = asdict(settings)
    quiet, rebuild = options.pop("quiet"), options.pop("rebuild")
    inputs = [settings.contexts_dir or settings.out / "contexts"]
    # geometry.compare rewrites its folder on every run (timings in summary.json): stamp the tables read
    tables = contents_digest(Path(c) / f"features_{side}.csv" for c in args.compare for side in "ab")
    given = {"compare": args.compare, "compare_tables": tables, "links": args.link}
    stamp = make_stamp(settings, args.saes, inputs, **given)
    if not rebuild and current(settings.out, stamp):
        print(f"the atlas in {settings.out} is up to date (same SAEs, contexts, settings and code; --rebuild builds "
              f"it anew); open {settings.out / 'index.html'}")
        return 0
    atlas = build_atlas(args.saes, compare_dirs=args.compare, extras=dict(args.link), progress=not quiet, **options)
    write_stamp(settings.out, make_stamp(settings, args.saes, inputs, **given))  # the contexts it may have collected
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in atlas.seconds.items())
    print(f"atlas of {', '.join(atlas.tables)}: {len(atlas.paths):,} files, {atlas.bytes / 2**20:.1f} MiB in "
          f"{atlas.out} ({timing}); open {atlas.out / 'index.html'}")
    return 0
