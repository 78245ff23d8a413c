"""The progress line's rates, share done and time left, on a clock the test moves."""

import logging

import pytest

from alexnet_jax.loop import progress_line


class _Clock:
  def __init__(self):
    self.wall, self.cpu = 100.0, 10.0


@pytest.fixture
def clock(monkeypatch):
  clock = _Clock()
  monkeypatch.setattr(progress_line.time, 'monotonic', lambda: clock.wall)
  monkeypatch.setattr(progress_line.time, 'thread_time', lambda: clock.cpu)
  return clock


def test_rates_leave_out_evaluations_and_the_time_left_is_at_todays_rate(clock, caplog):
  progress = progress_line.Progress(first_step=100, last_step=1100, global_batch=128)
  clock.wall, clock.cpu = 100.0 + 50 + 30, 10.0 + 0.25 + 1.0   # 50 s training, 30 evaluating
  progress.exclude(30.0, 1.0)
  with caplog.at_level(logging.INFO):
    rates = progress.report(200)
  assert rates == pytest.approx({'steps_per_sec': 2.0, 'images_per_sec': 256.0,
                                 'host_ms_per_step': 2.5})
  assert caplog.messages[-1] == ('Step 200 of 1100 (18.2%), 2.00 steps/s, 256 images/s, '
                                 '7 min 30 s left; the training thread spent 2.50 ms of CPU '
                                 'per step.')
  assert progress.report(200) == {}   # no step since: nothing to rate
  clock.wall += 10.0
  assert progress.report(300)['steps_per_sec'] == pytest.approx(10.0)


@pytest.mark.parametrize('seconds, text', [(0.4, '0 s'), (59, '59 s'), (61, '1 min 01 s'),
                                           (3599.6, '1 h 00 min'), (7384, '2 h 03 min')])
def test_durations_read_as_a_person_says_them(seconds, text):
  assert progress_line._duration(seconds) == text
