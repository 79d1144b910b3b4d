"""Command-line flags generated from a settings dataclass: one declaration of each option's type,
default and help, the environment variables of a command parsed by the same rules.

    @dataclass
    class Settings:
        epochs: int = option(2, "passes over the training split")

    add_arguments(parser, Settings, env_prefix="DEMO_")   # --epochs, default from $DEMO_EPOCHS if set
    settings = from_arguments(Settings, parser.parse_args())
"""

from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, field, fields
from typing import Any

from sae.errors import SAEError


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with its help text (and optional `choices`)."""
    return field(default=default, metadata={"help": help, **metadata})


def _kind(f) -> type:
    text = str(f.type)
    for name, kind in (("bool", bool), ("int", int), ("float", float)):
        if text.startswith(name):
            return kind
    return str


def _parse(kind: type, text: str, flag: str) -> Any:
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("", "0", "false", "no", "off"):
            return False
        raise SAEError(f"{flag}: expected a yes/no value (1, 0, true, false), not {text!r}")
    if text.lower() in ("none", "") and kind is not str:
        return None
    try:
        value = float(text) if kind in (int, float) else text
    except ValueError:
        value = None
    if value is None or (kind is int and not float(value).is_integer()):
        raise SAEError(f"{flag}: expected {'a whole number' if kind is int else 'a number'}, not {text!r}")
    return int(value) if kind is int else value


def add_arguments(parser: argparse.ArgumentParser, cls: type, env_prefix: str | None = None,
                  defaults: dict[str, Any] | None = None) -> None:
    """One --flag per field of `cls` (underscores become dashes); `defaults` replaces some of the
    dataclass's defaults; `env_prefix` + FIELD (upper case) overrides a default when set in the environment."""
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = _kind(f)
        default = f.default if f.default is not MISSING else None
        default = (defaults or {}).get(f.name, default)
        env = f"{env_prefix}{f.name.upper()}" if env_prefix else None
        if env and os.environ.get(env) is not None:
            default = _parse(kind, os.environ[env], f"${env}")
        help_text = f.metadata.get("help", "") + (f" (env {env})" if env else "") + " [default: %(default)s]"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            parser.add_argument(flag, type=lambda t, k=kind, fl=flag: _parse(k, t, fl), default=default,
                                choices=f.metadata.get("choices"), metavar=f.name.upper(), help=help_text)


def from_arguments(cls: type, args: argparse.Namespace) -> Any:
    """The dataclass built from the parsed flags of `add_arguments`."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


__all__ = ["add_arguments", "from_arguments", "option"]
