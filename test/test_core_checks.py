"""check_number: the one number check of options, arguments and parameters."""
from depth_ros.core.checks import check_number
import numpy as np
import pytest


@pytest.mark.parametrize('value, kwargs, expected', [
    (3, dict(low=1, high=5, integer=True), 3),
    (np.int64(4), dict(low=1, high=5, integer=True), 4),
    (0.5, dict(low=0.0, high=1.0), 0.5),
    (np.float32(0.25), dict(low=0.0), 0.25),
    (2, dict(), 2.0),
    (None, dict(allow_none=True), None),
])
def test_accepts_and_converts(value, kwargs, expected):
    out = check_number('x', value, **kwargs)
    assert out == expected and type(out) is type(expected), \
        'expected {!r}, received {!r}'.format(expected, out)


@pytest.mark.parametrize('value, kwargs, text', [
    (True, dict(integer=True), '`x` must be an integer, got True'),
    (np.bool_(True), dict(), '`x` must be a finite number, got'),
    (0.5, dict(integer=True, low=1, high=5), 'must be an integer in [1, 5], got 0.5'),
    (6, dict(integer=True, low=1, high=5, high_open=True), 'must be an integer in [1, 5), got 6'),
    (float('nan'), dict(), 'must be a finite number, got nan'),
    (float('inf'), dict(low=0.0), 'must be a finite number >= 0.0, got inf'),
    (0, dict(low=0, low_open=True), '`x` must be a finite number > 0, got 0'),
    (1.0, dict(high=1.0, high_open=True), 'must be a finite number < 1.0, got 1.0'),
    (0, dict(low=1, integer=True), '`x` must be an integer >= 1, got 0'),
    (np.zeros(2), dict(), 'must be a finite number, got array'),
    ('3', dict(), "got '3'"),
    (None, dict(), 'got None'),
])
def test_refuses_with_name_and_value(value, kwargs, text):
    with pytest.raises(ValueError) as info:
        check_number('x', value, **kwargs)
    assert text in str(info.value), 'expected {!r} in {!r}'.format(text, str(info.value))


def test_kind_names_what_is_checked():
    with pytest.raises(ValueError, match=r'^option `alpha` must be'):
        check_number('alpha', -1.0, low=0.0, kind='option')
