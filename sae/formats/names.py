"""The paper's SAE names, `L{layer}{R|A|M|TC}-{8x|32x}[-TopK|-Vanilla][-s{seed}]`, and their hook points.

A suite prefix says where an SAE comes from: `llama-scope:` (the default for bare names) or `demo:`
(SAEs this project trains on the embedded SmolLM2 model, which also has 16x and other seeds: the
ladder of `python -m sae.demo --ladder`). Layers are 0-based; seed 0 is written without a suffix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sae.errors import BadNameError
from sae.lm.embedded import MODEL_NAME
from sae.lm.sites import POSITION_OF_KIND, POSITIONS, SiteError, parse_site, position_sites

_NAME = re.compile(r"L(\d+)([A-Z]+)-(\d+)x(?:-(TopK|Vanilla))?(?:-s(\d+))?")


@dataclass(frozen=True)
class Suite:
    name: str
    n_layers: int
    d_model: int
    expansions: tuple[int, ...]
    variants: tuple[str, ...]
    model: str
    seeds: bool = False  # whether names may carry a -s<seed> suffix


SUITES = {
    "llama-scope": Suite("llama-scope", 32, 4096, (8, 32), ("TopK",), "meta-llama/Llama-3.1-8B"),
    "demo": Suite("demo", 30, 576, (8, 16, 32), ("TopK", "Vanilla"), MODEL_NAME, seeds=True),
}
DEFAULT_SUITE = "llama-scope"


@dataclass(frozen=True)
class SAEName:
    suite: str
    layer: int
    position: str  # R | A | M | TC
    expansion: int  # 8 or 32 (demo: also 16)
    variant: str = "TopK"
    seed: int = 0

    def __str__(self) -> str:
        tail = ("-Vanilla" if self.variant == "Vanilla" else "") + (f"-s{self.seed}" if self.seed else "")
        return f"L{self.layer}{self.position}-{self.expansion}x{tail}"

    @property
    def qualified(self) -> str:
        return f"{self.suite}:{self}"

    @property
    def n_features(self) -> int:
        return self.expansion * SUITES[self.suite].d_model

    @property
    def hooks(self) -> tuple[str, str]:
        return hook_points(self.layer, self.position)

    @property
    def hf_repo(self) -> str:
        """Llama Scope: the HF repository holding all layers of this position and width."""
        return f"fnlp/Llama3_1-8B-Base-LX{self.position}-{self.expansion}x"

    @property
    def hf_folder(self) -> str:
        """Llama Scope: the folder inside `hf_repo` holding this SAE."""
        return f"Llama3_1-8B-Base-L{self.layer}{self.position}-{self.expansion}x"


def folder_name(spec: str) -> str:
    """A folder (or URL path) name for an SAE spec: `demo:L15R-8x` -> `demo_L15R-8x`."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(spec).rstrip("/")) or "sae"


def split_suite(spec: str) -> tuple[str | None, str]:
    """`demo:L15R-8x` -> ("demo", "L15R-8x"); a bare string -> (None, string)."""
    head, sep, tail = spec.partition(":")
    if sep and re.fullmatch(r"[a-z][a-z0-9-]*", head) and len(head) > 1:
        return head, tail
    return None, spec


def looks_like_name(spec: str) -> bool:
    """True for anything meant as a name (a suite prefix, or the L.. grammar), valid or not."""
    suite, rest = split_suite(spec)
    return suite is not None or re.fullmatch(r"L\d+[A-Za-z]+-\d+x(-\w+)*", rest) is not None


def parse_name(spec: str) -> SAEName:
    """Parse and range-check a name; raises BadNameError saying exactly what is wrong."""
    suite_name, rest = split_suite(spec.strip())
    suite_name = suite_name or DEFAULT_SUITE
    if suite_name not in SUITES:
        raise BadNameError(f"unknown suite {suite_name!r} in {spec!r}; known suites: {', '.join(SUITES)}")
    suite = SUITES[suite_name]
    m = _NAME.fullmatch(rest)
    if not m:
        raise BadNameError(
            f"{spec!r} is not an SAE name; expected L<layer><R|A|M|TC>-<8x|32x>, e.g. L15R-8x"
        )
    layer, position, expansion, variant, seed = int(m[1]), m[2], int(m[3]), m[4] or "TopK", int(m[5] or 0)
    if position not in POSITIONS:
        raise BadNameError(f"{spec!r}: unknown position {position!r}; positions are R, A, M, TC")
    if not 0 <= layer < suite.n_layers:
        raise BadNameError(f"{spec!r}: layer {layer} out of range; {suite_name} has layers 0..{suite.n_layers - 1}")
    if expansion not in suite.expansions:
        widths = ", ".join(f"{e}x" for e in suite.expansions)
        raise BadNameError(f"{spec!r}: width {expansion}x does not exist; {suite_name} has {widths}")
    if variant not in suite.variants:
        raise BadNameError(f"{spec!r}: {suite_name} has no {variant} SAEs (it has {', '.join(suite.variants)})")
    if seed and not suite.seeds:
        raise BadNameError(f"{spec!r}: {suite_name} has one SAE per site and width, no -s{seed} seeds")
    return SAEName(suite_name, layer, position, expansion, variant, seed)


def hook_points(layer: int, position: str) -> tuple[str, str]:
    """(hook_in, hook_out) in the TransformerLens names Llama Scope's files use."""
    try:
        inp, out = position_sites(layer, position)
    except SiteError as e:
        raise BadNameError(str(e)) from None
    return inp.hook, out.hook


def site_of_hooks(hook_in: str, hook_out: str | None = None) -> tuple[int, str] | None:
    """(layer, position) for a pair of hook names, or None if they are not one of the four sites."""
    try:
        site = parse_site(hook_in or "")
    except SiteError:
        return None
    position = POSITION_OF_KIND[site.kind]
    if site.hook != hook_in or position not in POSITIONS:
        return None
    if position == "TC" and hook_out not in (None, position_sites(site.layer, "TC")[1].hook):
        return None
    return site.layer, position
