"""`python -m sae.demo`: the demo suite. The code lives in `sae.pipelines.demo`; its public names are
re-exported here, where the commands and earlier imports know them."""

from sae.errors import run_cli
from sae.pipelines.demo import *  # noqa: F403
from sae.pipelines.demo import main

if __name__ == "__main__":
    run_cli(main)
