"""Interpreting features: top activating contexts (`contexts`) and labels from them (`labels`)."""
