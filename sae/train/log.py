"""A run's log: one CSV per SAE (RUN/NAME/log.csv), a row every `log_every` steps, read back by `read_log`."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

LOG_FIELDS = ["step", "tokens", "lr", "k", "loss", "mse", "ev", "ev_uncentred", "l0", "alive", "aux", "l1", "elapsed_s"]


class LogWriter:
    """log.csv, appended; on resume, rows past the checkpoint (written before a kill) are dropped."""

    def __init__(self, path: Path, start_step: int) -> None:
        self.path = path
        rows = []
        if path.is_file() and start_step > 0:
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(float(r["step"])) <= start_step]
        self.f = open(path, "w", newline="")
        self.w = csv.DictWriter(self.f, fieldnames=LOG_FIELDS, extrasaction="ignore")
        self.w.writeheader()
        for r in rows:
            self.w.writerow(r)
        self.f.flush()

    def write(self, row: dict[str, float]) -> None:
        """One row (missing fields empty), flushed at once so a kill loses nothing written."""
        self.w.writerow({k: _fmt(row.get(k)) for k in LOG_FIELDS})
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def _fmt(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)
    return v


def read_log(path: str | Path) -> pd.DataFrame:
    """A run's log.csv (a file or an SAE's run folder) as a pandas DataFrame (Fig. 12 reads this)."""
    import pandas as pd

    path = Path(path)
    return pd.read_csv(path / "log.csv" if path.is_dir() else path)
