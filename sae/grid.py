"""`python -m sae.grid`: the figure grid. The code lives in `sae.pipelines.grid`; its public names are
re-exported here, where the commands and earlier imports know them."""

from sae.errors import run_cli
from sae.pipelines.grid import *  # noqa: F403
from sae.pipelines.grid import main

if __name__ == "__main__":
    run_cli(main)
