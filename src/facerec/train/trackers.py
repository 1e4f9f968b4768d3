"""Watching a run: a console line every N steps, a JSONL metrics file, a throughput/ETA meter."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class JsonlLogger:
    """Appends one JSON object per line; flushed every write so a crash loses nothing."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._fh: TextIO | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")

    def log(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            return
        self._fh.write(json.dumps(record, default=float) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class Throughput:
    """Images per second over a sliding window of recent steps, and the ETA it implies."""

    def __init__(self, total_steps: int, window: int = 20) -> None:
        self.total_steps = total_steps
        self.window = window
        self._marks: list[tuple[float, int, int]] = []  # (time, step, images so far)
        self._images = 0

    def update(self, step: int, images: int) -> None:
        self._images += images
        self._marks.append((time.perf_counter(), step, self._images))
        if len(self._marks) > self.window + 1:
            self._marks.pop(0)

    @property
    def images_per_second(self) -> float:
        if len(self._marks) < 2:
            return float("nan")
        (t0, _, n0), (t1, _, n1) = self._marks[0], self._marks[-1]
        return (n1 - n0) / max(t1 - t0, 1e-9)

    def eta(self, step: int) -> float:
        if len(self._marks) < 2:
            return float("nan")
        (t0, s0, _), (t1, s1, _) = self._marks[0], self._marks[-1]
        per_step = (t1 - t0) / max(s1 - s0, 1)
        return per_step * max(self.total_steps - step, 0)


class Console:
    """Rank-0 console output; a tqdm bar when attached to a terminal or asked for."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None, total: int = 0, bar: bool | None = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self._bar = None
        if enabled and (bar if bar is not None else self.stream.isatty()):
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="step", dynamic_ncols=True, file=self.stream, leave=False)

    def print(self, line: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def advance(self, n: int = 1, **postfix: Any) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)

    def set_position(self, step: int) -> None:
        if self._bar is not None:
            self._bar.n = step
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
