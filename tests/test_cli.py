"""The `recsys` command line (recsys/cli.py): every subcommand's --help, exit codes, and
one real run of `recsys data synth` through the installed console script.

Help runs in-process (`main([...])`, catching SystemExit); the synth run is a subprocess of
`.venv/bin/recsys` so the entry point in pyproject.toml is exercised too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.cli import build_parser, main
from recsys.config import ENV_TABLE

ROOT = Path(__file__).resolve().parents[1]

# argv prefix -> what its help must mention (subcommand names, positionals, flags)
HELP_CASES: dict[tuple[str, ...], list[str]] = {
    (): ["data", "train", "eval", "serve", "recommend", "loadtest", "size", "cluster", "demo", "--verbose",
         "--log-format"],
    ("data",): ["ml-100k", "ml-latest", "csv", "synth"],
    ("data", "ml-100k"): ["src", "out"],
    ("data", "ml-latest"): ["src", "out"],
    ("data", "csv"): ["--interactions", "--items", "--users", "--map", "--event-type", "out"],
    ("data", "synth"): ["out", "--users", "--items", "--days", "--per-user", "--seed"],
    ("train",): ["--data", "--out", "--epochs", "--factors", "--mf-iterations", "--seed", "--content"],
    ("tune",): ["--data", "--out", "--grid", "--max-trials"],
    ("eval",): ["--data", "--k", "--json", "--workdir", "--epochs", "--factors",
                "--mf-iterations", "--seed", "--content"],
    ("serve",): ["candidate", "ranking", "--bundle", "--host", "--port", "--port-file",
                 "--workers", "--candidate-address", "--event-db", "--event-store-url", "--retrieve-timeout-ms",
                 "--metrics-port", "--live-stats-ttl-s"],
    ("recommend",): ["--address", "--user", "--k", "--age", "--gender", "--region", "--timeout"],
    ("loadtest",): ["--address", "--bundle", "--mix", "--concurrency", "--rate", "--sweep", "--duration",
                    "--requests", "--warmup", "--processes", "--json", "--png", "--k"],
    ("size",): ["--items", "--qps", "--bundle", "--measurement", "--target-utilization", "--json"],
    ("cluster",): ["--bundle", "--candidates", "--rankings", "--metrics"],
    ("demo",): ["--workdir", "--users", "--items"],
    ("catalog-update",): ["--bundle", "--data", "--out"],
    ("export-encoder",): ["src", "out", "--tolerance"],
    ("report",): ["--event-db"],
    ("events",): ["export", "compact"],
    ("events", "export"): ["--event-db", "--event-store-url", "--data", "--archive", "out"],
    ("events", "compact"): ["--event-db", "--event-store-url", "--keep-days", "--archive", "--batch"],
}


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """main(argv) -> (exit code, stdout, stderr), whether it returns or exits."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    # argparse wraps help to $COLUMNS; keep each flag and variable on one line
    monkeypatch.setenv("COLUMNS", "200")


def _subcommand_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    yield prefix
    for action in parser._actions:  # argparse keeps subparsers nowhere public
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _subcommand_paths(child, prefix + (name,))


def test_help_cases_cover_every_subcommand():
    assert set(_subcommand_paths(build_parser())) == set(HELP_CASES)


@pytest.mark.parametrize("argv", list(HELP_CASES), ids=lambda a: " ".join(a) or "recsys")
def test_help_exits_zero_and_mentions_key_flags(argv, capsys):
    code, out, err = run_main([*argv, "--help"], capsys)
    assert code == 0, err
    assert out.startswith("usage: recsys" + "".join(f" {a}" for a in argv)), out[:200]
    missing = [word for word in HELP_CASES[argv] if word not in out]
    assert not missing, f"`recsys {' '.join(argv)} --help` does not mention {missing}:\n{out}"


def test_serve_help_lists_every_environment_variable(capsys):
    code, out, _ = run_main(["serve", "--help"], capsys)
    assert code == 0
    listed = {line.split()[0] for line in out.splitlines() if line.strip().startswith("RECSYS_")}
    assert listed == set(ENV_TABLE.values())


def test_installed_console_script_prints_help():
    script = Path(sys.executable).with_name("recsys")
    if not script.exists():
        pytest.skip(f"no console script beside {sys.executable}: package not installed")
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "usage: recsys" in proc.stdout


# ------------------------------------------------------------------------------ bad usage


@pytest.mark.parametrize("argv", [
    ["frobnicate"],
    [],  # a subcommand is required
    ["data"],  # so is a data source
    ["data", "parquet", "x"],
    ["serve", "search"],  # not a service
    ["data", "synth", "out", "--users", "many"],
    ["train"],  # --data and --out are required
    ["recommend"],  # --user is required
], ids=lambda a: " ".join(a) or "no-args")
def test_bad_usage_exits_nonzero(argv, capsys):
    code, _, err = run_main(argv, capsys)
    assert code != 0
    assert "usage: recsys" in err, err


def test_unknown_subcommand_names_it(capsys):
    code, _, err = run_main(["frobnicate"], capsys)
    assert code == 2
    assert "frobnicate" in err and "invalid choice" in err, err


# ------------------------------------------------------------------------------ data synth


def test_data_synth_writes_a_loadable_dataset(tmp_path):
    from training.data import fingerprint, load_dataset

    script = Path(sys.executable).with_name("recsys")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "recsys.cli"]
    env = dict(os.environ)
    env.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))

    def synth(out: Path) -> dict:
        proc = subprocess.run(
            [*cmd, "data", "synth", str(out), "--users", "50", "--items", "60"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env, check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    out = tmp_path / "synth"
    summary = synth(out)
    for name in ("dataset.json", "interactions.csv", "items.csv", "users.csv"):
        assert (out / name).is_file(), name

    ds = load_dataset(out)
    assert ds.meta["n_users"] == 50
    assert ds.meta["n_items"] == 60 == len(ds.items)
    assert ds.interactions["user_id"].nunique() <= 50
    assert set(ds.interactions["item_id"]) <= set(ds.items["item_id"])
    assert ds.meta["created_by"] == "recsys data synth"
    assert summary == {"out": str(out), "n_users": 50, "n_items": 60,
                       "n_interactions": len(ds.interactions)}

    # deterministic for its arguments: a second run writes the same data
    again = tmp_path / "again"
    synth(again)
    assert fingerprint(load_dataset(again)) == fingerprint(ds)
