"""One typed, validated configuration per process.

Every setting has a default, an environment variable, and a command-line flag (the CLI
overrides the environment, which overrides the default). Validation happens at load and
names the setting. The table of variables is `ENV_TABLE`, printed by `recsys serve --help`
and reproduced in the README.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

MAX_K = 100
MAX_CANDIDATES = 2000
OTEL_MODES = ("off", "console", "otlp")  # recsys.tracing.MODES (kept here: config imports nothing)


EVENT_STORE_SCHEMES = ("redis://", "rediss://", "unix://")


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the setting."""


@dataclass(frozen=True)
class SecuritySettings:
    """Both services (recsys.security; all off by default, see docs/RELIABILITY.md)."""

    tls_cert: str = ""  # PEM certificate chain: the main port speaks TLS
    tls_key: str = ""  # its PEM private key
    tls_client_ca: str = ""  # PEM CA: clients must present a certificate it signed (mTLS)
    auth_tokens: str = ""  # JSON file token -> allowed methods; "" = no token auth
    reflection: bool = False  # gRPC server reflection (dev and tests; it maps the API for anyone)
    health_port: int = 0  # grpc.health.v1 alone on this plaintext port (probes under TLS); 0 = off

    def _check_security(self) -> None:
        # the files (and which go together) are checked where they are read, at server start
        _check(0 <= self.health_port <= 65535, "health_port", self.health_port, "0 (off)..65535")


@dataclass(frozen=True)
class CandidateChannelSettings:
    """The ranking tier's channel to the candidate tier (recsys.security)."""

    candidate_tls_ca: str = ""  # PEM CA the candidate tier's certificate must chain to; "" = plaintext
    candidate_tls_cert: str = ""  # client certificate for mTLS to the candidate tier
    candidate_tls_key: str = ""  # its private key
    candidate_token: str = ""  # bearer token sent to the candidate tier when it checks tokens

    def _check_candidate_channel(self) -> None:
        _check(not any(c.isspace() or ord(c) < 32 for c in self.candidate_token), "candidate_token",
               "<redacted>", "no whitespace or control characters")


@dataclass(frozen=True)
class CandidateConfig(SecuritySettings):
    bundle: str = "var/bundles"
    host: str = "127.0.0.1"
    port: int = 50051
    workers: int = 8  # gRPC handler threads (compute itself is single-threaded)
    popular_fraction: float = 0.2  # share of candidates reserved for the popular source
    ann_expansion: int = 64  # usearch expansion_search at query time
    # scan every item instead of walking the graph while the catalogue holds at most this
    # many items per two-tower result asked for (exact, and cheaper there); 0 = always walk
    ann_scan_per_result: int = 40
    # share of candidates per further source, "name=fraction,..."; two_tower gets the rest
    source_fractions: str = "item_to_item=0.1,regional=0.05,trending=0.05,fresh=0.02"
    grace_s: float = 5.0  # SIGTERM grace period
    metrics_port: int = 0  # Prometheus /metrics on host:metrics_port; 0 = no endpoint
    otel: str = "off"  # OpenTelemetry traces: off, console, otlp (recsys.tracing)
    # The ranking tier's event store, read for online item counters (trending and fresh
    # sources; event_store_url wins when both are set); both empty = the bundle's arrays only.
    event_db: str = ""
    event_store_url: str = ""
    live_stats_ttl_s: float = 5.0  # re-read the item counters at most this often
    reload_interval_s: float = 0.0  # poll the bundle root's LATEST this often (recsys.reload); 0 = off

    def fractions(self) -> dict[str, float]:
        """`source_fractions` parsed (validate() has checked it)."""
        return parse_fractions(self.source_fractions)

    def validate(self) -> "CandidateConfig":
        self._check_security()
        _check(1 <= self.port <= 65535 or self.port == 0, "port", self.port, "0..65535")
        _check(1 <= self.workers <= 256, "workers", self.workers, "1..256")
        _check(0.0 <= self.popular_fraction <= 1.0, "popular_fraction", self.popular_fraction, "0..1")
        _check(1 <= self.ann_expansion <= 4096, "ann_expansion", self.ann_expansion, "1..4096")
        _check(0 <= self.ann_scan_per_result <= 100_000, "ann_scan_per_result", self.ann_scan_per_result,
               "0..100000")
        # Shares summing above 1 with popular_fraction are allowed: the merge admits
        # sources in priority order, so the later ones get what is left.
        try:
            parse_fractions(self.source_fractions)
        except ValueError as e:
            raise ConfigError(f"source_fractions: {e}") from None
        _check(0 <= self.grace_s <= 300, "grace_s", self.grace_s, "0..300")
        _check(0 <= self.metrics_port <= 65535, "metrics_port", self.metrics_port, "0..65535")
        _check(self.otel in OTEL_MODES, "otel", self.otel, "|".join(OTEL_MODES))
        _check(
            not self.event_store_url or self.event_store_url.startswith(EVENT_STORE_SCHEMES),
            "event_store_url", self.event_store_url, "empty (off) or " + " ".join(EVENT_STORE_SCHEMES) + "...",
        )
        _check(0.1 <= self.live_stats_ttl_s <= 3600, "live_stats_ttl_s", self.live_stats_ttl_s, "0.1..3600")
        _check_reload(self.reload_interval_s)
        return self


# Sources whose share `source_fractions` sets (two_tower takes the rest, popular has
# popular_fraction); names as in candidate_svc.sources.
CANDIDATE_SOURCES = frozenset({"item_to_item", "regional", "trending", "fresh"})


def parse_fractions(text: str) -> dict[str, float]:
    """"a=0.1,b=0.2" -> {"a": 0.1, "b": 0.2}; empty text -> {} (those sources off)."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name not in CANDIDATE_SOURCES or name in out:
            raise ValueError(f"{part!r}: expected name=fraction, name one of {sorted(CANDIDATE_SOURCES)}, once")
        try:
            share = float(value)
        except ValueError:
            raise ValueError(f"{part!r}: {value!r} is not a number") from None
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{part!r}: fraction out of 0..1")
        out[name] = share
    return out


@dataclass(frozen=True)
class RankingConfig(CandidateChannelSettings, SecuritySettings):
    bundle: str = "var/bundles"
    host: str = "127.0.0.1"
    port: int = 50052
    workers: int = 8
    candidate_address: str = "127.0.0.1:50051"
    retrieve_timeout_ms: int = 100  # deadline for Retrieve (capped by the caller's own)
    # Share of the caller's remaining time Retrieve may use (also capped by
    # retrieve_timeout_ms); the rest is kept for ranking and the re-ranking rules.
    retrieve_budget_fraction: float = 0.6
    num_candidates: int = 300  # asked of the candidate tier per request
    event_db: str = "var/events.sqlite3"
    event_store_url: str = ""  # redis://host:port/db: the shared Redis store instead of event_db
    history_limit: int = 200  # recent events read per request
    live_trending_ttl_s: float = 5.0  # re-read the store's online trending at most this often
    grace_s: float = 5.0
    experiments: str = ""  # JSON file: re-ranking rules and A/B variants ("" = default rules)
    metrics_port: int = 0  # Prometheus /metrics on host:metrics_port; 0 = no endpoint
    otel: str = "off"  # OpenTelemetry traces: off, console, otlp (recsys.tracing)
    reload_interval_s: float = 0.0  # poll the bundle root's LATEST this often (recsys.reload); 0 = off
    # Circuit breaker in front of the candidate tier (ranking_svc/breaker.py): open after this
    # many consecutive failed Retrieve calls (0 = no breaker), probe again after the cooldown.
    breaker_failures: int = 5
    breaker_cooldown_ms: int = 2000
    # Search encoder directory (`recsys export-encoder`, recsys/text_encoder.py): logged
    # searches then shape the content profile; "" = off (said so at start-up).
    text_encoder: str = ""

    def validate(self) -> "RankingConfig":
        self._check_security()
        self._check_candidate_channel()
        _check(1 <= self.port <= 65535 or self.port == 0, "port", self.port, "0..65535")
        _check(1 <= self.workers <= 256, "workers", self.workers, "1..256")
        _check(":" in self.candidate_address, "candidate_address", self.candidate_address, "host:port")
        _check(1 <= self.retrieve_timeout_ms <= 60_000, "retrieve_timeout_ms", self.retrieve_timeout_ms, "1..60000")
        _check(0.05 <= self.retrieve_budget_fraction <= 0.95, "retrieve_budget_fraction",
               self.retrieve_budget_fraction, "0.05..0.95")
        _check(
            MAX_K <= self.num_candidates <= MAX_CANDIDATES,
            "num_candidates",
            self.num_candidates,
            f"{MAX_K}..{MAX_CANDIDATES}",
        )
        _check(
            not self.event_store_url or self.event_store_url.startswith(EVENT_STORE_SCHEMES),
            "event_store_url", self.event_store_url, "empty (SQLite) or " + " ".join(EVENT_STORE_SCHEMES) + "...",
        )
        _check(1 <= self.history_limit <= 10_000, "history_limit", self.history_limit, "1..10000")
        _check(0.1 <= self.live_trending_ttl_s <= 3600, "live_trending_ttl_s", self.live_trending_ttl_s,
               "0.1..3600")
        _check(0 <= self.grace_s <= 300, "grace_s", self.grace_s, "0..300")
        _check(0 <= self.metrics_port <= 65535, "metrics_port", self.metrics_port, "0..65535")
        _check(self.otel in OTEL_MODES, "otel", self.otel, "|".join(OTEL_MODES))
        _check_reload(self.reload_interval_s)
        _check(0 <= self.breaker_failures <= 1000, "breaker_failures", self.breaker_failures, "0 (off)..1000")
        _check(10 <= self.breaker_cooldown_ms <= 600_000, "breaker_cooldown_ms", self.breaker_cooldown_ms,
               "10..600000")
        return self


def _check_reload(interval_s: float) -> None:
    _check(interval_s == 0 or 0.1 <= interval_s <= 3600, "reload_interval_s", interval_s, "0 (off) or 0.1..3600")


# (config class, field) -> environment variable
ENV_TABLE: dict[tuple[type, str], str] = {
    (CandidateConfig, "bundle"): "RECSYS_BUNDLE",
    (CandidateConfig, "host"): "RECSYS_HOST",
    (CandidateConfig, "port"): "RECSYS_CANDIDATE_PORT",
    (CandidateConfig, "workers"): "RECSYS_WORKERS",
    (CandidateConfig, "popular_fraction"): "RECSYS_POPULAR_FRACTION",
    (CandidateConfig, "ann_expansion"): "RECSYS_ANN_EXPANSION",
    (CandidateConfig, "ann_scan_per_result"): "RECSYS_ANN_SCAN_PER_RESULT",
    (CandidateConfig, "source_fractions"): "RECSYS_SOURCE_FRACTIONS",
    (CandidateConfig, "grace_s"): "RECSYS_GRACE_S",
    (CandidateConfig, "metrics_port"): "RECSYS_METRICS_PORT",
    (CandidateConfig, "otel"): "RECSYS_OTEL",
    (CandidateConfig, "event_db"): "RECSYS_CANDIDATE_EVENT_DB",
    (CandidateConfig, "event_store_url"): "RECSYS_CANDIDATE_EVENT_STORE_URL",
    (CandidateConfig, "live_stats_ttl_s"): "RECSYS_LIVE_STATS_TTL_S",
    (CandidateConfig, "reload_interval_s"): "RECSYS_RELOAD_INTERVAL_S",
    (RankingConfig, "bundle"): "RECSYS_BUNDLE",
    (RankingConfig, "host"): "RECSYS_HOST",
    (RankingConfig, "port"): "RECSYS_RANKING_PORT",
    (RankingConfig, "workers"): "RECSYS_WORKERS",
    (RankingConfig, "candidate_address"): "RECSYS_CANDIDATE_ADDRESS",
    (RankingConfig, "retrieve_timeout_ms"): "RECSYS_RETRIEVE_TIMEOUT_MS",
    (RankingConfig, "retrieve_budget_fraction"): "RECSYS_RETRIEVE_BUDGET_FRACTION",
    (RankingConfig, "num_candidates"): "RECSYS_NUM_CANDIDATES",
    (RankingConfig, "event_db"): "RECSYS_EVENT_DB",
    (RankingConfig, "event_store_url"): "RECSYS_EVENT_STORE_URL",
    (RankingConfig, "history_limit"): "RECSYS_HISTORY_LIMIT",
    (RankingConfig, "live_trending_ttl_s"): "RECSYS_LIVE_STATS_TTL_S",
    (RankingConfig, "grace_s"): "RECSYS_GRACE_S",
    (RankingConfig, "experiments"): "RECSYS_EXPERIMENTS",
    (RankingConfig, "metrics_port"): "RECSYS_METRICS_PORT",
    (RankingConfig, "otel"): "RECSYS_OTEL",
    (RankingConfig, "reload_interval_s"): "RECSYS_RELOAD_INTERVAL_S",
    (RankingConfig, "breaker_failures"): "RECSYS_BREAKER_FAILURES",
    (RankingConfig, "breaker_cooldown_ms"): "RECSYS_BREAKER_COOLDOWN_MS",
    (RankingConfig, "text_encoder"): "RECSYS_TEXT_ENCODER",
}


for _cls in (CandidateConfig, RankingConfig):  # security settings: one variable for both services
    ENV_TABLE.update({(_cls, f.name): f"RECSYS_{f.name.upper()}" for f in fields(SecuritySettings)})
ENV_TABLE.update({(RankingConfig, f.name): f"RECSYS_{f.name.upper()}" for f in fields(CandidateChannelSettings)})


def load(cls: type, overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None):
    """Defaults <- environment <- overrides (None values in overrides are ignored)."""
    env = os.environ if env is None else env
    config = cls()
    values: dict[str, Any] = {}
    for f in fields(cls):
        var = ENV_TABLE.get((cls, f.name))
        if var and var in env:
            values[f.name] = _parse(f.name, var, env[var], type(getattr(config, f.name)))
    names = {f.name for f in fields(cls)}
    for key, value in (overrides or {}).items():
        if key not in names:
            raise ConfigError(f"{key}: unknown setting for {cls.__name__}")
        if value is None:
            continue
        kind = type(getattr(config, key))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind:
            raise ConfigError(f"{key}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
        values[key] = value
    return replace(config, **values).validate()


def env_help(cls: type) -> str:
    rows = [f"  {var:<28} {f.name} (default {getattr(cls(), f.name)!r})"
            for f in fields(cls) if (var := ENV_TABLE.get((cls, f.name)))]
    return "environment variables:\n" + "\n".join(rows)


def _parse(name: str, var: str, raw: str, kind: type) -> Any:
    if kind is bool:  # bool("0") is True: spell the accepted words out
        word = raw.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name}: {var}={raw!r} is not a valid bool (1/0, true/false, yes/no, on/off)")
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{name}: {var}={raw!r} is not a valid {kind.__name__}") from None


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {value!r} is out of range ({allowed})")
