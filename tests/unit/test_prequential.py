"""PrequentialAccuracy over a sliding window."""
from __future__ import annotations

import math

import numpy as np
import pytest

from lifelong.monitoring.prequential import PrequentialAccuracy


def test_nan_before_any_update() -> None:
    acc = PrequentialAccuracy(window=4)
    assert math.isnan(acc.value)
    acc.update(np.zeros(0, bool))
    assert math.isnan(acc.value)
    assert acc.total == 0


def test_windowed_value_by_hand() -> None:
    acc = PrequentialAccuracy(window=4)
    acc.update([True, False, True])
    assert acc.value == pytest.approx(2 / 3)
    acc.update([True])                    # window: T F T T
    assert acc.value == pytest.approx(3 / 4)
    acc.update([False, False])            # window: T T F F (oldest two dropped)
    assert acc.value == pytest.approx(2 / 4)
    acc.update([True])                    # window: T F F T
    assert acc.value == pytest.approx(2 / 4)
    assert acc.total == 7
    assert acc.total_correct == 4


def test_update_with_more_than_window_items_keeps_the_last_window() -> None:
    acc = PrequentialAccuracy(window=3)
    acc.update([True])
    acc.update([True, True, False, False, True])  # last three: F F T
    assert acc.value == pytest.approx(1 / 3)
    assert acc.total == 6
    assert acc.total_correct == 4
    acc.update([True, True])                      # window: T T T
    assert acc.value == pytest.approx(1.0)


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PrequentialAccuracy(window=0)


def test_state_round_trip() -> None:
    acc = PrequentialAccuracy(window=5)
    rng = np.random.default_rng(0)
    acc.update(rng.random(7) < 0.6)
    twin = PrequentialAccuracy(window=5)
    twin.load_state_dict(acc.state_dict())
    assert twin.value == acc.value
    assert (twin.total, twin.total_correct) == (acc.total, acc.total_correct)
    more = rng.random(3) < 0.5
    acc.update(more)
    twin.update(more)
    assert twin.value == acc.value


def test_state_with_other_window_is_rejected() -> None:
    acc = PrequentialAccuracy(window=5)
    acc.update([True])
    with pytest.raises(ValueError):
        PrequentialAccuracy(window=6).load_state_dict(acc.state_dict())
