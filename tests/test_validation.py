"""The one set of option checks (``lightning_tricks._validation``): one message naming the option, what it allows
and the value given."""

from __future__ import annotations

import math
from typing import Any, Literal

import pytest

from lightning_tricks._validation import (
    check_bool,
    check_choice,
    check_every_n,
    check_float,
    check_int,
    check_int_list,
    invalid,
)


def _message(check: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ValueError) as error:
        check(*args, **kwargs)
    return str(error.value)


def test_one_template_names_the_option_what_it_allows_and_the_value() -> None:
    assert str(invalid("x", "a pair", (1, 2))) == "Expected argument `x` to be a pair, but got (1, 2)."
    assert _message(check_choice, "mode", "l3", Literal["l1", "l2"]) == (
        "Expected argument `mode` to be one of ('l1', 'l2'), but got 'l3'."
    )
    assert _message(check_float, "decay", 1.5, 0, 1) == (
        "Expected argument `decay` to be a float in [0, 1], but got 1.5."
    )
    assert _message(check_float, "lr", 0.0, 0, low_open=True) == (
        "Expected argument `lr` to be a finite float > 0, but got 0.0."
    )
    assert _message(check_float, "p", 100.5, 0, 100, low_open=True) == (
        "Expected argument `p` to be a float in (0, 100], but got 100.5."
    )
    assert _message(check_int, "patience", -1, 0) == "Expected argument `patience` to be an int >= 0, but got -1."
    assert _message(check_int, "total", 0, 1, allow_none=True) == (
        "Expected argument `total` to be an int >= 1 or None, but got 0."
    )
    assert _message(check_every_n, "log_every_n_steps", 0) == (
        "Expected argument `log_every_n_steps` to be a positive int or None, but got 0."
    )
    assert _message(check_bool, "per_layer", "yes") == (
        "Expected argument `per_layer` to be a bool (True or False), but got 'yes'."
    )
    assert _message(check_int_list, "stages", [2, 0], non_empty=True) == (
        "Expected argument `stages` to be a non-empty list of positive ints, but got [2, 0]."
    )


@pytest.mark.parametrize(
    ("check", "args", "kwargs"),
    [
        (check_float, ("x", math.nan, 0), {}),  # NaN fails every range
        (check_float, ("x", math.nan), {}),
        (check_float, ("x", math.inf, 0), {}),  # finite by default
        (check_float, ("x", True, 0), {}),  # a bool is no number here
        (check_float, ("x", "1.0", 0), {}),  # nor is a string
        (check_float, ("x", None, 0), {}),  # None only with allow_none
        (check_float, ("x", 1.0, 0, 1), {"high_open": True}),
        (check_int, ("x", True, 0), {}),
        (check_int, ("x", 1.5, 0), {}),
        (check_int, ("x", 11, 1, 10), {}),
        (check_every_n, ("x", None), {"allow_none": False}),
        (check_every_n, ("x", False), {}),
        (check_int_list, ("x", []), {"non_empty": True}),
        (check_int_list, ("x", [1, True]), {}),
        (check_int_list, ("x", "12"), {}),
        (check_choice, ("x", "c", ("a", "b")), {}),
    ],
)
def test_bad_values_are_refused(check: Any, args: tuple, kwargs: dict) -> None:
    with pytest.raises(ValueError, match=r"^Expected argument `x` to be .*, but got .*\.$"):
        check(*args, **kwargs)


def test_good_values_pass() -> None:
    check_float("x", math.inf, 0, low_open=True, finite=False)
    check_float("x", 1, 0, 1)  # an int is a float here
    check_float("x", None, allow_none=True)
    check_int("x", 10, 1, 10)
    check_int("x", None, allow_none=True)
    check_every_n("x", None)
    check_int_list("x", [])
    check_int_list("x", (1, 2))
    check_choice("x", "b", ("a", "b"))
    check_bool("x", False)
