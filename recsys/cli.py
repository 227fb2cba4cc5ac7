"""The one `recsys` command line. Each subcommand imports only what it needs, so
`recsys serve` never imports the trainer (or PyTorch)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

# `recsys serve` exit code when the event store fails its integrity check at start-up
EXIT_DATA_LOSS = 3

def _setup_logging(verbose: bool, log_format: str = "text", level: str | None = None) -> None:
    from recsys import logs

    # JSON lines (with the request id of the RPC being served) or text.
    logs.setup(getattr(logging, level) if level else logging.DEBUG if verbose else logging.INFO,
               json_format=log_format == "json")
    # The ONNX exporter narrates every optimisation pass at INFO; keep ours readable.
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "torch", "numba", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")


# ---- data ------------------------------------------------------------------------------
def cmd_data(args: argparse.Namespace) -> int:
    from training import data, importers, synthetic

    if args.source == "ml-100k":
        ds = importers.import_ml100k(args.src)
    elif args.source == "ml-latest":
        ds = importers.import_ml_latest(args.src)
    elif args.source == "csv":
        mapping = dict(args.map or [])
        ds = importers.import_csv(
            args.interactions, args.items, args.users, mapping, default_event_type=args.event_type
        )
    else:
        ds = synthetic.generate(
            n_users=args.users, n_items=args.items_count, seed=args.seed, days=args.days,
            interactions_per_user=args.per_user, searches_per_user=args.searches_per_user,
        )
    data.save_dataset(ds, args.out)
    meta = data.load_dataset(args.out).meta
    print(json.dumps({"out": str(args.out), **{k: meta[k] for k in meta if k.startswith("n_")}}))
    return 0


# ---- train / eval ----------------------------------------------------------------------
def _train_config(args: argparse.Namespace):
    from dataclasses import replace

    from training.pipeline import MFParams, TrainConfig
    from training.two_tower import TwoTowerParams

    tt = TwoTowerParams()
    mf = MFParams()
    return TrainConfig(
        two_tower=replace(tt, epochs=_given(args.epochs, tt.epochs), seed=args.seed),
        mf=replace(mf, iterations=_given(args.mf_iterations, mf.iterations), factors=_given(args.factors, mf.factors)),
        content=_given(getattr(args, "content", None), TrainConfig.content),
        text_encoder=getattr(args, "text_encoder", None) or "",
    )


def _given(value, default):
    return default if value is None else value


def cmd_tune(args: argparse.Namespace) -> int:
    from evaluation.tune import tune
    from training.data import load_dataset

    grid = dict(args.grid) if args.grid else None
    path, record = tune(load_dataset(args.data), args.out, _train_config(args), grid, args.max_trials)
    for t in record["trials"]:
        print(f"{t['validation_ndcg@10']:.4f}  {json.dumps(t['setting'])}")
    print(json.dumps({"bundle": str(path), "chosen": record["chosen"]}))
    return 0


def _grid_entry(text: str) -> tuple[str, list]:
    key, sep, values = text.partition("=")
    if not sep or "." not in key or not values:
        raise argparse.ArgumentTypeError(f"expected SECTION.FIELD=V1,V2, got {text!r}")

    def parse(v: str):
        for kind in (int, float):
            try:
                return kind(v)
            except ValueError:
                pass
        return v

    return key, [parse(v) for v in values.split(",")]


def cmd_train(args: argparse.Namespace) -> int:
    from training.data import load_dataset
    from training.pipeline import train

    path = train(load_dataset(args.data), args.out, _train_config(args))
    manifest = json.loads((path / "manifest.json").read_text())
    print(json.dumps({"bundle": str(path), "version": manifest["version"],
                      "ranker": manifest["ranker"], "timings_s": manifest["timings_s"]}, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import tempfile

    from evaluation.run import run_eval, write_report
    from training.data import load_dataset

    work = args.workdir or tempfile.mkdtemp(prefix="recsys-eval-")
    report = run_eval(load_dataset(args.data), work, ks=args.k, config=_train_config(args))
    if args.json:
        write_report(report, args.json)
    print(f"dataset: {report['dataset'] or args.data}  test users: {report['test_users']}"
          f"  bundle: {report['bundle']}")
    print(report["table"])
    print("\ncold-start slice (each test user cut to their first 3 train positives):")
    print(report["cold_start_table"])
    print("\nbrand-new users (demographics and region only, no history):")
    print(report["new_user_table"])
    print("\nlong tail (test items with <= 5 train positives):")
    print(report["long_tail_table"])
    print(f"\ntuned baselines (on a validation split of train): {json.dumps(report['tuned'])}")
    print(f"\nranker: {json.dumps(report['bundle_manifest']['ranker'])}")
    print(f"timings (s): {json.dumps(report['timings_s'])}")
    return 0


def cmd_export_encoder(args: argparse.Namespace) -> int:
    from training.text_encoder_export import export_encoder

    meta = export_encoder(args.src, args.out, args.tolerance)
    print(json.dumps({"encoder": str(args.out), **meta}, indent=2))
    return 0


# ---- serve -----------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from recsys.grpc_server import single_thread_compute

    single_thread_compute()
    from recsys import config as cfg
    from recsys.grpc_server import run_until_signal

    overrides = {"bundle": args.bundle, "host": args.host, "port": args.port, "workers": args.workers,
                 "metrics_port": args.metrics_port, "otel": args.otel,
                 "reload_interval_s": args.reload_interval_s,
                 "tls_cert": args.tls_cert, "tls_key": args.tls_key, "tls_client_ca": args.tls_client_ca,
                 "auth_tokens": args.auth_tokens, "reflection": args.reflection, "health_port": args.health_port}
    deps = {}
    if args.service == "candidate":
        from candidate_svc.server import create_server

        overrides.update(event_db=args.event_db, event_store_url=args.event_store_url,
                         live_stats_ttl_s=args.live_stats_ttl_s)
        config = cfg.load(cfg.CandidateConfig, overrides)
        if config.event_db or config.event_store_url:  # live counts for trending and fresh
            from ranking_svc.events import EventStoreCorrupt, open_event_store

            try:
                deps["item_stats"] = open_event_store(config.event_db, config.event_store_url)
            except EventStoreCorrupt as e:
                logging.getLogger("recsys.serve").critical("%s", e)
                return EXIT_DATA_LOSS
    else:
        from ranking_svc.server import create_server

        overrides.update(
            candidate_address=args.candidate_address, event_db=args.event_db,
            event_store_url=args.event_store_url,
            retrieve_timeout_ms=args.retrieve_timeout_ms, experiments=args.experiments,
            retrieve_budget_fraction=args.retrieve_budget_fraction,
            live_trending_ttl_s=args.live_stats_ttl_s, candidate_tls_ca=args.candidate_tls_ca,
            candidate_tls_cert=args.candidate_tls_cert, candidate_tls_key=args.candidate_tls_key,
        )
        config = cfg.load(cfg.RankingConfig, overrides)
    from ranking_svc.events import EventStoreCorrupt

    try:
        served, _ = create_server(config, **deps)
    except EventStoreCorrupt as e:  # never ready on a damaged store: exit, say so, let the operator restore
        logging.getLogger("recsys.serve").critical("%s", e)
        return EXIT_DATA_LOSS
    if config.metrics_port:
        from recsys.metrics import start_http

        logging.getLogger("recsys.metrics").info(
            "metrics on http://%s:%d/metrics", config.host, start_http(config.host, config.metrics_port))
    run_until_signal(served, config.grace_s, args.port_file)
    return 0


# ---- events ----------------------------------------------------------------------------
def cmd_events_export(args: argparse.Namespace) -> int:
    import itertools

    from ranking_svc.events import open_event_store, read_archive
    from training.data import load_dataset, save_dataset
    from training.event_log import LoggedEvent, merge_events

    if bool(args.event_db) == bool(args.event_store_url):
        raise SystemExit("events export: give exactly one of --event-db and --event-store-url")
    store = open_event_store(args.event_db or "", args.event_store_url or "")
    try:
        # the full log = the compaction archives + what is still online; an event archived
        # twice (a compaction interrupted between archive and delete) counts once
        keys: set[str] = set()
        events = itertools.chain(*(read_archive(a) for a in args.archive or ()), store.all_events())
        logged = (LoggedEvent(e.user_id, e.item_id, e.event_type, e.value, e.timestamp_ms, e.query)
                  for e in events if not (e.idempotency_key in keys or keys.add(e.idempotency_key)))
        merged, report = merge_events(load_dataset(args.data), logged)
    finally:
        store.close()
    save_dataset(merged, args.out)
    print(json.dumps({"out": args.out, "events_merged": report.merged, "searches_merged": report.searches,
                      "skipped": dict(report.skipped),
                      "n_interactions": merged.meta["n_interactions"]}, indent=2))
    return 0


def cmd_events_compact(args: argparse.Namespace) -> int:
    import time

    from ranking_svc.events import compact, open_event_store

    if bool(args.event_db) == bool(args.event_store_url):
        raise SystemExit("events compact: give exactly one of --event-db and --event-store-url")
    if args.keep_days < 0:
        raise SystemExit("events compact: --keep-days must be >= 0")
    cutoff_ms = int(time.time() * 1000) - int(args.keep_days * 86_400_000)
    store = open_event_store(args.event_db or "", args.event_store_url or "")
    try:
        moved = compact(store, cutoff_ms, args.archive, args.batch)
    finally:
        store.close()
    print(json.dumps({"archived": moved, "archive": args.archive, "cutoff_ms": cutoff_ms}, indent=2))
    return 0


# ---- clients ---------------------------------------------------------------------------
def cmd_recommend(args: argparse.Namespace) -> int:
    import grpc

    from recsys.v1 import common_pb2, ranking_pb2, ranking_pb2_grpc

    with grpc.insecure_channel(args.address) as channel:
        stub = ranking_pb2_grpc.RankingServiceStub(channel)
        response = stub.Recommend(
            ranking_pb2.RecommendRequest(
                user_id=args.user, k=args.k,
                features=common_pb2.UserFeatures(age=args.age, gender=args.gender, region=args.region),
            ),
            timeout=args.timeout,
        )
    print(f"user {args.user}  bundle {response.bundle_version}  cold_start={response.cold_start}"
          f"  degraded={response.degraded} {response.degraded_reason}")
    for rank, item in enumerate(response.items, 1):
        print(f"{rank:3d}. {item.item_id:>10}  {item.score:8.4f}  {','.join(item.sources):<20} {item.title}")
    return 0


def cmd_loadtest(args: argparse.Namespace) -> int:
    from recsys import loadtest as lt

    pool = lt.UserPool.from_bundle(args.bundle) if args.bundle else lt.UserPool()
    spec = lt.LoadSpec(
        address=args.address, concurrency=0 if args.rate or args.sweep else args.concurrency,
        rate=args.rate or 0.0, duration_s=args.duration, requests=args.requests, warmup_s=args.warmup,
        processes=args.processes, k=args.k, timeout_s=args.timeout,
        mix=lt.parse_mix(args.mix) if args.mix else dict(lt.DEFAULT_MIX), events_share=args.events_share,
        seed=args.seed,
    )
    if args.sweep:
        rates = [float(r) for r in args.sweep.split(",") if r.strip()]
        report = lt.sweep(spec, rates, pool, progress=not args.quiet)
    else:
        report = lt.run(spec, pool, progress=not args.quiet)
    print(lt.summary(report))
    if args.json:
        lt.write_json(report, args.json)
    if args.png:
        lt.plot(report, args.png)
    runs = report.get("runs", [report])
    return 0 if all(r["errors"] == {} for r in runs) else 1


def cmd_size(args: argparse.Namespace) -> int:
    from recsys import sizing

    if args.measurement:
        measurement = json.loads(Path(args.measurement).read_text())
        measurement = measurement.get("measurement", measurement)
    elif args.bundle:
        measurement = sizing.measure(args.bundle, seconds=args.seconds, concurrency=args.concurrency)
    else:
        raise SystemExit("recsys size: give --bundle (measure now) or --measurement FILE (an earlier --json)")
    result = sizing.plan(measurement, args.items, args.qps, args.target_utilization, args.min_replicas)
    print(sizing.render(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    import signal
    import threading

    from recsys.cluster import start_cluster

    cluster = start_cluster(args.bundle, args.workdir, args.candidates, args.rankings, metrics=args.metrics)
    print(json.dumps({"candidate_target": cluster.candidate_target, "ranking_target": cluster.ranking_target,
                      "metrics_ports": cluster.metrics_ports}, indent=2), flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    codes = cluster.stop()
    return 0 if set(codes.values()) <= {0} else 1


def cmd_report(args: argparse.Namespace) -> int:
    from ranking_svc.events import click_rates

    rows = click_rates(args.event_db)
    print(f"{'variant':<20} {'users':>8} {'impressions':>12} {'clicks':>8} {'click_rate':>10}  95% interval")
    for r in rows:
        lo, hi = r.interval95()
        print(f"{r.variant or '(none)':<20} {r.users:>8} {r.impressions:>12} {r.clicks:>8} {r.click_rate:>10.4f}"
              f"  [{lo:.4f}, {hi:.4f}]")
    return 0


def cmd_catalog_update(args: argparse.Namespace) -> int:
    from training.catalog_update import update_catalog

    path = update_catalog(args.bundle, args.data, args.out, args.text_encoder or "")
    print(path if path else "no new items: bundle unchanged")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from recsys.demo import run_demo

    return run_demo(Path(args.workdir), users=args.users, items=args.items)


# ---- parser ----------------------------------------------------------------------------
def _mapping_pair(text: str) -> tuple[str, str]:
    canonical, sep, source = text.partition("=")
    if not sep or not canonical or not source:
        raise argparse.ArgumentTypeError(f"expected CANONICAL=SOURCE, got {text!r}")
    return canonical, source


def build_parser() -> argparse.ArgumentParser:
    from recsys.config import CandidateConfig, RankingConfig, env_help

    p = argparse.ArgumentParser(prog="recsys", description="Two-tier recommendation system.")
    p.add_argument("-v", "--verbose", action="store_true", help="DEBUG logs (services: one access line per RPC)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING"], default=os.environ.get("RECSYS_LOG_LEVEL"),
                   help="overrides -v (env RECSYS_LOG_LEVEL)")
    p.add_argument("--log-format", choices=["text", "json"], default=os.environ.get("RECSYS_LOG_FORMAT", "text"),
                   help="json: one object per line with the request id (env RECSYS_LOG_FORMAT)")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", help="import a dataset or generate the synthetic one (docs/DATA.md)")
    dsub = d.add_subparsers(dest="source", required=True)
    for name, helptext in (("ml-100k", "MovieLens 100K directory"), ("ml-latest", "MovieLens latest-small directory")):
        x = dsub.add_parser(name, help=helptext)
        x.add_argument("src")
        x.add_argument("out")
    c = dsub.add_parser("csv", help="generic CSV files with a column mapping")
    c.add_argument("--interactions", required=True)
    c.add_argument("--items")
    c.add_argument("--users")
    c.add_argument("--map", action="append", type=_mapping_pair, metavar="CANONICAL=SOURCE",
                   help="column mapping, repeatable")
    c.add_argument("--event-type", default="rating", help="event_type when the file has none")
    c.add_argument("out")
    s = dsub.add_parser("synth", help="the built-in synthetic dataset")
    s.add_argument("out")
    s.add_argument("--users", type=int, default=2000)
    s.add_argument("--items", dest="items_count", type=int, default=1500)
    s.add_argument("--days", type=int, default=180)
    s.add_argument("--per-user", type=int, default=40, help="mean interactions per user")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--searches-per-user", type=float, default=0.0,
                   help="mean search queries per user, written to searches.csv (default 0: none)")
    d.set_defaults(func=cmd_data)

    def train_flags(x: argparse.ArgumentParser) -> None:
        x.add_argument("--data", required=True, help="canonical dataset directory")
        x.add_argument("--epochs", type=int, help="two-tower epochs")
        x.add_argument("--factors", type=int, help="WALS factors")
        x.add_argument("--mf-iterations", type=int, help="WALS iterations")
        x.add_argument("--seed", type=int, default=0)
        x.add_argument("--content", choices=("multihot", "cbow"),
                       help="item content vectors (default: TrainConfig.content): genre/tag multi-hot, or plus CBOW")
        x.add_argument("--text-encoder", metavar="DIR",
                       help="search encoder directory (`recsys export-encoder`): item texts join the content vectors")

    t = sub.add_parser("train", help="train every model and write a bundle version")
    train_flags(t)
    t.add_argument("--out", required=True, help="bundle root (versions + LATEST)")
    t.set_defaults(func=cmd_train)

    tu = sub.add_parser("tune", help="search hyper-parameters on a validation split of the data, then train the best")
    train_flags(tu)
    tu.add_argument("--out", required=True, help="bundle root for the chosen configuration")
    tu.add_argument("--grid", action="append", type=_grid_entry, metavar="SECTION.FIELD=V1,V2",
                    help="a search axis, repeatable (default: evaluation.tune.DEFAULT_GRID)")
    tu.add_argument("--max-trials", type=int, help="stop after this many configurations")
    tu.set_defaults(func=cmd_tune)

    e = sub.add_parser("eval", help="the evaluation protocol: funnel vs popularity, WALS, EASE")
    train_flags(e)
    e.add_argument("--k", type=int, nargs="+", default=[10, 20])
    e.add_argument("--json", help="write the full report here")
    e.add_argument("--workdir", help="where the eval bundle goes (default: a temp dir)")
    e.set_defaults(func=cmd_eval)

    xe = sub.add_parser("export-encoder",
                        help="a local Hugging Face / sentence-transformers BERT directory -> ONNX search "
                             "encoder directory (offline; RECSYS_TEXT_ENCODER, train --text-encoder)")
    xe.add_argument("src", help="model directory: config.json, weights, tokenizer.json (nothing is downloaded)")
    xe.add_argument("out", help="encoder directory to write: model.onnx, tokenizer.json, encoder.json")
    xe.add_argument("--tolerance", type=float, default=1e-4, help="max |torch - onnx| of sentence vectors")
    xe.set_defaults(func=cmd_export_encoder)

    sv = sub.add_parser(
        "serve", help="run a gRPC service",
        epilog=env_help(CandidateConfig) + "\n" + env_help(RankingConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sv.add_argument("service", choices=["candidate", "ranking"])
    sv.add_argument("--bundle", help="bundle root or version directory")
    sv.add_argument("--host")
    sv.add_argument("--port", type=int, help="0 picks a free port (see --port-file)")
    sv.add_argument("--port-file", help="write the bound port here once serving")
    sv.add_argument("--workers", type=int)
    sv.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics here (0 = off, the default)")
    sv.add_argument("--otel", choices=["off", "console", "otlp"],
                    help="OpenTelemetry traces (needs the otel extra; default off)")
    sv.add_argument("--candidate-address", help="ranking only: host:port of candidate_svc")
    sv.add_argument("--event-db", help="SQLite event store path (ranking: where events go; candidate: "
                                       "read for live trending/fresh counts, default off)")
    sv.add_argument("--event-store-url",
                    help="redis://host:port/db, a shared Redis event store instead of --event-db")
    sv.add_argument("--live-stats-ttl-s", type=float,
                    help="re-read the store's online item counters at most this often (default 5)")
    sv.add_argument("--reload-interval-s", type=float,
                    help="poll the bundle root's LATEST this often and hot-swap a new valid version (0 = off)")
    sv.add_argument("--retrieve-timeout-ms", type=int, help="ranking only: Retrieve deadline")
    sv.add_argument("--retrieve-budget-fraction", type=float,
                    help="ranking only: share of the caller's remaining time Retrieve may use (0.05..0.95)")
    sv.add_argument("--experiments", help="ranking only: JSON file of re-ranking rules and A/B variants")
    sec = sv.add_argument_group("security (all off by default; docs/RELIABILITY.md)")
    sec.add_argument("--tls-cert", help="PEM certificate chain: serve the main port over TLS")
    sec.add_argument("--tls-key", help="PEM private key of --tls-cert")
    sec.add_argument("--tls-client-ca", help="PEM CA: require client certificates it signed (mutual TLS)")
    sec.add_argument("--auth-tokens", help="JSON file token -> allowed methods: require a bearer token")
    sec.add_argument("--reflection", action="store_true", default=None, help="enable gRPC server reflection (dev)")
    sec.add_argument("--health-port", type=int, help="also serve grpc.health.v1 alone, plaintext, on this port")
    sec.add_argument("--candidate-tls-ca", help="ranking only: PEM CA of the candidate tier (TLS to it)")
    sec.add_argument("--candidate-tls-cert", help="ranking only: client certificate for mTLS to the candidate tier")
    sec.add_argument("--candidate-tls-key", help="ranking only: private key of --candidate-tls-cert")
    sv.set_defaults(func=cmd_serve)

    r = sub.add_parser("recommend", help="ask a running ranking service for a list")
    r.add_argument("--address", default="127.0.0.1:50052")
    r.add_argument("--user", required=True)
    r.add_argument("--k", type=int, default=10)
    r.add_argument("--age", type=int, default=0)
    r.add_argument("--gender", default="")
    r.add_argument("--region", default="")
    r.add_argument("--timeout", type=float, default=2.0)
    r.set_defaults(func=cmd_recommend)

    lt = sub.add_parser(
        "loadtest", help="closed- or open-loop load on a running ranking service (loopback only)",
        description="Closed loop (--concurrency N) or open loop (--rate R, latency measured from each "
                    "request's scheduled send time); --sweep R1,R2,... runs open loop at each rate.",
    )
    lt.add_argument("--address", default="127.0.0.1:50052")
    lt.add_argument("--bundle", help="draw known and heavy user ids from this bundle (else every user is new)")
    lt.add_argument("--mix", help="user mix, e.g. known=0.7,heavy=0.1,cold=0.1,new=0.1 (the default)")
    lt.add_argument("--events-share", type=float, default=0.0,
                    help="share of calls that are LogEvents (1..3 events each; they write to the event store)")
    lt.add_argument("--concurrency", type=int, default=4, help="closed loop: requests in flight per process")
    lt.add_argument("--rate", type=float, help="open loop: target requests per second (all processes)")
    lt.add_argument("--sweep", help="open loop at each of these rates in turn, e.g. 50,100,200")
    lt.add_argument("--duration", type=float, default=10.0, help="measured seconds (after the warm-up)")
    lt.add_argument("--requests", type=int, default=0, help="stop after this many requests (0 = duration)")
    lt.add_argument("--warmup", type=float, default=2.0, help="seconds of load not recorded")
    lt.add_argument("--processes", type=int, default=1, help="client processes")
    lt.add_argument("--timeout", type=float, default=5.0, help="per-request deadline in seconds")
    lt.add_argument("--k", type=int, default=10)
    lt.add_argument("--seed", type=int, default=0)
    lt.add_argument("--json", help="write the report here")
    lt.add_argument("--png", help="plot here: percentiles over time, or the --sweep curve")
    lt.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    lt.set_defaults(func=cmd_loadtest)

    sz = sub.add_parser("size", help="replicas, CPU and memory per tier for N items at Q requests/s")
    sz.add_argument("--items", type=int, required=True, help="catalogue size to plan for")
    sz.add_argument("--qps", type=float, required=True, help="Recommend calls per second to plan for")
    sz.add_argument("--bundle", help="measure one replica of each service on this bundle now")
    sz.add_argument("--measurement", help="reuse the measurement in an earlier `recsys size --json` file")
    sz.add_argument("--seconds", type=float, default=8.0, help="measured load seconds")
    sz.add_argument("--concurrency", type=int, default=4, help="closed-loop concurrency of the measurement")
    sz.add_argument("--target-utilization", type=float, default=0.6, help="CPU share each replica may use")
    sz.add_argument("--min-replicas", type=int, default=2, help="per tier (availability)")
    sz.add_argument("--json", help="write the plan and the measurement here")
    sz.set_defaults(func=cmd_size)

    cl = sub.add_parser("cluster", help="several replicas of each service on loopback, round-robin, until Ctrl-C")
    cl.add_argument("--bundle", required=True)
    cl.add_argument("--candidates", type=int, default=2)
    cl.add_argument("--rankings", type=int, default=2)
    cl.add_argument("--workdir", default="var/cluster", help="logs and event stores")
    cl.add_argument("--metrics", action="store_true", help="a /metrics port per replica")
    cl.set_defaults(func=cmd_cluster)

    ev = sub.add_parser("events", help="the ranking service's event log")
    evsub = ev.add_subparsers(dest="events_command", required=True)
    ex = evsub.add_parser("export", help="merge logged events into a dataset, for `recsys train`")
    ex.add_argument("--event-db", help="a SQLite event store")
    ex.add_argument("--event-store-url", help="or a Redis event store (redis://host:port/db)")
    ex.add_argument("--data", required=True, help="the canonical dataset the events are added to")
    ex.add_argument("--archive", action="append", metavar="CSV",
                    help="a `recsys events compact` archive to include (repeatable): the full log is "
                         "the archives plus the store")
    ex.add_argument("out", help="where the merged dataset is written (replaced if present)")
    ex.set_defaults(func=cmd_events_export)
    cp = evsub.add_parser("compact", help="move events older than --keep-days to a CSV archive (item stats kept)")
    cp.add_argument("--event-db", help="a SQLite event store")
    cp.add_argument("--event-store-url", help="or a Redis event store (redis://host:port/db)")
    cp.add_argument("--keep-days", type=float, required=True, help="keep events newer than this many days")
    cp.add_argument("--archive", required=True, help="CSV the old events are appended to")
    cp.add_argument("--batch", type=int, default=1000, help="events deleted per transaction")
    cp.set_defaults(func=cmd_events_compact)

    rp = sub.add_parser("report", help="click-rate per A/B variant from a ranking event store")
    rp.add_argument("--event-db", required=True, help="the ranking service's SQLite event store")
    rp.set_defaults(func=cmd_report)

    cu = sub.add_parser("catalog-update", help="add a dataset's new items to a bundle without retraining")
    cu.add_argument("--bundle", required=True, help="bundle root (uses LATEST) or version directory")
    cu.add_argument("--data", required=True, help="canonical dataset whose items.csv holds the new items")
    cu.add_argument("--out", help="bundle root to publish into (default: the bundle's own root)")
    cu.add_argument("--text-encoder", metavar="DIR",
                    help="the search encoder the bundle was trained with (needed when it was)")
    cu.set_defaults(func=cmd_catalog_update)

    dm = sub.add_parser("demo", help="synthetic data -> train -> both services -> recommendations")
    dm.add_argument("--workdir", default="var/demo")
    dm.add_argument("--users", type=int, default=2000)
    dm.add_argument("--items", type=int, default=1500)
    dm.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    from recsys.numba_cache import default_cache_dir

    os.environ.setdefault("NUMBA_CACHE_DIR", default_cache_dir(Path.cwd()))
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose, args.log_format, args.log_level)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
