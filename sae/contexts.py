"""`python -m sae.contexts`: collect top contexts. The code lives in `sae.interp` (`sae.interp.contexts`,
`sae.interp.cli`, ...); its public names are re-exported here, where the commands and earlier imports know them."""

from sae.errors import run_cli
from sae.interp import *  # noqa: F403
from sae.interp.cli import main

if __name__ == "__main__":
    run_cli(main)
