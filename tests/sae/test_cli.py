"""Options declared once: types, ranges and choices checked on parsed flags, environment variables and
constructed settings objects alike (sae.cli)."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import pytest

from sae.cli import add_arguments, check_options, from_arguments, name_or_number, option, option_error
from sae.errors import SAEError


@dataclass
class Settings:
    lr: float = option(1e-3, "learning rate", above=0, max=1)
    batch: int = option(8, "batch", min=1)
    frac: float = option(0.5, "a fraction", min=0, max=1)
    mode: str = option("a", "mode", choices=("a", "b"))
    start: str | int = option("half", "a name or a number", parse=name_or_number(("half",), int), min=1)
    cap: int | None = option(None, "optional, positive", min=1)

    def __post_init__(self) -> None:
        check_options(self)


@pytest.mark.parametrize("kw, message", [
    (dict(lr=0.0), "--lr 0: must be > 0 and <= 1"),
    (dict(lr=2.0), "--lr 2: must be > 0 and <= 1"),
    (dict(lr=math.nan), "--lr nan: must be a finite number > 0 and <= 1"),
    (dict(lr=math.inf), "--lr inf: must be a finite number"),
    (dict(batch=0), "--batch 0: must be >= 1"),
    (dict(frac=-0.1), "--frac -0.1: must be >= 0 and <= 1"),
    (dict(mode="c"), "--mode 'c': must be one of a, b"),
    (dict(start=0), "--start 0: must be >= 1"),
    (dict(cap=0), "--cap 0: must be >= 1"),
    (dict(batch="8"), "--batch '8'"),
])
def test_out_of_range_is_one_message_naming_option_value_and_range(kw, message):
    with pytest.raises(SAEError) as e:
        Settings(**kw)
    assert str(e.value).startswith(message.split(":")[0]) and message.split(": ", 1)[-1] in str(e.value)


def test_valid_values_and_names_pass():
    s = Settings(lr=1.0, batch=1, frac=0.0, mode="b", start="half", cap=None)
    assert option_error(s) is None and Settings(start=3).start == 3


def test_flags_and_environment_go_through_the_same_checks(monkeypatch):
    def parse(argv):
        p = argparse.ArgumentParser()
        add_arguments(p, Settings, env_prefix="T_")
        return from_arguments(Settings, p.parse_args(argv))

    assert parse(["--lr", "0.5", "--start", "7"]) == Settings(lr=0.5, start=7)
    with pytest.raises(SAEError, match=r"--batch -3: must be >= 1"):
        parse(["--batch", "-3"])
    monkeypatch.setenv("T_FRAC", "1.5")
    with pytest.raises(SAEError, match=r"--frac 1.5: must be >= 0 and <= 1"):
        parse([])
    monkeypatch.setenv("T_FRAC", "lots")
    with pytest.raises(SAEError, match=r"\$T_FRAC: expected a number, not 'lots'"):
        parse([])
