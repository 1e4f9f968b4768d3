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


class MultiLogger:
    """Sends every record to several sinks (`log(record)`, `close()`)."""

    def __init__(self, sinks: list[Any]) -> None:
        self.sinks = [s for s in sinks if s is not None]

    def log(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.log(record)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def _scalars(record: dict[str, Any]) -> tuple[int | None, dict[str, float]]:
    """(step, {tag: value}) of a metrics record, tags as TensorBoard/visdom plots them."""
    step = record.get("step")
    if record.get("event") == "val":
        name = record.get("set", "val")
        return step, {f"val/{name}/{k}": float(record[k]) for k in ("accuracy", "accuracy_std") if k in record}
    if record.get("event") == "bad_step":
        return step, {"train/bad_step": 1.0}
    return step, {f"train/{k}": float(record[k]) for k in ("loss", "lr", "images_per_second", "grad_scale")
                  if k in record and record[k] is not None and math.isfinite(float(record[k]))}


class TensorBoardLogger:
    """Scalars to TensorBoard event files in `log_dir` (needs the `tensorboard` package)."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # tensorboard not installed
            from facerec.errors import ConfigError

            raise ConfigError("config key 'train.tensorboard': the tensorboard package is not installed "
                              "(pip install 'facerec[track]')") from exc
        self.writer = SummaryWriter(str(log_dir))

    def log(self, record: dict[str, Any]) -> None:
        step, scalars = _scalars(record)
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class VisdomLogger:
    """Live plots on a visdom server (the seed's curves): loss, learning rate, images/s and one
    accuracy line per validation set, appended as the run goes. If the server cannot be reached
    the run goes on and says so once."""

    WINDOWS = {"train/loss": ("loss", "loss"), "train/lr": ("lr", "learning rate"),
               "train/images_per_second": ("speed", "images/s")}

    def __init__(self, server: str = "http://127.0.0.1", port: int = 8097, env: str = "facerec",
                 warn: Any = print) -> None:
        try:
            import visdom
        except ImportError as exc:
            from facerec.errors import ConfigError

            raise ConfigError("config key 'train.visdom': the visdom package is not installed "
                              "(pip install 'facerec[track]')") from exc
        self.vis = visdom.Visdom(server=server, port=port, env=env, use_incoming_socket=False,
                                 raise_exceptions=False)
        self.ok = bool(self.vis.check_connection(timeout_seconds=5))
        if not self.ok:
            warn(f"[facerec] visdom server {server}:{port} not reachable; no live plots")
        self._made: set[str] = set()

    def _append(self, win: str, title: str, name: str, step: int, value: float) -> None:
        import numpy as np

        self.vis.line(X=np.array([step]), Y=np.array([value]), win=win, name=name,
                      update="append" if (win, name) in self._made else None,
                      opts={"title": title, "xlabel": "step", "showlegend": True})
        self._made.add((win, name))

    def log(self, record: dict[str, Any]) -> None:
        if not self.ok:
            return
        step, scalars = _scalars(record)
        if step is None:
            return
        for tag, value in scalars.items():
            if tag in self.WINDOWS:
                win, title = self.WINDOWS[tag]
                self._append(win, title, tag.split("/")[-1], step, value)
            elif tag.startswith("val/") and tag.endswith("/accuracy"):
                self._append("accuracy", "verification accuracy", tag.split("/")[1], step, value)

    def close(self) -> None:
        if self.ok:
            self.vis.save([self.vis.env])
