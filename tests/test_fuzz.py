"""Property-based fuzzing of every RPC over real gRPC (both services in this process).

Arbitrary field values (ids with unicode, control characters and huge lengths, negative
and huge integers, NaN and infinities, huge repeated fields, unknown enum values) and
arbitrary bytes: the server answers OK, INVALID_ARGUMENT or RESOURCE_EXHAUSTED (health:
also NOT_FOUND for an unknown service name), never UNKNOWN or INTERNAL, and keeps serving.
Examples are bounded (FUZZ_EXAMPLES per property) so the file runs in about 20 s.
"""

from __future__ import annotations

import time

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.v1 import candidate_pb2, common_pb2, ranking_pb2
from tests.service_stack import serve_both

FUZZ_EXAMPLES = 40
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=True,  # a fixed seed: the same examples every run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
NOW = int(time.time() * 1000)
# Near-valid values too, so the fuzzer gets past the first check and reaches the model.
TIMES = st.one_of(INT64, st.just(0), st.integers(NOW - 10**11, NOW + 3 * 86_400_000))
# Valid-looking, unicode (protobuf strings cannot hold lone surrogates), control
# characters and whitespace, and huge (built by a map so generating them stays cheap).
TEXT = st.one_of(
    st.from_regex(r"[a-z0-9_-]{1,12}", fullmatch=True),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
    st.text(st.sampled_from("\x00\x01\t\n \x7f\x85\u2028\ufeffa"), max_size=8),
    st.integers(100, 300_000).map(lambda n: "é" * n),
)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)


def ids(max_huge: int) -> st.SearchStrategy[list[str]]:
    return st.one_of(st.lists(TEXT, max_size=6),
                     st.integers(0, max_huge).map(lambda n: [f"i{j % 400}" for j in range(n)]))


FEATURES = st.builds(common_pb2.UserFeatures, age=INT32, gender=TEXT, occupation=TEXT, region=TEXT)
RETRIEVE = st.builds(
    candidate_pb2.RetrieveRequest,
    user_id=TEXT,
    history_item_ids=ids(600),
    features=FEATURES,
    request_time_ms=TIMES,
    num_candidates=st.one_of(INT32, st.integers(0, 300)),
    exclude_item_ids=ids(21_000),
    source_quotas=st.dictionaries(
        st.one_of(TEXT, st.sampled_from(["two_tower", "item_to_item", "popular", "trending", "regional", "fresh"])),
        st.one_of(INT32, st.integers(0, 50)), max_size=6),
)
RECOMMEND = st.builds(
    ranking_pb2.RecommendRequest,
    user_id=TEXT,
    k=st.one_of(INT32, st.integers(0, 101)),
    features=FEATURES,
    exclude_item_ids=ids(11_000),
    request_time_ms=TIMES,
    explain=st.booleans(),
)
EVENT = st.builds(
    ranking_pb2.Event,
    idempotency_key=TEXT,
    user_id=TEXT,
    item_id=TEXT,
    type=st.one_of(st.integers(0, 8), INT32),
    value=FLOATS,
    timestamp_ms=TIMES,
    query=TEXT,
    variant=TEXT,
)
LOG_EVENTS = st.one_of(
    st.builds(ranking_pb2.LogEventsRequest, events=st.lists(EVENT, max_size=5)),
    st.integers(990, 1010).map(lambda n: ranking_pb2.LogEventsRequest(events=[ranking_pb2.Event()] * n)),
)

METHODS = {
    "/recsys.v1.CandidateService/Retrieve": "cand",
    "/recsys.v1.CandidateService/RetrieveBatch": "cand",
    "/recsys.v1.RankingService/Recommend": "rank",
    "/recsys.v1.RankingService/LogEvents": "rank",
    "/grpc.health.v1.Health/Check": "rank",
}


@pytest.fixture(scope="module")
def stack(bundle, tmp_path_factory):
    with serve_both(bundle, tmp_path_factory.mktemp("fuzz")) as s:
        yield s
        # still serving after everything the fuzzer sent
        ok = s.ranking.Recommend(ranking_pb2.RecommendRequest(user_id="after-fuzz", k=5), timeout=10)
        assert len(ok.items) == 5


def _expect(call, allowed=ALLOWED) -> None:
    try:
        call()
    except grpc.RpcError as e:
        assert e.code() in allowed, f"{e.code()}: {e.details()}"
        assert "Traceback" not in (e.details() or "")


@FUZZ
@given(request=RETRIEVE)
def test_fuzz_retrieve(stack, request):
    _expect(lambda: stack.candidate.Retrieve(request, timeout=30))


@FUZZ
@given(requests=st.lists(RETRIEVE, max_size=3) | st.integers(60, 70).map(
    lambda n: [candidate_pb2.RetrieveRequest(num_candidates=5)] * n))
def test_fuzz_retrieve_batch(stack, requests):
    _expect(lambda: stack.candidate.RetrieveBatch(candidate_pb2.RetrieveBatchRequest(requests=requests),
                                                  timeout=30))


@FUZZ
@given(request=RECOMMEND)
def test_fuzz_recommend(stack, request):
    _expect(lambda: stack.ranking.Recommend(request, timeout=30))


@FUZZ
@given(request=LOG_EVENTS)
def test_fuzz_log_events(stack, request):
    _expect(lambda: stack.ranking.LogEvents(request, timeout=30))


@FUZZ
@given(method=st.sampled_from(sorted(METHODS)),
       payload=st.one_of(st.binary(max_size=512), st.integers(4 * 2**20, 5 * 2**20).map(lambda n: b"\x0a" * n)))
def test_fuzz_raw_bytes(stack, method, payload):
    channel = stack.cand_channel if METHODS[method] == "cand" else stack.rank_channel
    allowed = ALLOWED | ({grpc.StatusCode.NOT_FOUND} if "Health" in method else set())
    _expect(lambda: stack.raw(channel, method, payload, timeout=30), allowed)
