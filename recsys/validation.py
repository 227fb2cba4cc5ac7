"""Input validation shared by both services: one rule for ids, one error type.

Servicers turn `InvalidArgument` into gRPC INVALID_ARGUMENT with a message that names the
field path first ("events[3].item_id: ..."), so callers can fix the exact field.
"""

from __future__ import annotations

import re

MAX_ID_CHARS = 128
# No whitespace, no control characters (C0, DEL, C1), 1..128 characters.
_ID_RE = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]{1,128}")
# Many ids joined by "\n" (whitespace, so never inside a valid id): one regex call checks a
# whole repeated field, linear (the separator is not in the id class, so nothing backtracks).
_IDS_RE = re.compile(r"(?:[^\s\x00-\x1f\x7f-\x9f]{1,128}\n)*[^\s\x00-\x1f\x7f-\x9f]{1,128}")
MIN_TIME_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_TIME_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z


class InvalidArgument(ValueError):
    """A request field is out of its documented limits."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def check_id(value: str, field: str, *, required: bool = True) -> str:
    """Return `value` when it is a well-formed id (or empty and not required)."""
    if not value:
        if required:
            raise InvalidArgument(field, "is required")
        return value
    if len(value) > MAX_ID_CHARS:
        raise InvalidArgument(field, f"is {len(value)} characters, at most {MAX_ID_CHARS} allowed")
    if not _ID_RE.fullmatch(value):
        raise InvalidArgument(field, "must not contain whitespace or control characters")
    return value


def check_ids(values: list[str] | tuple[str, ...], field: str, max_count: int) -> list[str]:
    """Validate a repeated id field: at most `max_count` entries, each a well-formed id."""
    if len(values) > max_count:
        raise InvalidArgument(field, f"has {len(values)} entries, at most {max_count} allowed")
    joined = "\n".join(values)
    # all well-formed (~20x faster than one by one), and no value held a "\n" of its own
    if values and joined.count("\n") == len(values) - 1 and _IDS_RE.fullmatch(joined):
        return list(values)
    for i, value in enumerate(values):  # find the first bad one, for its message
        check_id(value, f"{field}[{i}]")
    return list(values)


def check_range(value: int | float, field: str, low: float, high: float) -> None:
    """Inclusive numeric range check."""
    if not (low <= value <= high):  # also rejects NaN
        raise InvalidArgument(field, f"is {value}, must be in [{low}, {high}]")


def check_text(value: str, field: str, max_chars: int) -> None:
    """Free text: at most `max_chars` characters and no control characters."""
    if len(value) > max_chars:
        raise InvalidArgument(field, f"is {len(value)} characters, at most {max_chars} allowed")
    if any(ord(c) < 32 or 127 <= ord(c) <= 159 for c in value):
        raise InvalidArgument(field, "must not contain control characters")


def check_time_ms(value: int, field: str, *, allow_zero: bool = True) -> None:
    """A Unix-millisecond time between 2000-01-01 and 2100-01-01 (or 0 = now)."""
    if value == 0 and allow_zero:
        return
    if not (MIN_TIME_MS <= value <= MAX_TIME_MS):
        raise InvalidArgument(
            field, f"is {value}, must be Unix milliseconds between 2000-01-01 and 2100-01-01"
        )


def check_user_features(features, field: str) -> None:
    """recsys.v1.UserFeatures limits, as documented in common.proto."""
    check_range(features.age, f"{field}.age", 0, 150)
    check_text(features.gender, f"{field}.gender", 32)
    check_text(features.occupation, f"{field}.occupation", 64)
    check_text(features.region, f"{field}.region", 64)
