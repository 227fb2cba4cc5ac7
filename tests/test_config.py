"""Process configuration (recsys/config.py): pinned defaults, the environment table,
override precedence, and validation that names the setting.

Every test passes `env=` explicitly, so the caller's environment cannot leak in (except
the one test that checks `os.environ` is the default source).
"""

from __future__ import annotations

import dataclasses

import pytest

from recsys.config import (
    ENV_TABLE,
    MAX_CANDIDATES,
    MAX_K,
    CandidateConfig,
    ConfigError,
    RankingConfig,
    env_help,
    load,
)

CONFIGS = [CandidateConfig, RankingConfig]

# ------------------------------------------------------------------------------ defaults

# Changing a default changes how every deployment behaves: do it here on purpose.
SECURITY_DEFAULTS = {  # all off: plaintext, no tokens, no reflection, health on the main port
    "tls_cert": "", "tls_key": "", "tls_client_ca": "", "auth_tokens": "", "reflection": False, "health_port": 0,
}
PINNED_DEFAULTS = {
    CandidateConfig: {
        "bundle": "var/bundles",
        "host": "127.0.0.1",
        "port": 50051,
        "workers": 8,
        "popular_fraction": 0.2,
        "ann_expansion": 64,
        "ann_scan_per_result": 40,
        "source_fractions": "item_to_item=0.1,regional=0.05,trending=0.05,fresh=0.02",
        "grace_s": 5.0,
        "metrics_port": 0,
        "otel": "off",
        "event_db": "",
        "event_store_url": "",
        "live_stats_ttl_s": 5.0,
        "reload_interval_s": 0.0,
        **SECURITY_DEFAULTS,
    },
    RankingConfig: {
        "bundle": "var/bundles",
        "host": "127.0.0.1",
        "port": 50052,
        "workers": 8,
        "candidate_address": "127.0.0.1:50051",
        "retrieve_timeout_ms": 100,
        "retrieve_budget_fraction": 0.6,
        "num_candidates": 300,
        "event_db": "var/events.sqlite3",
        "event_store_url": "",
        "history_limit": 200,
        "live_trending_ttl_s": 5.0,
        "grace_s": 5.0,
        "experiments": "",
        "metrics_port": 0,
        "otel": "off",
        "reload_interval_s": 0.0,
        "breaker_failures": 5,
        "breaker_cooldown_ms": 2000,
        "text_encoder": "",
        **SECURITY_DEFAULTS,
        "candidate_tls_ca": "",
        "candidate_tls_cert": "",
        "candidate_tls_key": "",
        "candidate_token": "",
    },
}


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_defaults_are_pinned(cls):
    got = dataclasses.asdict(cls())
    assert got == PINNED_DEFAULTS[cls]
    # the type is part of the default: it decides how the environment value is parsed
    for name, value in PINNED_DEFAULTS[cls].items():
        assert type(got[name]) is type(value), f"{cls.__name__}.{name}: {type(got[name])}"


def test_ranking_default_points_at_candidate_default_port():
    assert RankingConfig().candidate_address.endswith(f":{CandidateConfig().port}")


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_defaults_are_valid_and_load_without_env_gives_defaults(cls):
    assert cls().validate() == cls()
    assert load(cls, env={}) == cls()
    assert load(cls, overrides={}, env={}) == cls()


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_config_is_frozen(cls):
    with pytest.raises(dataclasses.FrozenInstanceError):
        cls().port = 1  # type: ignore[misc]


# ------------------------------------------------------------------------------ environment

# A valid, non-default value for every variable, and what it parses to.
ENV_VALUES = {
    "RECSYS_BUNDLE": ("/srv/bundles/v7", "/srv/bundles/v7"),
    "RECSYS_HOST": ("0.0.0.0", "0.0.0.0"),
    "RECSYS_CANDIDATE_PORT": ("6001", 6001),
    "RECSYS_RANKING_PORT": ("6002", 6002),
    "RECSYS_WORKERS": ("3", 3),
    "RECSYS_POPULAR_FRACTION": ("0.35", 0.35),
    "RECSYS_ANN_EXPANSION": ("128", 128),
    "RECSYS_ANN_SCAN_PER_RESULT": ("0", 0),
    "RECSYS_SOURCE_FRACTIONS": ("fresh=0.1", "fresh=0.1"),
    "RECSYS_GRACE_S": ("2.5", 2.5),
    "RECSYS_METRICS_PORT": ("9090", 9090),
    "RECSYS_CANDIDATE_ADDRESS": ("cand.internal:7000", "cand.internal:7000"),
    "RECSYS_RETRIEVE_TIMEOUT_MS": ("250", 250),
    "RECSYS_RETRIEVE_BUDGET_FRACTION": ("0.5", 0.5),
    "RECSYS_NUM_CANDIDATES": ("500", 500),
    "RECSYS_EVENT_DB": ("/data/ev.sqlite3", "/data/ev.sqlite3"),
    "RECSYS_EVENT_STORE_URL": ("redis://redis.internal:6379/0", "redis://redis.internal:6379/0"),
    "RECSYS_HISTORY_LIMIT": ("50", 50),
    "RECSYS_EXPERIMENTS": ("/etc/recsys/experiments.json", "/etc/recsys/experiments.json"),
    "RECSYS_OTEL": ("console", "console"),
    "RECSYS_CANDIDATE_EVENT_DB": ("/data/ev.sqlite3", "/data/ev.sqlite3"),
    "RECSYS_CANDIDATE_EVENT_STORE_URL": ("redis://redis.internal:6379/0", "redis://redis.internal:6379/0"),
    "RECSYS_LIVE_STATS_TTL_S": ("2.5", 2.5),
    "RECSYS_RELOAD_INTERVAL_S": ("10", 10.0),
    "RECSYS_BREAKER_FAILURES": ("3", 3),
    "RECSYS_BREAKER_COOLDOWN_MS": ("500", 500),
    "RECSYS_TEXT_ENCODER": ("/srv/encoders/minilm", "/srv/encoders/minilm"),
    "RECSYS_TLS_CERT": ("/etc/recsys/tls.crt", "/etc/recsys/tls.crt"),
    "RECSYS_TLS_KEY": ("/etc/recsys/tls.key", "/etc/recsys/tls.key"),
    "RECSYS_TLS_CLIENT_CA": ("/etc/recsys/ca.crt", "/etc/recsys/ca.crt"),
    "RECSYS_AUTH_TOKENS": ("/etc/recsys/tokens.json", "/etc/recsys/tokens.json"),
    "RECSYS_REFLECTION": ("true", True),
    "RECSYS_HEALTH_PORT": ("8086", 8086),
    "RECSYS_CANDIDATE_TLS_CA": ("/etc/recsys/cand-ca.crt", "/etc/recsys/cand-ca.crt"),
    "RECSYS_CANDIDATE_TLS_CERT": ("/etc/recsys/client.crt", "/etc/recsys/client.crt"),
    "RECSYS_CANDIDATE_TLS_KEY": ("/etc/recsys/client.key", "/etc/recsys/client.key"),
    "RECSYS_CANDIDATE_TOKEN": ("s3cr3t-token", "s3cr3t-token"),
}

ENV_CASES = [(cls, name, var) for (cls, name), var in ENV_TABLE.items()]


def test_every_setting_has_an_environment_variable():
    for cls in CONFIGS:
        missing = [f.name for f in dataclasses.fields(cls) if (cls, f.name) not in ENV_TABLE]
        assert not missing, f"{cls.__name__}: no environment variable for {missing}"
    assert set(ENV_VALUES) == set(ENV_TABLE.values()), "ENV_VALUES must cover ENV_TABLE"


def test_each_service_has_its_own_port_variable():
    assert ENV_TABLE[(CandidateConfig, "port")] != ENV_TABLE[(RankingConfig, "port")]


@pytest.mark.parametrize(("cls", "name", "var"), ENV_CASES,
                         ids=[f"{c.__name__}.{n}" for c, n, _ in ENV_CASES])
def test_environment_overrides_default(cls, name, var):
    raw, parsed = ENV_VALUES[var]
    config = load(cls, env={var: raw})
    assert getattr(config, name) == parsed
    assert getattr(config, name) != getattr(cls(), name), "test value must differ from the default"
    assert type(getattr(config, name)) is type(getattr(cls(), name))
    # nothing else moved
    others = {f.name for f in dataclasses.fields(cls)} - {name}
    assert {n: getattr(config, n) for n in others} == {n: getattr(cls(), n) for n in others}


def test_all_environment_variables_at_once():
    env = {var: raw for var, (raw, _) in ENV_VALUES.items()}
    for cls in CONFIGS:
        config = load(cls, env=env)
        for f in dataclasses.fields(cls):
            assert getattr(config, f.name) == ENV_VALUES[ENV_TABLE[(cls, f.name)]][1], f.name


def test_unrelated_environment_is_ignored():
    env = {"RECSYS_PORT": "1", "PORT": "2", "WORKERS": "0", "recsys_workers": "0"}
    assert load(CandidateConfig, env=env) == CandidateConfig()
    assert load(RankingConfig, env=env) == RankingConfig()


def test_os_environ_is_the_default_source(monkeypatch):
    monkeypatch.setenv("RECSYS_WORKERS", "5")
    assert load(CandidateConfig).workers == 5


def test_float_setting_accepts_integer_text():
    config = load(CandidateConfig, env={"RECSYS_GRACE_S": "7"})
    assert config.grace_s == 7.0 and isinstance(config.grace_s, float)


BAD_ENV = [
    (CandidateConfig, "RECSYS_CANDIDATE_PORT", "80a", "port"),
    (CandidateConfig, "RECSYS_CANDIDATE_PORT", "8080.5", "port"),
    (CandidateConfig, "RECSYS_CANDIDATE_PORT", "", "port"),
    (CandidateConfig, "RECSYS_WORKERS", "eight", "workers"),
    (CandidateConfig, "RECSYS_ANN_EXPANSION", "1e3", "ann_expansion"),
    (CandidateConfig, "RECSYS_POPULAR_FRACTION", "a fifth", "popular_fraction"),
    (CandidateConfig, "RECSYS_GRACE_S", "5s", "grace_s"),
    (RankingConfig, "RECSYS_RANKING_PORT", "x", "port"),
    (RankingConfig, "RECSYS_RETRIEVE_TIMEOUT_MS", "100ms", "retrieve_timeout_ms"),
    (RankingConfig, "RECSYS_NUM_CANDIDATES", "3e2", "num_candidates"),
    (RankingConfig, "RECSYS_HISTORY_LIMIT", "2.0", "history_limit"),
]


@pytest.mark.parametrize(("cls", "var", "raw", "name"), BAD_ENV,
                         ids=[f"{v}={r!r}" for _, v, r, _ in BAD_ENV])
def test_unparsable_environment_value_names_the_variable(cls, var, raw, name):
    with pytest.raises(ConfigError) as info:
        load(cls, env={var: raw})
    message = str(info.value)
    assert var in message, message
    assert message.startswith(f"{name}:"), message


# ------------------------------------------------------------------------------ overrides


def test_overrides_beat_environment():
    env = {"RECSYS_CANDIDATE_PORT": "6001", "RECSYS_WORKERS": "3"}
    config = load(CandidateConfig, overrides={"port": 7001}, env=env)
    assert config.port == 7001
    assert config.workers == 3, "a variable with no override still applies"


def test_overrides_beat_defaults():
    config = load(RankingConfig, overrides={"num_candidates": 1000, "event_db": "/x.db"}, env={})
    assert (config.num_candidates, config.event_db) == (1000, "/x.db")


def test_none_overrides_are_ignored():
    env = {"RECSYS_WORKERS": "3"}
    overrides = {"workers": None, "port": None, "bundle": None, "host": None}
    assert load(CandidateConfig, overrides=overrides, env=env) == load(CandidateConfig, env=env)
    assert load(CandidateConfig, overrides=overrides, env=env).workers == 3
    assert load(RankingConfig, overrides={"candidate_address": None}, env={}) == RankingConfig()


@pytest.mark.parametrize(("cls", "key"), [
    (CandidateConfig, "candidate_address"),  # a RankingConfig field
    (CandidateConfig, "history_limit"),  # a RankingConfig field
    (RankingConfig, "popular_fraction"),  # a CandidateConfig field
    (RankingConfig, "prot"),
])
def test_unknown_override_raises_naming_it(cls, key):
    with pytest.raises(ConfigError) as info:
        load(cls, overrides={key: "x"}, env={})
    assert str(info.value).startswith(f"{key}:"), str(info.value)
    assert cls.__name__ in str(info.value)


def test_override_values_are_validated():
    with pytest.raises(ConfigError, match=r"^workers:"):
        load(CandidateConfig, overrides={"workers": 0}, env={})


# ------------------------------------------------------------------------------ validation

# One row per validated field and side of its range: (class, field, bad value).
OUT_OF_RANGE = [
    (CandidateConfig, "port", -1),
    (CandidateConfig, "port", 65536),
    (CandidateConfig, "workers", 0),
    (CandidateConfig, "workers", 257),
    (CandidateConfig, "popular_fraction", -0.01),
    (CandidateConfig, "popular_fraction", 1.01),
    (CandidateConfig, "popular_fraction", float("nan")),
    (CandidateConfig, "ann_expansion", 0),
    (CandidateConfig, "ann_expansion", 4097),
    (CandidateConfig, "ann_scan_per_result", -1),
    (CandidateConfig, "ann_scan_per_result", 100_001),
    (CandidateConfig, "source_fractions", "fresh=1.5"),
    (CandidateConfig, "source_fractions", "two_tower=0.5"),  # takes the rest, not settable
    (CandidateConfig, "source_fractions", "fresh"),
    (CandidateConfig, "source_fractions", "fresh=0.1,fresh=0.2"),
    (CandidateConfig, "grace_s", -0.5),
    (CandidateConfig, "grace_s", 300.5),
    (CandidateConfig, "grace_s", float("inf")),
    (RankingConfig, "port", -1),
    (RankingConfig, "port", 65536),
    (RankingConfig, "workers", 0),
    (RankingConfig, "workers", 257),
    (RankingConfig, "candidate_address", "localhost"),
    (RankingConfig, "candidate_address", ""),
    (RankingConfig, "retrieve_timeout_ms", 0),
    (RankingConfig, "retrieve_timeout_ms", 60_001),
    (RankingConfig, "retrieve_budget_fraction", 0.0),
    (RankingConfig, "retrieve_budget_fraction", 1.0),
    (RankingConfig, "num_candidates", MAX_K - 1),
    (RankingConfig, "num_candidates", MAX_CANDIDATES + 1),
    (RankingConfig, "event_store_url", "127.0.0.1:6379"),  # a URL, not an address
    (RankingConfig, "event_store_url", "http://redis:6379"),
    (RankingConfig, "history_limit", 0),
    (RankingConfig, "history_limit", 10_001),
    (RankingConfig, "grace_s", -1.0),
    (RankingConfig, "grace_s", 301.0),
    (CandidateConfig, "metrics_port", -1),
    (CandidateConfig, "metrics_port", 65536),
    (RankingConfig, "metrics_port", 70000),
    (CandidateConfig, "otel", "on"),
    (RankingConfig, "otel", "OTLP"),  # exact names only
    (CandidateConfig, "event_store_url", "127.0.0.1:6379"),
    (CandidateConfig, "live_stats_ttl_s", 0.0),
    (CandidateConfig, "live_stats_ttl_s", 3601.0),
    (RankingConfig, "live_trending_ttl_s", 0.05),
    (RankingConfig, "live_trending_ttl_s", 3600.5),
    (CandidateConfig, "reload_interval_s", 0.05),
    (RankingConfig, "reload_interval_s", 3601.0),
    (RankingConfig, "breaker_failures", -1),
    (RankingConfig, "breaker_failures", 1001),
    (RankingConfig, "breaker_cooldown_ms", 9),
    (RankingConfig, "breaker_cooldown_ms", 600_001),
    (CandidateConfig, "health_port", 65536),
    (RankingConfig, "health_port", -1),
    (RankingConfig, "candidate_token", "has space"),
]

# The values at the very edge of each range are accepted.
IN_RANGE_EDGES = [
    (CandidateConfig, "port", 0),  # 0 = pick a free port
    (CandidateConfig, "port", 1),
    (CandidateConfig, "port", 65535),
    (CandidateConfig, "workers", 1),
    (CandidateConfig, "workers", 256),
    (CandidateConfig, "popular_fraction", 0.0),
    (CandidateConfig, "popular_fraction", 1.0),
    (CandidateConfig, "ann_expansion", 1),
    (CandidateConfig, "ann_expansion", 4096),
    (CandidateConfig, "ann_scan_per_result", 0),
    (CandidateConfig, "ann_scan_per_result", 100_000),
    (CandidateConfig, "source_fractions", ""),  # only two_tower and popular
    (CandidateConfig, "source_fractions", "fresh=1.0,regional=0"),
    (CandidateConfig, "grace_s", 0.0),
    (CandidateConfig, "grace_s", 300.0),
    (RankingConfig, "port", 0),
    (RankingConfig, "port", 65535),
    (RankingConfig, "workers", 256),
    (RankingConfig, "candidate_address", "[::1]:50051"),
    (RankingConfig, "retrieve_timeout_ms", 1),
    (RankingConfig, "retrieve_timeout_ms", 60_000),
    (RankingConfig, "retrieve_budget_fraction", 0.05),
    (RankingConfig, "retrieve_budget_fraction", 0.95),
    (RankingConfig, "num_candidates", MAX_K),
    (RankingConfig, "num_candidates", MAX_CANDIDATES),
    (RankingConfig, "event_store_url", ""),  # SQLite
    (RankingConfig, "event_store_url", "redis://127.0.0.1:6379/0"),
    (RankingConfig, "event_store_url", "rediss://:secret@redis.internal:6380/2"),
    (RankingConfig, "history_limit", 1),
    (RankingConfig, "history_limit", 10_000),
    (RankingConfig, "grace_s", 300.0),
    (CandidateConfig, "metrics_port", 0),
    (RankingConfig, "metrics_port", 65535),
    (CandidateConfig, "otel", "otlp"),
    (RankingConfig, "otel", "console"),
    (CandidateConfig, "event_store_url", "redis://127.0.0.1:6379/0"),
    (CandidateConfig, "live_stats_ttl_s", 0.1),
    (RankingConfig, "live_trending_ttl_s", 3600.0),
    (CandidateConfig, "reload_interval_s", 0.0),  # off
    (RankingConfig, "reload_interval_s", 0.1),
    (RankingConfig, "breaker_failures", 0),  # no breaker
    (RankingConfig, "breaker_cooldown_ms", 600_000),
]

UNVALIDATED = {"bundle", "host", "event_db", "experiments", "text_encoder",
               # files, read (and checked to go together) by recsys.security at server start
               "tls_cert", "tls_key", "tls_client_ca", "auth_tokens", "candidate_tls_ca", "candidate_tls_cert",
               "candidate_tls_key", "reflection"}  # free text: checked where they are used


def test_out_of_range_table_covers_every_validated_field():
    for cls in CONFIGS:
        validated = {f.name for f in dataclasses.fields(cls)} - UNVALIDATED
        covered = {name for c, name, _ in OUT_OF_RANGE if c is cls}
        assert covered == validated, f"{cls.__name__}: no out-of-range case for {validated - covered}"


@pytest.mark.parametrize(("cls", "name", "value"), OUT_OF_RANGE,
                         ids=[f"{c.__name__}.{n}={v!r}" for c, n, v in OUT_OF_RANGE])
def test_out_of_range_value_raises_naming_the_field(cls, name, value):
    with pytest.raises(ConfigError) as info:
        load(cls, overrides={name: value}, env={})
    assert str(info.value).startswith(f"{name}:"), str(info.value)
    # validate() alone says the same, so a config built in code is checked too
    with pytest.raises(ConfigError, match=f"^{name}:"):
        dataclasses.replace(cls(), **{name: value}).validate()


@pytest.mark.parametrize(("cls", "name", "value"), IN_RANGE_EDGES,
                         ids=[f"{c.__name__}.{n}={v!r}" for c, n, v in IN_RANGE_EDGES])
def test_range_edges_are_accepted(cls, name, value):
    assert getattr(load(cls, overrides={name: value}, env={}), name) == value


@pytest.mark.parametrize(("cls", "var", "raw", "name"), [
    (CandidateConfig, "RECSYS_CANDIDATE_PORT", "70000", "port"),
    (CandidateConfig, "RECSYS_POPULAR_FRACTION", "nan", "popular_fraction"),
    (RankingConfig, "RECSYS_NUM_CANDIDATES", "99", "num_candidates"),
    (RankingConfig, "RECSYS_CANDIDATE_ADDRESS", "no-port", "candidate_address"),
])
def test_out_of_range_environment_value_raises(cls, var, raw, name):
    with pytest.raises(ConfigError, match=f"^{name}:"):
        load(cls, env={var: raw})


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# ------------------------------------------------------------------------------ env_help


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_env_help_lists_every_variable(cls):
    text = env_help(cls)
    assert text.startswith("environment variables:")
    lines = text.splitlines()[1:]
    assert len(lines) == len(dataclasses.fields(cls))
    for f in dataclasses.fields(cls):
        var = ENV_TABLE[(cls, f.name)]
        line = next((ln for ln in lines if ln.split()[0] == var), None)
        assert line is not None, f"{var} missing from env_help({cls.__name__})"
        assert f.name in line and repr(getattr(cls(), f.name)) in line, line
