"""Interpreting features: top activating contexts (`contexts`: the pass; `collector`: one SAE's side of it;
`documents`: the documents behind the activations; `store`: `TopContexts` and its file; `cli`: the command
`python -m sae.contexts`) and labels from them (`labels`)."""

from sae.formats.names import folder_name
from sae.interp.cli import build_parser, main
from sae.interp.collector import Collector, hash_keys
from sae.interp.contexts import (
    DEFAULT_TOKENS,
    DEFAULT_WINDOW,
    collect_contexts,
    fingerprint,
    top_contexts,
)
from sae.interp.documents import Rows, document_rows, next_rows, ordered_documents
from sae.interp.store import MARK, SCHEMA, STATE_FILE, ContextsError, Slots, TopContexts

__all__ = [
    "DEFAULT_TOKENS",
    "DEFAULT_WINDOW",
    "MARK",
    "SCHEMA",
    "STATE_FILE",
    "Collector",
    "ContextsError",
    "Rows",
    "Slots",
    "TopContexts",
    "build_parser",
    "collect_contexts",
    "document_rows",
    "fingerprint",
    "folder_name",
    "hash_keys",
    "main",
    "next_rows",
    "ordered_documents",
    "top_contexts",
]
