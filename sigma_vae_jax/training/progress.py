"""Progress lines with a time estimate for long host-side loops (FID samples and
features, IWAE, video scores, sweeps).

`Progress(label, total)` prints `LABEL: i/total (p%), elapsed 1m05s, ETA 2m10s` at
most every `every_seconds` (default 15 s), so loops that end sooner print nothing. The
rate is measured on the host between `update` calls: accurate when the loop already
brings each step's result to the host (as these loops do), and never a reason to add
a device sync. Imports only the standard library.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterable, Iterator, Optional, TextIO, TypeVar

T = TypeVar("T")
EVERY_SECONDS = 15.0


def format_seconds(seconds: float) -> str:
  """1h02m03s, 4m05s or 6s."""
  seconds = int(max(seconds, 0))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
  """Counts finished units of a loop of `total` and prints a line now and then."""

  def __init__(self, label: str, total: int, *, every_seconds: float = EVERY_SECONDS,
               unit: str = "batches", stream: Optional[TextIO] = None,
               clock: Callable[[], float] = time.monotonic):
    self.label, self.total, self.unit = label, int(total), unit
    self.every_seconds = every_seconds
    self.stream = stream
    self.clock = clock
    self.start = self.last_print = clock()
    self.done = 0

  def line(self) -> str:
    elapsed = self.clock() - self.start
    text = (f"{self.label}: {self.done}/{self.total} {self.unit} "
            f"({100.0 * self.done / max(self.total, 1):.0f}%), elapsed "
            f"{format_seconds(elapsed)}")
    if 0 < self.done < self.total:
      text += f", ETA {format_seconds(elapsed / self.done * (self.total - self.done))}"
    return text

  def update(self, done: Optional[int] = None) -> None:
    """Marks `done` units finished (default: one more); prints if due."""
    self.done = self.done + 1 if done is None else int(done)
    now = self.clock()
    if now - self.last_print >= self.every_seconds and self.done < self.total:
      self.last_print = now
      print(self.line(), file=self.stream or sys.stdout, flush=True)

  def iterate(self, iterable: Iterable[T]) -> Iterator[T]:
    """Yields the items of iterable, counting one unit after each."""
    for item in iterable:
      yield item
      self.update()
