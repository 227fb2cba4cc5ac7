"""A/B experiments: a user is assigned to a variant by a stable hash of their id.

Config is a JSON file (RankingConfig.experiments, RECSYS_EXPERIMENTS), never code:

    {"salt": "exp-2026-11",                       optional; change it to reshuffle users
     "rules": {"creator_cap": 2},                  optional; overrides for every variant
     "variants": [
       {"name": "control", "share": 0.5},
       {"name": "low_mmr", "share": 0.5, "rules": {"mmr_lambda": 0.5, "steps": ["mmr"]},
        "bundle": "/bundles/20261120T000000Z-abcd1234"}   optional; default the served one
     ]}

Shares must sum to 1. Assignment: u = first 8 bytes of sha256(salt ":" user_id) as an
integer / 2^64, uniform in [0, 1); the variant is the one whose cumulative share interval
holds u. The same user gets the same variant in every process and after every restart,
as long as the salt and the shares are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ranking_svc.rules import RuleConfig, RuleConfigError

DEFAULT_VARIANT = "default"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class Variant:
    name: str
    share: float
    rules: RuleConfig
    bundle: str = ""  # "" = the bundle the service was started with


@dataclass(frozen=True)
class Experiment:
    salt: str
    variants: tuple[Variant, ...]

    def assign(self, user_id: str) -> Variant:
        if len(self.variants) == 1:  # every user's, whatever the hash
            return self.variants[0]
        u = bucket(user_id, self.salt)
        upper = 0.0
        for v in self.variants:
            upper += v.share
            if u < upper:
                return v
        return self.variants[-1]  # u within rounding of 1.0


def bucket(user_id: str, salt: str = "") -> float:
    """A uniform number in [0, 1) fixed by (salt, user_id)."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def single_variant(rules: RuleConfig | None = None) -> Experiment:
    return Experiment("", (Variant(DEFAULT_VARIANT, 1.0, rules or RuleConfig()),))


def parse_experiment(data: Any, base: RuleConfig | None = None) -> Experiment:
    """Validate a parsed JSON object; errors name the offending key."""
    if not isinstance(data, dict):
        raise RuleConfigError("experiments: expected a JSON object")
    unknown = set(data) - {"salt", "rules", "variants"}
    if unknown:
        raise RuleConfigError(f"experiments: unknown keys {sorted(unknown)}")
    salt = data.get("salt", "")
    if not isinstance(salt, str):
        raise RuleConfigError(f"salt: expected a string, got {salt!r}")
    common = (base or RuleConfig()).with_overrides(data.get("rules") or {})
    raw = data.get("variants")
    if not isinstance(raw, list) or not raw:
        raise RuleConfigError("variants: expected a non-empty list")
    variants: list[Variant] = []
    for n, v in enumerate(raw):
        f = f"variants[{n}]"
        if not isinstance(v, dict) or not set(v) <= {"name", "share", "rules", "bundle"}:
            raise RuleConfigError(f"{f}: expected an object with name, share, rules?, bundle?")
        name = v.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise RuleConfigError(f"{f}.name: 1..64 of [A-Za-z0-9_.-], got {name!r}")
        if name in {x.name for x in variants}:
            raise RuleConfigError(f"{f}.name: {name!r} is used twice")
        share = v.get("share")
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
            raise RuleConfigError(f"{f}.share: a number in 0..1, got {share!r}")
        bundle = v.get("bundle", "")
        if not isinstance(bundle, str):
            raise RuleConfigError(f"{f}.bundle: expected a path string, got {bundle!r}")
        try:
            rules = common.with_overrides(v.get("rules") or {})
        except RuleConfigError as e:
            raise RuleConfigError(f"{f}.rules.{e}") from None
        variants.append(Variant(name, float(share), rules, bundle))
    total = sum(v.share for v in variants)
    if abs(total - 1.0) > 1e-9:
        raise RuleConfigError(f"variants: shares sum to {total}, must sum to 1")
    return Experiment(salt, tuple(variants))


def load_experiment(path: str | Path | None, base: RuleConfig | None = None) -> Experiment:
    """The experiment in a JSON file, or one "default" variant when no file is given."""
    if not path:
        return single_variant(base)
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RuleConfigError(f"experiments: cannot read {path}: {e}") from None
    return parse_experiment(data, base)
