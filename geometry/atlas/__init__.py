"""The feature atlas: a static site with a page for every feature of several SAEs, linked across them
(`build_atlas`, `python -m geometry.atlas`), and Neuronpedia batch files of the same data."""

from geometry.atlas.build import Atlas, build_atlas
from geometry.atlas.records import SiteSAE

__all__ = ["Atlas", "SiteSAE", "build_atlas"]
