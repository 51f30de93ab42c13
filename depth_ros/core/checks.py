"""Input checks shared by the core: errors name the argument and its value."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np


def describe(value) -> str:
    """Short description of an array-like for error messages."""
    if isinstance(value, np.ndarray):
        return 'array of shape {} and dtype {}'.format(value.shape, value.dtype)
    return '{} {!r}'.format(type(value).__name__, value)[:200]


def check_image(name: str, value, channels: Optional[int] = None,
                dtypes: Tuple = ()) -> np.ndarray:
    """
    Check an HxW (channels None) or HxWxC image; return it as an ndarray.

    :raises ValueError: naming ``name`` and the value when it does not fit.
    """
    if not isinstance(value, np.ndarray):
        raise ValueError('`{}` must be a numpy array, got {}'.format(name, describe(value)))
    if channels is None:
        ok = value.ndim == 2
        want = 'HxW'
    else:
        ok = value.ndim == 3 and value.shape[2] == channels
        want = 'HxWx{}'.format(channels)
    if not ok:
        raise ValueError('`{}` must be {}, got {}'.format(name, want, describe(value)))
    if value.shape[0] == 0 or value.shape[1] == 0:
        raise ValueError('`{}` is empty: {}'.format(name, describe(value)))
    if dtypes and value.dtype not in [np.dtype(d) for d in dtypes]:
        raise ValueError('`{}` must have dtype {}, got {}'.format(
            name, ' or '.join(np.dtype(d).name for d in dtypes), describe(value)))
    return value


def check_same_size(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    """Raise ValueError unless ``a`` and ``b`` have the same height and width."""
    if a.shape[:2] != b.shape[:2]:
        raise ValueError('`{}` has size {} but `{}` has size {}; they must match'.format(
            name_a, a.shape[:2], name_b, b.shape[:2]))


def check_positive(name: str, value, allow_none: bool = False):
    """Raise ValueError unless ``value`` is a finite number > 0."""
    if value is None and allow_none:
        return value
    ok = is_real_number(value) and bool(np.isfinite(value)) and value > 0
    if not ok:
        raise ValueError('`{}` must be a finite number > 0, got {!r}'.format(name, value))
    return value


def is_real_number(value) -> bool:
    """Return True for a real scalar (int, float, numpy scalar), False for bools and arrays."""
    return isinstance(value, (int, float, np.integer, np.floating)) \
        and not isinstance(value, (bool, np.bool_))


def _bounds_text(low, high, low_open, high_open) -> str:
    if low is not None and high is not None:
        return ' in {}{}, {}{}'.format('(' if low_open else '[', low, high,
                                       ')' if high_open else ']')
    if low is not None:
        return ' {} {}'.format('>' if low_open else '>=', low)
    if high is not None:
        return ' {} {}'.format('<' if high_open else '<=', high)
    return ''


def check_number(name: str, value, low=None, high=None, integer: bool = False,
                 low_open: bool = False, high_open: bool = False, allow_none: bool = False,
                 kind: str = ''):
    """
    Check a real scalar; return it as ``int`` (``integer``) or ``float``.

    Bools, arrays, strings, NaN and infinities are refused, as are values outside
    ``[low, high]`` (``low_open``/``high_open``: that end excluded; None: unbounded).

    :param kind: what is checked, as the first word of the message (``'option'``,
        ``'parameter'``); empty by default.
    :raises ValueError: ``[kind ]`name` must be an integer >= 1, got 0`` (or ``a finite
        number in [0.0, 1.0]``...).
    """
    if value is None and allow_none:
        return None
    if integer:
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    else:
        ok = is_real_number(value) and bool(np.isfinite(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        what = ('an integer' if integer else 'a finite number') + \
            _bounds_text(low, high, low_open, high_open)
        raise ValueError('{}`{}` must be {}, got {!r}'.format(kind + ' ' if kind else '', name,
                                                              what, value))
    return int(value) if integer else float(value)
