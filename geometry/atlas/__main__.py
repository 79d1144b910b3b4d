"""`python -m geometry.atlas`: the feature atlas (the options: `python -m geometry.atlas --help`)."""

from geometry.atlas.cli import main
from sae.errors import run_cli

run_cli(main)
