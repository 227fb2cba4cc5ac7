"""recsys.validation: the one-regex fast path for repeated id fields gives exactly the
answer (and the message) of checking the ids one by one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from recsys import validation as v

# ids built from pieces that sit on every edge of the rule: whitespace of several kinds
# (the fast path joins with "\n"), C0 / DEL / C1 controls, non-ASCII, and lengths 127-129
PIECES = ["a", "é", "z9", " ", "\n", "\n\n", "\t", "\x00", "\x7f", "\x85", "\u2028", "x" * 127, "y" * 128, ""]


def _one_by_one(values: list[str]) -> str | None:
    try:
        for i, value in enumerate(values):
            v.check_id(value, f"f[{i}]")
    except v.InvalidArgument as e:
        return str(e)
    return None


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.lists(st.sampled_from(PIECES), max_size=3).map("".join), max_size=5))
def test_check_ids_matches_checking_each_id(values):
    try:
        got = v.check_ids(values, "f", 10)
        message = None
    except v.InvalidArgument as e:
        got, message = None, str(e)
    assert message == _one_by_one(values)
    if message is None:
        assert got == values


def test_an_id_holding_the_separator_is_refused_with_its_index():
    try:
        v.check_ids(["ok", "b\n" + "x" * 100], "history", 10)
    except v.InvalidArgument as e:
        assert str(e) == "history[1]: must not contain whitespace or control characters"
    else:
        raise AssertionError("an id with a newline was accepted")
