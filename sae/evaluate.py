"""`python -m sae.evaluate`: evaluate SAEs into tables. The code lives in `sae.eval` (`sae.eval.evaluate`,
`sae.eval.cli`, ...); its public names are re-exported here, where the commands and earlier imports know them."""

from sae.errors import run_cli
from sae.eval import *  # noqa: F403
from sae.eval.cli import main
from sae.eval.evaluate import evaluate  # noqa: F401

if __name__ == "__main__":
    run_cli(main)
