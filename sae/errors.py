"""Typed errors a user can cause, and the one place that turns them into a message and an exit code.

Library code raises these; command-line entry points wrap their `main` in `run_cli`. Importing `sae`
changes nothing global: a script that wants one-line messages for uncaught SAEErrors calls
`install_excepthook()` itself.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class SAEError(Exception):
    """Base class: every error a user can cause. The message says what is wrong and what to do."""

    exit_code = 2


class BadNameError(SAEError, ValueError):
    """A name like `L15R-8x` that does not parse or is out of range."""


class SAEFileError(SAEError, OSError):
    """A file or folder that is missing, unreadable, corrupt or of the wrong kind."""


class FormatError(SAEError, ValueError):
    """A file that opened but whose content disagrees with the format (keys, shapes, values)."""


class FetchError(SAEError, OSError):
    """Something had to be downloaded and could not be (offline, no cache)."""


class ShapeError(SAEError, ValueError):
    """Tensors whose shapes disagree with the SAE or with each other."""


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a command-line `main`, turning an SAEError into one line on stderr and a non-zero exit."""
    try:
        code = main()
    except SAEError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def install_excepthook() -> None:
    """Print uncaught SAEErrors as one line (no traceback) in scripts; other errors are untouched."""
    previous = sys.excepthook
    if getattr(previous, "_sae_hook", False):
        return

    def hook(kind, value, tb):
        if isinstance(value, SAEError):
            print(f"error: {value}", file=sys.stderr)
        else:
            previous(kind, value, tb)

    hook._sae_hook = True  # type: ignore[attr-defined]
    sys.excepthook = hook
