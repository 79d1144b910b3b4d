"""Sparse autoencoders on Llama-family models: load (Llama Scope, SAELens, native), train, evaluate."""

from sae.errors import (
    BadNameError,
    FetchError,
    FormatError,
    SAEError,
    SAEFileError,
    ShapeError,
)
from sae.formats import load, save
from sae.formats.names import SAEName, parse_name
from sae.model import SAEMeta, SparseAutoencoder, SparseCode

__all__ = [
    "BadNameError",
    "FetchError",
    "FormatError",
    "SAEError",
    "SAEFileError",
    "SAEMeta",
    "SAEName",
    "ShapeError",
    "SparseAutoencoder",
    "SparseCode",
    "load",
    "parse_name",
    "save",
]
