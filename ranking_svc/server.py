"""RankingService over gRPC: the front door.

Thin servicers: decode and validate (INVALID_ARGUMENT naming the field), call the pure
Ranker / EventStore, encode. `GrpcCandidateSource` is the one internal hop, to the
candidate tier, with a deadline; the tier being down, late or shedding load becomes a
degraded answer, never an error for the caller, while a refusal of the request itself
(INVALID_ARGUMENT, INTERNAL, ...) is surfaced, not hidden behind the fallback
(`CandidateRejected`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from contextvars import ContextVar
from dataclasses import replace
from typing import Sequence

import grpc

from ranking_svc.breaker import BreakerCandidateSource, CircuitBreaker
from ranking_svc.events import EventStore, EventStoreUnavailable, StoredEvent, open_event_store
from ranking_svc.experiments import Experiment, load_experiment, single_variant
from ranking_svc.ranker import (
    SEARCH_PROFILE,
    CandidateList,
    CandidateSource,
    CandidateUnavailable,
    DeadlinePassed,
    Demographics,
    Explanation,
    Ranker,
)
from ranking_svc.wire import RetrieveStub, decode_retrieve, item_heads
from recsys import tracing
from recsys import validation as v
from recsys.bundle import Bundle, check_user_tower, load_bundle
from recsys.compute import COMPUTE
from recsys.config import MAX_K, RankingConfig
from recsys.grpc_server import MAX_MESSAGE_BYTES, Served, build_server, client_channel_options
from recsys.logs import outgoing_metadata
from recsys.metrics import ServerInterceptor
from recsys.reload import BundleWatcher, start_watcher
from recsys.security import ServerSecurity, channel_credentials
from recsys.text_encoder import load_text_encoder
from recsys.v1 import candidate_pb2, common_pb2, ranking_pb2, ranking_pb2_grpc

log = logging.getLogger(__name__)

MAX_EXCLUDE = 10_000
MAX_BATCH = 1000
MAX_QUERY_CHARS = 512
MAX_FUTURE_MS = 86_400_000  # client clocks may run ahead by at most a day
VARIANT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

EVENT_NAMES = {
    ranking_pb2.EVENT_TYPE_IMPRESSION: "impression",
    ranking_pb2.EVENT_TYPE_CLICK: "click",
    ranking_pb2.EVENT_TYPE_LIKE: "like",
    ranking_pb2.EVENT_TYPE_DISLIKE: "dislike",
    ranking_pb2.EVENT_TYPE_WATCH: "watch",
    ranking_pb2.EVENT_TYPE_RATING: "rating",
    ranking_pb2.EVENT_TYPE_SEARCH: "search",
}


# How a failed Retrieve shows in Recommend (docs/RELIABILITY.md, "Status codes"). The tier
# down, late, shedding load or refusing our credentials: degrade to the local fallback
# (CandidateUnavailable; the breaker counts it). Anything else means the tier answered and
# refused *this request*: a fallback would hide a bug, so it is surfaced (CandidateRejected).
DEGRADE_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNAUTHENTICATED,  # a refused internal hop: a deployment fault, alerting on degraded_reason
    grpc.StatusCode.PERMISSION_DENIED,
})
# RetrieveRequest fields copied verbatim from the caller's RecommendRequest: the candidate
# tier refusing one of these is the caller's input (the tiers' validators disagreeing, e.g.
# mid-upgrade); refusing any other field (history, exclusions, num_candidates) is ours.
CALLER_FIELDS = frozenset({"user_id", "features", "request_time_ms"})


class CandidateRejected(Exception):
    """The candidate tier answered Retrieve with an error that no fallback should hide.
    `code` / `message` are what Recommend answers: INVALID_ARGUMENT with the tier's own
    field message when a field the caller sent was refused, INTERNAL otherwise."""

    def __init__(self, downstream: grpc.StatusCode, details: str) -> None:
        root = re.match(r"[a-z_]+", details or "")
        if downstream == grpc.StatusCode.INVALID_ARGUMENT and root and root.group(0) in CALLER_FIELDS:
            self.code, self.message = grpc.StatusCode.INVALID_ARGUMENT, f"{details} (refused by the candidate tier)"
        else:
            self.code = grpc.StatusCode.INTERNAL
            self.message = f"candidate tier refused the request: {downstream.name}: {details}"
        super().__init__(self.message)
        self.downstream = downstream


class GrpcCandidateSource:
    """CandidateSource over a real gRPC channel to candidate_svc."""

    def __init__(self, address: str, credentials: grpc.ChannelCredentials | None = None, token: str = "") -> None:
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            *client_channel_options(),  # round_robin over candidate replicas, health-checked
        ]
        # TLS / mTLS to the candidate tier when configured (recsys.security)
        self.channel = (grpc.insecure_channel(address, options=options) if credentials is None
                        else grpc.secure_channel(address, credentials, options=options))
        self.auth = (("authorization", f"Bearer {token}"),) if token else ()
        self.stub = RetrieveStub(self.channel)

    def fetch(
        self,
        user_id: str,
        history_ids: Sequence[str],
        demographics: Demographics,
        time_ms: int,
        num: int,
        exclude_ids: Sequence[str],
        timeout_s: float,
    ) -> CandidateList:
        request = candidate_pb2.RetrieveRequest(
            user_id=user_id,
            history_item_ids=history_ids,
            features=common_pb2.UserFeatures(
                age=demographics.age,
                gender=demographics.gender,
                occupation=demographics.occupation,
                region=demographics.region,
            ),
            request_time_ms=time_ms,
            num_candidates=num,
            exclude_item_ids=exclude_ids,
        )
        search = SEARCH_PROFILE.get()  # the Ranker's user's search profile, for the user tower
        if search is not None:
            request.search_profile.extend(search.tolist())
        try:
            # another request computes while this one waits (recsys/compute.py)
            with COMPUTE.released(), tracing.client_call("/recsys.v1.CandidateService/Retrieve") as traceparent:
                response = self.stub.Retrieve(request, timeout=timeout_s,
                                              metadata=(*outgoing_metadata(), *traceparent, *self.auth))
        except grpc.RpcError as e:
            if e.code() in DEGRADE_CODES:
                raise CandidateUnavailable(f"{e.code().name}: {e.details()}") from None
            raise CandidateRejected(e.code(), e.details() or "") from None
        return decode_retrieve(response)

    def close(self) -> None:
        self.channel.close()


# Per-phase budgets of one Recommend call: the servicer sets, per request, the moment by
# which Retrieve must be done (a share of the caller's remaining time), and the source
# wrapper caps the Retrieve deadline to it. A contextvar, because the Ranker's interface
# (one timeout per fetch, from its own retrieve_timeout_s) is shared by every caller.
RETRIEVE_UNTIL: ContextVar[float | None] = ContextVar("retrieve_until", default=None)


class BudgetedCandidateSource:
    """A CandidateSource whose calls end by the current request's retrieve budget
    (RETRIEVE_UNTIL), so the rest of the caller's time stays for ranking and the rules.
    Outermost: a budget already spent degrades without calling (or counting against) the
    breaker behind it."""

    def __init__(self, inner: CandidateSource) -> None:
        self.inner = inner

    def fetch(self, user_id, history_ids, demographics, time_ms, num, exclude_ids, timeout_s: float) -> CandidateList:
        until = RETRIEVE_UNTIL.get()
        if until is not None:
            timeout_s = min(timeout_s, until - time.monotonic())
            if timeout_s <= 0:
                raise CandidateUnavailable("DEADLINE_EXCEEDED: the retrieve budget was spent before the call")
        return self.inner.fetch(user_id, history_ids, demographics, time_ms, num, exclude_ids, timeout_s)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


def decode_event(e: ranking_pb2.Event, i: int, now_ms: int) -> StoredEvent:
    """Validate one event; field paths name the batch index ("events[3].item_id")."""
    f = f"events[{i}]"
    v.check_id(e.idempotency_key, f"{f}.idempotency_key")
    v.check_id(e.user_id, f"{f}.user_id")
    name = EVENT_NAMES.get(e.type)
    if name is None:
        raise v.InvalidArgument(f"{f}.type", f"must be one of {sorted(EVENT_NAMES.values())}, got {e.type}")
    if name == "search":
        if e.item_id:
            raise v.InvalidArgument(f"{f}.item_id", "must be empty for EVENT_TYPE_SEARCH")
        if not e.query.strip():  # the dataset's searches.csv refuses blank queries too
            raise v.InvalidArgument(f"{f}.query", "is required (non-blank) for EVENT_TYPE_SEARCH")
        v.check_text(e.query, f"{f}.query", MAX_QUERY_CHARS)
    else:
        v.check_id(e.item_id, f"{f}.item_id")
        if e.query:
            raise v.InvalidArgument(f"{f}.query", "must be empty unless type is EVENT_TYPE_SEARCH")
    value = 1.0
    if name == "rating":
        v.check_range(e.value, f"{f}.value", 1, 5)
        value = e.value
    elif name == "watch":
        v.check_range(e.value, f"{f}.value", 0, 86_400)
        value = e.value
    v.check_time_ms(e.timestamp_ms, f"{f}.timestamp_ms", allow_zero=False)
    if e.timestamp_ms > now_ms + MAX_FUTURE_MS:
        raise v.InvalidArgument(f"{f}.timestamp_ms", "is more than one day ahead of the server clock")
    if e.variant and not VARIANT_NAME.match(e.variant):
        raise v.InvalidArgument(f"{f}.variant", "must be 1..64 characters of [A-Za-z0-9_.-]")
    return StoredEvent(e.idempotency_key, e.user_id, e.item_id, name, float(value), e.timestamp_ms, e.query,
                       e.variant)


def encode_explanation(x: Explanation, out: ranking_pb2.Explanation) -> None:
    out.sources.extend(x.sources)
    for c in x.features:
        out.top_features.add(name=c.name, value=c.value, weight=c.weight, contribution=c.contribution)
    out.rules.extend(x.rules)


class RankingServicer(ranking_pb2_grpc.RankingServiceServicer):
    """`rankers` maps a variant's bundle path ("" = the served bundle) to its Ranker."""

    def __init__(self, ranker: Ranker, events: EventStore, experiment: Experiment | None = None,
                 rankers: dict[str, Ranker] | None = None, retrieve_budget_fraction: float = 0.6) -> None:
        self.retrieve_budget_fraction = retrieve_budget_fraction  # of the caller's remaining time
        self.ranker = ranker
        self.events = events
        self.experiment = experiment or single_variant(ranker.rules)
        self.rankers = {"": ranker, **(rankers or {})}  # replaced whole by a hot reload (recsys.reload)
        self.candidate_rejected: Counter[str] = Counter()  # Retrieve refusals surfaced, by downstream code
        self.deadline_passed: Counter[str] = Counter()  # Recommend calls stopped between stages, by stage
        self._counts_lock = threading.Lock()
        self.watcher: BundleWatcher | None = None

    def Recommend(self, request, context):
        try:
            v.check_id(request.user_id, "user_id")
            v.check_range(request.k, "k", 1, MAX_K)
            v.check_user_features(request.features, "features")
            v.check_ids(request.exclude_item_ids, "exclude_item_ids", MAX_EXCLUDE)
            v.check_time_ms(request.request_time_ms, "request_time_ms")
        except v.InvalidArgument as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        remaining = context.time_remaining()
        now = time.monotonic()
        deadline = now + remaining if remaining is not None else None
        f = request.features
        variant = self.experiment.assign(request.user_id)
        budget = RETRIEVE_UNTIL.set(None if remaining is None else now + self.retrieve_budget_fraction * remaining)
        try:
            with COMPUTE.hold():  # one request computes at a time; let go around Retrieve
                if not context.is_active():  # deadline passed or cancelled while queued for the lock
                    raise DeadlinePassed("ranking (queued)")
                result = self.rankers[variant.bundle].recommend(
                    request.user_id,
                    request.k,
                    Demographics(f.age, f.gender, f.occupation, f.region),
                    request.exclude_item_ids,
                    request.request_time_ms,
                    deadline,
                    explain=request.explain,
                    rules=variant.rules,
                )
        except EventStoreUnavailable as e:  # without the user's events we cannot filter what they saw
            context.abort(grpc.StatusCode.UNAVAILABLE, f"event store: {e}")
        except DeadlinePassed as e:  # the caller has stopped waiting: stop working too
            with self._counts_lock:
                self.deadline_passed[e.stage] += 1
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"Recommend: {e}")
        except CandidateRejected as e:  # not an outage: degrading would hide it
            log.error("Recommend for user %s: %s", request.user_id, e.message)
            with self._counts_lock:
                self.candidate_rejected[e.downstream.name] += 1
            context.abort(e.code, e.message)
        finally:
            RETRIEVE_UNTIL.reset(budget)
        if result.degraded:
            log.warning("degraded answer for user %s: %s", request.user_id, result.degraded_reason)
        response = ranking_pb2.RecommendResponse(
            bundle_version=result.bundle_version,
            degraded=result.degraded,
            degraded_reason=result.degraded_reason,
            cold_start=result.cold_start,
            variant=variant.name,
        )
        for item in result.items:
            out = response.items.add(item_id=item.item_id, score=item.score, sources=item.sources, title=item.title)
            if item.explanation is not None:
                encode_explanation(item.explanation, out.explanation)
        return response

    def LogEvents(self, request, context):
        try:
            if not request.events:
                raise v.InvalidArgument("events", "must hold at least one event")
            if len(request.events) > MAX_BATCH:
                raise v.InvalidArgument("events", f"has {len(request.events)} events, at most {MAX_BATCH} allowed")
            now_ms = int(time.time() * 1000)
            decoded = [decode_event(e, i, now_ms) for i, e in enumerate(request.events)]
        except v.InvalidArgument as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        decoded = [e if e.variant else replace(e, variant=self.experiment.assign(e.user_id).name)
                   for e in decoded]
        try:
            stored, duplicates = self.events.append(decoded)
        except Exception as e:  # the store failed: nothing was acknowledged
            log.exception("event store write failed")
            context.abort(grpc.StatusCode.UNAVAILABLE, f"event store: {type(e).__name__}: {e}")
        return ranking_pb2.LogEventsResponse(stored=stored, duplicates=duplicates)


def create_server(config: RankingConfig, bundle: Bundle | None = None,
                  tracer: "tracing.Tracer | None" = None) -> tuple[Served, Ranker]:
    """Load the bundle and event store, warm the kernels, build the server (not started).
    `tracer`: from recsys.tracing.setup_tracing (default: as config.otel says)."""
    bundle = bundle or load_bundle(config.bundle)
    events = open_event_store(config.event_db, config.event_store_url)
    text_encoder = load_text_encoder(config.text_encoder)  # one per process, its query cache shared by reloads
    source: CandidateSource = GrpcCandidateSource(
        config.candidate_address,
        channel_credentials(config.candidate_tls_ca, config.candidate_tls_cert, config.candidate_tls_key),
        config.candidate_token,
    )
    if config.breaker_failures:
        source = BreakerCandidateSource(source, CircuitBreaker(config.breaker_failures,
                                                               config.breaker_cooldown_ms / 1000.0))
    source = BudgetedCandidateSource(source)
    experiment = load_experiment(config.experiments)

    def make_ranker(b: Bundle) -> Ranker:
        check_user_tower(b)  # the candidate tier runs it; this tier must not take a version that one refuses
        r = Ranker(
            b,
            source,
            events,
            num_candidates=config.num_candidates,
            retrieve_timeout_s=config.retrieve_timeout_ms / 1000.0,
            history_limit=config.history_limit,
            rules=experiment.variants[0].rules,
            live_trending_ttl_s=config.live_trending_ttl_s,
            text_encoder=text_encoder,
        )
        r.warmup()
        item_heads(b.item_index)  # the Retrieve answer's id lookup table, before the first request
        return r

    ranker = make_ranker(bundle)
    rankers = {p: make_ranker(load_bundle(p)) for p in {v.bundle for v in experiment.variants} if p}
    servicer = RankingServicer(ranker, events, experiment, rankers, config.retrieve_budget_fraction)

    def swap(r: Ranker) -> None:  # one assignment: Recommend reads self.rankers once per call
        servicer.ranker = r
        servicer.rankers = {**servicer.rankers, "": r}

    # hot reload of the served bundle (variants pinned to their own bundle path stay as they are)
    servicer.watcher = start_watcher(config.bundle, bundle, make_ranker, swap, config.reload_interval_s, "ranking")
    log.info("experiment: %s", ", ".join(f"{v.name}={v.share:g}" for v in experiment.variants))
    served = build_server(
        config.host,
        config.port,
        config.workers,
        [lambda s: ranking_pb2_grpc.add_RankingServiceServicer_to_server(servicer, s)],
        [ranking_pb2.DESCRIPTOR.services_by_name["RankingService"].full_name],
        interceptors=[ServerInterceptor("ranking", bundle.version),
                      *tracing.interceptors(tracer or tracing.setup_tracing("recsys-ranking", config.otel))],
        security=ServerSecurity.from_config(config),
    )
    log.info("ranking service: bundle %s, candidates at %s, events in %s", bundle.version,
             config.candidate_address, "redis" if config.event_store_url else config.event_db)
    return served, ranker
