"""Wall-clock laps of a computation, as the `timings_s` of its summary."""

from __future__ import annotations

import time


class Timer:
    """Seconds spent in each named stage (a stage timed twice adds up), plus the total."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self.start = self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        """Charge the time since the previous lap to stage `name`."""
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self.last
        self.last = now

    def done(self) -> dict[str, float]:
        return {**self.laps, "total": time.perf_counter() - self.start}
