"""One progress display for ``score``, ``eval`` and ``rerank``, and the ``--metrics-jsonl`` stream.

The display (rich, on stderr) shows a spinner and the elapsed time from the start, so a long
first item (a model loading) is visibly alive, then done/total, items/s, the ETA and a running
value (mean reward, accuracy, mean label). When stderr is not a terminal (CI logs, pipes) it
prints nothing; the commands' final summary lines are printed either way.

``--metrics-jsonl PATH`` appends one JSON object per finished item (``"event": "progress"``)
and one at the end (``"event": "final"``), after a ``"start"`` object, whatever the terminal:
``done``, ``total`` (null when unknown), ``elapsed_s``, ``items_per_s``, ``eta_s``, ``metric``
(its name), ``value`` (the running value), ``errors`` and ``time`` (UTC, ISO 8601).
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Any, Self

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..errors import ConfigError

__all__ = ["MetricsOpt", "RunProgress"]

MetricsOpt = Annotated[Path | None, typer.Option(
    "--metrics-jsonl", help="append one JSON object per finished item and a final one to this "
    "file (done, total, items/s, ETA, running value): a metrics stream for experiment trackers")]


class RunProgress:
    """Count finished items, show them, and stream metrics.

    ``metric`` names the running value (the mean of the values passed to :meth:`item`).

    >>> with RunProgress("scoring", total=2, metric="mean reward", enabled=False) as p:
    ...     p.item(1.0); p.item(0.5)
    >>> p.done, p.value
    (2, 0.75)
    """

    def __init__(
        self,
        label: str,
        *,
        total: int | None = None,
        metric: str = "mean",
        metrics_jsonl: str | Path | None = None,
        console: Console | None = None,
        enabled: bool | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.metric = metric
        self.done = 0
        self.errors = 0
        self._sum = 0.0
        self._n = 0
        self._t0 = time.monotonic()
        self._console = console or Console(stderr=True)
        show = self._console.is_terminal if enabled is None else enabled
        self._progress: Progress | None = None
        self._task: Any = None
        if show:
            self._progress = Progress(
                SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                console=self._console, transient=False,
            )
            self._task = self._progress.add_task(label, total=total, rate="", status="")
        self._metrics: IO[str] | None = None
        if metrics_jsonl is not None:
            try:
                Path(metrics_jsonl).parent.mkdir(parents=True, exist_ok=True)
                self._metrics = open(metrics_jsonl, "a", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise ConfigError(f"--metrics-jsonl {metrics_jsonl}: {exc.strerror}") from None
            self._emit("start")

    # ---- what the commands call -------------------------------------------------------------

    @property
    def value(self) -> float | None:
        """The running mean of the values seen (None before the first)."""
        return self._sum / self._n if self._n else None

    def add_total(self, n: int) -> None:
        """More items planned (eval and rerank learn their work per method)."""
        self.total = (self.total or 0) + n
        if self._progress is not None:
            self._progress.update(self._task, total=self.total)

    def describe(self, label: str) -> None:
        """Change the label (e.g. the method now running)."""
        self.label = label
        if self._progress is not None:
            self._progress.update(self._task, description=label)

    def item(self, value: float | None = None, *, error: bool = False) -> None:
        """One item finished; ``value`` (None: none, e.g. a failed item) feeds the running mean."""
        self.done += 1
        self.errors += bool(error)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            self._sum += float(value)
            self._n += 1
        if self._progress is not None:
            rate = self._rate()
            status = f"{self.metric} {self.value:.3f}" if self.value is not None else ""
            if self.errors:
                status += f"  [red]{self.errors} errors[/red]"
            self._progress.update(self._task, advance=1, rate=f"{rate:.2f} items/s",
                                  status=status)
        self._emit("progress")

    def close(self) -> None:
        """Stop the display and write the final metrics object."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._metrics is not None:
            self._emit("final")
            self._metrics.close()
            self._metrics = None

    def __enter__(self) -> Self:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals --------------------------------------------------------------------------

    def _rate(self) -> float:
        elapsed = time.monotonic() - self._t0
        return self.done / elapsed if elapsed > 0 else 0.0

    def _emit(self, event: str) -> None:
        if self._metrics is None:
            return
        elapsed = time.monotonic() - self._t0
        rate = self._rate()
        left = None if self.total is None else max(self.total - self.done, 0)
        eta = None if left is None or not rate else round(left / rate, 3)
        obj = {"event": event, "command": self.label, "done": self.done, "total": self.total,
               "elapsed_s": round(elapsed, 3), "items_per_s": round(rate, 4), "eta_s": eta,
               "metric": self.metric, "value": self.value, "errors": self.errors,
               "time": datetime.now(UTC).isoformat(timespec="seconds")}
        self._metrics.write(json.dumps(obj) + "\n")
        self._metrics.flush()
