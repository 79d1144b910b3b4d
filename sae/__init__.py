"""Sparse autoencoders on Llama-family models: load (Llama Scope, SAELens, native), train, evaluate."""

from .errors import (
    BadNameError,
    FetchError,
    FormatError,
    SAEError,
    SAEFileError,
    ShapeError,
    install_excepthook,
)
from .formats import load, save
from .formats.names import SAEName, parse_name
from .model import SAEMeta, SparseAutoencoder, SparseCode

install_excepthook()

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
