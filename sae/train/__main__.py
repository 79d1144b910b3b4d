"""`python -m sae.train`: train SAEs (the options: `python -m sae.train --help`)."""

from sae.errors import run_cli
from sae.train.cli import main

run_cli(main)
