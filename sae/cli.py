"""Command-line flags generated from a settings dataclass: one declaration of each option's type,
default and help, the environment variables of a command parsed by the same rules.

    @dataclass
    class Settings:
        epochs: int = option(2, "passes over the training split")
        normalize: bool = option(True, "train on raw activations", switch=True)   # --no-normalize
        internal: int = 3                                                         # not a flag

    add_arguments(parser, Settings, env_prefix="DEMO_")   # --epochs, default from $DEMO_EPOCHS if set
    settings = from_arguments(Settings, parser.parse_args())
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import MISSING, field, fields
from typing import Any

from sae.errors import SAEError


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field that is a command-line flag, with its help text (default `dataclasses.MISSING`:
    a required flag). Optional metadata:

    choices; metavar; flag: the flag's name when it is not the field's (`flag="tokens"` -> --tokens);
    parse: text -> value, instead of the parser of the field's type;
    switch (bools): one flag that flips the default, --NAME when it is False, --no-NAME when it is True
    (`help` then says what the flag does), instead of the pair --NAME / --no-NAME;
    group: a key of the `groups` given to `add_arguments`, the argument group the flag goes in;
    min / max: the allowed range (inclusive); above: a bound the value must exceed. `check_options`
    enforces them and the choices on every settings object (its __post_init__) and so on parsed flags.
    """
    return field(default=default, metadata={"help": help, **metadata})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(v: Any) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}" if abs(v) < 10**15 else f"{v:.3g}"
    return f"{v:g}" if isinstance(v, float) else repr(v)


def _range_text(meta: dict) -> str:
    parts = [f"> {_number(meta['above'])}" if "above" in meta else "", f">= {_number(meta['min'])}" if "min" in meta
             else "", f"<= {_number(meta['max'])}" if "max" in meta else ""]
    return " and ".join(p for p in parts if p)


def option_error(obj: Any) -> str | None:
    """The first option of settings object `obj` outside its declared range or choices, as one message
    naming the flag, the value and what is allowed; None when every option is valid."""
    for f in filter(_is_flag, fields(obj)):
        value, meta = getattr(obj, f.name), f.metadata
        flag = "--" + meta.get("flag", f.name).replace("_", "-")
        if value is None:
            continue
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            return f"{flag} {value!r}: must be one of {', '.join(map(str, choices))}"
        if not any(key in meta for key in ("min", "max", "above")) or (isinstance(value, str) and meta.get("parse")):
            continue  # unbounded, or a name (k_start "half") where the option also takes names
        allowed = _range_text(meta)
        if not _is_number(value) or value != value or abs(value) == float("inf"):
            return f"{flag} {_number(value)}: must be a finite number {allowed}"
        if ("above" in meta and not value > meta["above"]) or ("min" in meta and value < meta["min"]) or (
                "max" in meta and value > meta["max"]):
            return f"{flag} {_number(value)}: must be {allowed}"
    return None


def check_options(obj: Any) -> None:
    """Raise SAEError if an option of settings object `obj` is outside its range (`option_error`)."""
    message = option_error(obj)
    if message:
        raise SAEError(message)


def parse_count(text: str) -> int:
    """'2M', '500k', '1e6', '4096' -> int."""
    t = text.strip().lower().replace("_", "")
    mult = {"k": 10**3, "m": 10**6, "b": 10**9}.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (e.g. 4096, 500k, 2M)") from None


def name_or_number(names: tuple[str, ...], kind: type) -> Callable[[str], Any]:
    """A `parse` for options that take one of `names` or a number of type `kind`."""

    def parse(text: str) -> Any:
        return text if text in names else kind(text)

    parse.__name__ = f"{' / '.join(names)} / number"  # argparse's "invalid ... value" names it
    return parse


def _is_flag(f) -> bool:
    return "help" in f.metadata


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
                  defaults: dict[str, Any] | None = None, groups: dict[str, Any] | None = None) -> None:
    """One flag per `option()` field of `cls` (--NAME, underscores become dashes; fields declared
    without option() are not flags); `defaults` replaces some of the dataclass's defaults; `env_prefix` +
    FIELD (upper case) overrides a default when set in the environment; `groups` maps the fields'
    `group` keys to argument groups (a field without one goes on `parser`)."""
    for f in filter(_is_flag, fields(cls)):
        meta = f.metadata
        name = meta.get("flag", f.name).replace("_", "-")
        target = (groups or {}).get(meta.get("group"), parser)
        kind = _kind(f)
        required = f.default is MISSING
        default = None if required else f.default
        default = (defaults or {}).get(f.name, default)
        env = f"{env_prefix}{f.name.upper()}" if env_prefix else None
        if env and os.environ.get(env) is not None:
            default = _parse(kind, os.environ[env], f"${env}")
        help_text = meta["help"].replace("%", "%%") + (f" (env {env})" if env else "")
        if kind is bool and meta.get("switch"):
            flag = f"--no-{name}" if default else f"--{name}"
            target.add_argument(flag, dest=f.name, action="store_false" if default else "store_true", default=default,
                                help=help_text)
            continue
        if default not in (None, ""):
            help_text += " [default: %(default)s]"
        if kind is bool:
            target.add_argument(f"--{name}", dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
        else:
            flag = f"--{name}"
            parse = meta.get("parse") or (lambda t, k=kind, fl=flag: _parse(k, t, fl))
            choices = meta.get("choices")
            metavar = meta.get("metavar") or ("{" + ",".join(choices) + "}" if choices else name.replace("-", "_").upper())
            target.add_argument(flag, dest=f.name, type=parse, default=default, choices=choices, required=required,
                                metavar=metavar, help=help_text)


def field_arguments(cls: type, name: str) -> dict[str, Any]:
    """argparse keywords for the flag of field `name` of dataclass `cls` (a field made with `option`):
    its default (none for a required field), help and choices: for flags `add_arguments` cannot make
    (positional arguments, store_true switches, argparse's own help format)."""
    f = next(f for f in fields(cls) if f.name == name)
    kw: dict[str, Any] = {"help": f.metadata["help"]}
    if f.default is not MISSING:
        kw["default"] = f.default
    if f.metadata.get("choices") is not None:
        kw["choices"] = f.metadata["choices"]
    return kw


def from_arguments(cls: type, args: argparse.Namespace, **values: Any) -> Any:
    """The dataclass built from the parsed flags of `add_arguments`; `values` set fields directly (those
    that are not flags, or flags given elsewhere). Fields neither parsed nor given keep their defaults."""
    parsed = {f.name: getattr(args, f.name) for f in filter(_is_flag, fields(cls)) if f.name not in values}
    return cls(**parsed, **values)


__all__ = ["add_arguments", "check_options", "field_arguments", "from_arguments", "option_error", "name_or_number", "option", "parse_count"]
