"""progress.Progress: lines with a time estimate, at most every `every_seconds`."""

import io

from sigma_vae_jax.training import progress


class _Clock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def test_progress_prints_rate_based_eta_only_when_due():
  clock, out = _Clock(), io.StringIO()
  bar = progress.Progress("IWAE", 10, every_seconds=15, stream=out, clock=clock)
  seen = []
  for i in bar.iterate(range(10)):
    seen.append(i)
    clock.now += 4.0  # each batch takes 4 s
  assert seen == list(range(10))
  # Due after 16 s (4 batches done, 6 left at 4 s each: 24 s), then after 32 s (8 done).
  assert out.getvalue().splitlines() == [
      "IWAE: 4/10 batches (40%), elapsed 16s, ETA 24s",
      "IWAE: 8/10 batches (80%), elapsed 32s, ETA 8s"]


def test_short_loops_print_nothing():
  clock, out = _Clock(), io.StringIO()
  bar = progress.Progress("FID features", 3, every_seconds=15, stream=out, clock=clock)
  for _ in bar.iterate(range(3)):
    clock.now += 1.0
  assert out.getvalue() == ""


def test_format_seconds():
  assert [progress.format_seconds(s) for s in (6, 245, 3723)] == ["6s", "4m05s",
                                                                  "1h02m03s"]
