"""The generated protocol code in recsys/v1 is what `make protos` produces today."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_generated_code_is_not_stale(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is a dev dependency")
    protos = sorted((ROOT / "protos" / "recsys" / "v1").glob("*.proto"))
    assert protos, "no .proto files found"
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'protos'}",
           f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
           f"--mypy_out={tmp_path}", f"--mypy_grpc_out={tmp_path}", *map(str, protos)]
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "protoc produced nothing"
    stale = [str(rel) for rel in generated
             if not (ROOT / rel).is_file() or (ROOT / rel).read_bytes() != (tmp_path / rel).read_bytes()]
    assert not stale, f"stale generated files (run `make protos`): {stale}"
    committed = {p.relative_to(ROOT) for p in (ROOT / "recsys" / "v1").glob("*_pb2*")}
    extra = sorted(str(p) for p in committed - set(generated))
    assert not extra, f"generated files with no .proto behind them: {extra}"


def test_every_field_is_documented():
    """Each message field in the .proto files has a comment line right above it."""
    missing = []
    for proto in (ROOT / "protos" / "recsys" / "v1").glob("*.proto"):
        lines = proto.read_text().splitlines()
        for n, line in enumerate(lines):
            s = line.strip()
            is_field = s.endswith(";") and "=" in s and not s.startswith(("option", "syntax", "//", "package", "rpc"))
            if is_field and not lines[n - 1].strip().startswith("//"):
                missing.append(f"{proto.name}:{n + 1}: {s}")
    assert not missing, "undocumented fields:\n" + "\n".join(missing)
