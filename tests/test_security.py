"""Optional TLS, mutual TLS, token auth, reflection off by default, and the plaintext health
port (recsys.security), over real gRPC to servers in this process. A throwaway CA and its
certificates are generated per session with `cryptography`."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import socket
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from recsys.config import CandidateConfig, ConfigError, RankingConfig, load
from recsys.v1 import candidate_pb2, candidate_pb2_grpc, ranking_pb2, ranking_pb2_grpc

x509 = pytest.importorskip("cryptography.x509", reason="the cryptography package (dev extra) makes the test certs")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

RETRIEVE = candidate_pb2.RetrieveRequest(num_candidates=5)
RECOMMEND_METHOD = "/recsys.v1.RankingService/Recommend"


def _cert(name: str, key, issuer_name, issuer_key, *, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
         .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> dict[str, str]:
    """ca.pem; server.pem/server.key; client.pem/client.key (signed by the CA); rogue.* (another CA)."""
    d = tmp_path_factory.mktemp("pki")
    out: dict[str, str] = {}

    def write(name: str, cert, key=None) -> None:
        (d / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[name] = str(d / f"{name}.pem")
        if key is not None:
            (d / f"{name}.key").write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
            out[f"{name}_key"] = str(d / f"{name}.key")

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, None, ca_key, ca=True)
    write("ca", ca)
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        write(name, _cert(name, key, ca.subject, ca_key, ca=False), key)
    rogue_ca_key = ec.generate_private_key(ec.SECP256R1())
    rogue_ca = _cert("rogue-ca", rogue_ca_key, None, rogue_ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    write("rogue", _cert("rogue", key, rogue_ca.subject, rogue_ca_key, ca=False), key)
    return out


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def candidate_mtls(bundle, pki, tmp_path_factory):
    """The candidate tier under mutual TLS, token auth, and health alone on a plaintext port."""
    from candidate_svc.server import create_server

    tokens = tmp_path_factory.mktemp("tokens") / "tokens.json"
    tokens.write_text(json.dumps({"full": ["*"], "ranking": ["/recsys.v1.CandidateService/Retrieve"],
                                  "other": ["/recsys.v1.RankingService/*"]}))
    for attempt in range(3):  # the free port may be taken by another socket before the server binds it
        config = CandidateConfig(port=0, workers=2, tls_cert=pki["server"], tls_key=pki["server_key"],
                                 tls_client_ca=pki["ca"], auth_tokens=str(tokens), health_port=_free_port())
        try:
            served, _ = create_server(config, bundle)
            break
        except OSError as e:
            if attempt == 2 or "could not bind health port" not in str(e):
                raise
    served.start()
    served.set_serving(True)
    try:
        yield served
    finally:
        served.stop(0)


def _mtls_channel(port: int, pki, cert: str | None = "client") -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read(pki["ca"]),
        private_key=_read(pki[f"{cert}_key"]) if cert else None,
        certificate_chain=_read(pki[cert]) if cert else None,
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


def _bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def test_mtls_client_with_a_cert_and_a_token_is_served(candidate_mtls, pki, caplog):
    with caplog.at_level(logging.DEBUG, logger="recsys.access"):
        with _mtls_channel(candidate_mtls.port, pki) as ch:
            resp = candidate_pb2_grpc.CandidateServiceStub(ch).Retrieve(RETRIEVE, timeout=10,
                                                                        metadata=_bearer("ranking"))
    assert len(resp.candidates) == 5
    lines = [r for r in caplog.records if r.name == "recsys.access" and "Retrieve" in r.getMessage()]
    assert lines and lines[-1].getMessage().endswith(" from client") and lines[-1].caller == "client"


def test_the_verified_client_identity_reaches_the_handler(pki):
    """Under mTLS the handler (and the access log) know who calls: the client certificate's
    common name as gRPC verified it, bound to recsys.security.CALLER for the call only."""
    from recsys.grpc_server import build_server
    from recsys.security import CALLER, ServerSecurity

    def whoami(request, context):
        return CALLER.get().encode()

    handler = grpc.method_handlers_generic_handler("test.v1.Who", {"Am": grpc.unary_unary_rpc_method_handler(whoami)})
    security = ServerSecurity(tls_cert=pki["server"], tls_key=pki["server_key"], tls_client_ca=pki["ca"])
    served = build_server("127.0.0.1", 0, 2, [lambda s: s.add_generic_rpc_handlers((handler,))],
                          ["test.v1.Who"], security=security)
    served.start()
    try:
        with _mtls_channel(served.port, pki) as ch:
            assert ch.unary_unary("/test.v1.Who/Am")(b"", timeout=10) == b"client"
        assert CALLER.get() == "", "bound for the call only"
    finally:
        served.stop(0)


@pytest.mark.parametrize("cert", [None, "rogue"], ids=["no-client-cert", "cert-from-another-ca"])
def test_mtls_refuses_a_client_without_a_good_cert(candidate_mtls, pki, cert):
    with _mtls_channel(candidate_mtls.port, pki, cert) as ch:
        with pytest.raises(grpc.RpcError) as err:
            candidate_pb2_grpc.CandidateServiceStub(ch).Retrieve(RETRIEVE, timeout=5, metadata=_bearer("full"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value  # the handshake fails


def test_plaintext_client_is_refused_on_the_tls_port(candidate_mtls):
    with grpc.insecure_channel(f"127.0.0.1:{candidate_mtls.port}") as ch:
        with pytest.raises(grpc.RpcError) as err:
            candidate_pb2_grpc.CandidateServiceStub(ch).Retrieve(RETRIEVE, timeout=5, metadata=_bearer("full"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_health_port_answers_plaintext_and_serves_only_health(candidate_mtls):
    with grpc.insecure_channel(f"127.0.0.1:{candidate_mtls.health_port}") as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            candidate_pb2_grpc.CandidateServiceStub(ch).Retrieve(RETRIEVE, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED, "the plaintext port must serve health alone"
    candidate_mtls.set_serving(False)  # the same statuses as the main port
    try:
        with grpc.insecure_channel(f"127.0.0.1:{candidate_mtls.health_port}") as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        candidate_mtls.set_serving(True)


@pytest.mark.parametrize("metadata, code", [
    ((), grpc.StatusCode.UNAUTHENTICATED),
    (_bearer("wrong"), grpc.StatusCode.UNAUTHENTICATED),
    ((("authorization", "Basic ranking"),), grpc.StatusCode.UNAUTHENTICATED),
    (_bearer("other"), grpc.StatusCode.PERMISSION_DENIED),
], ids=["no-token", "unknown-token", "not-bearer", "token-without-the-method"])
def test_tokens_give_the_right_codes(candidate_mtls, pki, metadata, code):
    with _mtls_channel(candidate_mtls.port, pki) as ch:
        with pytest.raises(grpc.RpcError) as err:
            candidate_pb2_grpc.CandidateServiceStub(ch).Retrieve(RETRIEVE, timeout=5, metadata=metadata)
    assert err.value.code() == code, err.value.details()


def test_token_scoped_to_one_method_cannot_call_another(candidate_mtls, pki):
    batch = candidate_pb2.RetrieveBatchRequest(requests=[RETRIEVE])
    with _mtls_channel(candidate_mtls.port, pki) as ch:
        stub = candidate_pb2_grpc.CandidateServiceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.RetrieveBatch(batch, timeout=5, metadata=_bearer("ranking"))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert len(stub.RetrieveBatch(batch, timeout=10, metadata=_bearer("full")).responses) == 1


def test_health_on_the_main_port_needs_no_token(candidate_mtls, pki):
    with _mtls_channel(candidate_mtls.port, pki) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def _reflection_names(channel: grpc.Channel, metadata=()) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    (answer,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                          timeout=5, metadata=metadata)
    return {s.name for s in answer.list_services_response.service}


def test_reflection_is_off_by_default_and_on_when_asked(bundle):
    from candidate_svc.server import create_server

    for reflection in (False, True):
        served, _ = create_server(CandidateConfig(port=0, workers=1, reflection=reflection), bundle)
        served.start()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{served.port}") as ch:
                if reflection:
                    assert "recsys.v1.CandidateService" in _reflection_names(ch)
                else:
                    with pytest.raises(grpc.RpcError) as err:
                        _reflection_names(ch)
                    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        finally:
            served.stop(0)


def test_ranking_talks_mtls_with_a_token_to_the_candidate_tier(candidate_mtls, bundle, pki, tmp_path):
    """Ranking under plain TLS (no client certs), its candidate channel under mTLS + token:
    answers are not degraded, so the internal hop works."""
    from ranking_svc.server import create_server

    config = RankingConfig(port=0, workers=2, candidate_address=f"127.0.0.1:{candidate_mtls.port}",
                           event_db=str(tmp_path / "ev.sqlite3"), retrieve_timeout_ms=5000,
                           tls_cert=pki["server"], tls_key=pki["server_key"],
                           candidate_tls_ca=pki["ca"], candidate_tls_cert=pki["client"],
                           candidate_tls_key=pki["client_key"], candidate_token="ranking")
    served, _ = create_server(config, bundle)
    served.start()
    served.set_serving(True)
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=_read(pki["ca"]))
        with grpc.secure_channel(f"127.0.0.1:{served.port}", creds) as ch:
            resp = ranking_pb2_grpc.RankingServiceStub(ch).Recommend(
                ranking_pb2.RecommendRequest(user_id="tls-user", k=5), timeout=10)
        assert len(resp.items) == 5 and not resp.degraded, resp.degraded_reason
    finally:
        served.stop(0)
    # without the token the same hop is refused, and the answer degrades (never an error)
    served, _ = create_server(replace(config, candidate_token="", tls_cert="", tls_key=""), bundle)
    served.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{served.port}") as ch:
            resp = ranking_pb2_grpc.RankingServiceStub(ch).Recommend(
                ranking_pb2.RecommendRequest(user_id="tls-user", k=5), timeout=10)
        assert resp.degraded and "UNAUTHENTICATED" in resp.degraded_reason, resp.degraded_reason
    finally:
        served.stop(0)


def test_half_configured_tls_is_refused_at_start(bundle, pki):
    from candidate_svc.server import create_server

    with pytest.raises(ValueError, match="tls_cert, tls_key"):
        create_server(CandidateConfig(port=0, workers=1, tls_cert=pki["server"]), bundle)


def test_bad_token_file_is_refused_at_start(bundle, tmp_path):
    from candidate_svc.server import create_server

    bad = tmp_path / "tokens.json"
    bad.write_text(json.dumps({"t": "not-a-list"}))
    with pytest.raises(ValueError, match="auth_tokens"):
        create_server(CandidateConfig(port=0, workers=1, auth_tokens=str(bad)), bundle)


@pytest.mark.parametrize("raw, value", [("1", True), ("on", True), ("false", False), ("0", False)])
def test_reflection_environment_words(raw, value):
    assert load(CandidateConfig, env={"RECSYS_REFLECTION": raw}).reflection is value


def test_reflection_environment_rejects_other_words():
    with pytest.raises(ConfigError, match="^reflection:"):
        load(CandidateConfig, env={"RECSYS_REFLECTION": "maybe"})
