"""`python -m sae.postprocess`: post-process TopK SAEs to JumpReLU. The code lives in `sae.train.postprocess`; its public names are
re-exported here, where the commands and earlier imports know them."""

from sae.errors import run_cli
from sae.train.postprocess import *  # noqa: F403
from sae.train.postprocess import main

if __name__ == "__main__":
    run_cli(main)
