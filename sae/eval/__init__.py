"""Evaluating SAEs on a model and a corpus into tidy tables (`evaluate`; the command is `python -m sae.evaluate`)."""
