"""`python -m geometry.figures`: the paper's figures from tables. The code lives in `geometry.plot.figures`; its public names are
re-exported here, where the commands and earlier imports know them."""

from sae.errors import run_cli
from geometry.plot.figures import *  # noqa: F403
from geometry.plot.figures import main

if __name__ == "__main__":
    run_cli(main)
