"""`python -m sae.evaluate`: evaluate SAEs into tables. The code lives in `sae.eval.evaluate`; its public names are
re-exported here, where the commands and earlier imports know them."""

from sae.errors import run_cli
from sae.eval.evaluate import *  # noqa: F403
from sae.eval.evaluate import main

if __name__ == "__main__":
    run_cli(main)
