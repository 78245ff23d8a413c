"""Saves by the clock and the profiler's trace of chosen steps."""

import pytest

from alexnet_jax.loop import timers


def test_a_save_is_due_when_the_minutes_have_passed_since_the_last(monkeypatch):
  now = [1000.0]
  monkeypatch.setattr(timers.time, 'monotonic', lambda: now[0])
  clock = timers.SaveClock(minutes=30)
  now[0] += 30 * 60 - 1
  assert not clock.due()
  now[0] += 1
  assert clock.due()
  clock.saved()
  now[0] += 60
  assert not clock.due()
  never = timers.SaveClock(minutes=0)
  now[0] += 10 ** 6
  assert not never.due()


@pytest.mark.parametrize('steps, calls', [(3, ['start /w', 'stop']), (0, [])])
def test_the_trace_covers_its_steps_and_stops_once(monkeypatch, steps, calls):
  made = []
  monkeypatch.setattr(timers.jax.profiler, 'start_trace', lambda d: made.append(f'start {d}'))
  monkeypatch.setattr(timers.jax.profiler, 'stop_trace', lambda: made.append('stop'))
  trace = timers.ProfileTrace('/w', first=5, steps=steps)
  for step in range(1, 12):
    trace(step)
    if step == 5 and steps:
      assert made == ['start /w']
  trace.stop()   # the run's end: the trace was already stopped at step 8
  assert made == calls
