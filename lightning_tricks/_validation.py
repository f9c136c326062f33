"""The option checks of every public class, and their one message (the "validated options" rule of the design).

A bad option raises ``ValueError`` with one template, naming the option, what it allows and what was given (the
torchmetrics wording)::

    Expected argument `threshold` to be a finite float > 0, but got -1.0.

Each ``check_*`` function returns nothing and raises that error. Numbers are never booleans here (``True`` is an
``int`` to Python, not a meaningful ``patience``), and NaN fails every range. :func:`invalid` builds the same error
for the rare option whose allowed values no check below describes (a pair, a device string, an import path).
"""

from __future__ import annotations

import math
from typing import Any, get_args


def invalid(option: str, allowed: str, value: Any) -> ValueError:
    """The one message: ``Expected argument `option` to be <allowed>, but got <value>.`` (returned, to be raised)."""
    return ValueError(f"Expected argument `{option}` to be {allowed}, but got {value!r}.")


def check_choice(option: str, value: Any, allowed: Any) -> None:
    """``value`` is one of ``allowed``: a ``Literal[...]`` type or a sequence of values."""
    choices = get_args(allowed) or tuple(allowed)
    if value not in choices:
        raise invalid(option, f"one of {choices}", value)


def check_bool(option: str, value: Any) -> None:
    """``value`` is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise invalid(option, "a bool (True or False)", value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bounds(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """``>= 0``, ``> 1``, ``<= 5`` or ``[0, 1)``-style text of a range (empty when unbounded)."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return ""


def _within(value: float, low: float | None, high: float | None, low_open: bool, high_open: bool) -> bool:
    above = low is None or (value > low if low_open else value >= low)
    below = high is None or (value < high if high_open else value <= high)
    return above and below and not math.isnan(value)


def check_float(
    option: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
    allow_none: bool = False,
) -> None:
    """``value`` is a number (an int is a float here) in the range; finite unless ``finite=False`` (then ``inf`` is
    allowed); ``None`` only with ``allow_none``.

    Example::

        check_float("decay", decay, 0, 1)  # "... to be a float in [0, 1], but got 1.5."
        check_float("threshold", threshold, 0, low_open=True)  # "... to be a finite float > 0, but got 0.0."
    """
    if value is None and allow_none:
        return
    bounds = _bounds(low, high, low_open, high_open)
    bounded = low is not None and high is not None
    kind = "a float" if bounded or not finite else "a finite float"
    allowed = " ".join(part for part in (kind, bounds, "" if finite else "(or inf)") if part)
    if allow_none:
        allowed += " or None"
    ok = _is_number(value) and _within(float(value), low, high, low_open, high_open)
    if not ok or (finite and not math.isfinite(value)):
        raise invalid(option, allowed, value)


def check_int(
    option: str, value: Any, low: int | None = None, high: int | None = None, *, allow_none: bool = False
) -> None:
    """``value`` is an int (not a bool) with ``low <= value <= high``; ``None`` only with ``allow_none``.

    Example::

        check_int("patience", patience, 0)  # "... to be an int >= 0, but got -1."
    """
    if value is None and allow_none:
        return
    allowed = " ".join(part for part in ("an int", _bounds(low, high, False, False)) if part)
    if allow_none:
        allowed += " or None"
    if not (_is_int(value) and _within(value, low, high, False, False)):
        raise invalid(option, allowed, value)


def check_every_n(option: str, value: Any, allow_none: bool = True) -> None:
    """An interval: a positive int, or ``None`` (the Trainer's own) when ``allow_none``."""
    if value is None and allow_none:
        return
    if not (_is_int(value) and value >= 1):
        raise invalid(option, "a positive int or None" if allow_none else "a positive int", value)


def check_int_list(option: str, value: Any, low: int = 1, *, non_empty: bool = False) -> None:
    """``value`` is a list (or tuple) of ints ``>= low`` (of at least one when ``non_empty``)."""
    what = "positive ints" if low == 1 else f"ints >= {low}"
    allowed = f"a non-empty list of {what}" if non_empty else f"a list of {what}"
    if not isinstance(value, (list, tuple)) or (non_empty and not value):
        raise invalid(option, allowed, value)
    if any(not (_is_int(item) and item >= low) for item in value):
        raise invalid(option, allowed, value)
