"""The one `recsys` command line. Each subcommand imports only what it needs, so
`recsys serve` never imports the trainer (or PyTorch)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The ONNX exporter narrates every optimisation pass at INFO; keep ours readable.
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "torch"):
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
            interactions_per_user=args.per_user,
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
    )


def _given(value, default):
    return default if value is None else value


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
    print(f"dataset: {report['dataset'].get('name', args.data)}  test users: {report['test_users']}"
          f"  bundle: {report['bundle']}")
    print(report["table"])
    print("\ncold-start slice (each test user cut to their first 3 train positives):")
    print(report["cold_start_table"])
    print(f"\nranker: {json.dumps(report['bundle_manifest']['ranker'])}")
    print(f"timings (s): {json.dumps(report['timings_s'])}")
    if args.json:
        write_report(report, args.json)
    return 0


# ---- serve -----------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from recsys.grpc_server import single_thread_compute

    single_thread_compute()
    from recsys import config as cfg
    from recsys.grpc_server import run_until_signal

    overrides = {"bundle": args.bundle, "host": args.host, "port": args.port, "workers": args.workers}
    if args.service == "candidate":
        from candidate_svc.server import create_server

        config = cfg.load(cfg.CandidateConfig, overrides)
    else:
        from ranking_svc.server import create_server

        overrides.update(
            candidate_address=args.candidate_address, event_db=args.event_db,
            retrieve_timeout_ms=args.retrieve_timeout_ms,
        )
        config = cfg.load(cfg.RankingConfig, overrides)
    served, _ = create_server(config)
    run_until_signal(served, config.grace_s, args.port_file)
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
    from recsys.loadtest import run_closed_loop

    known: list[str] = []
    if args.bundle:
        from recsys.bundle import resolve_version_dir

        known = json.loads((resolve_version_dir(args.bundle) / "users.json").read_text())["user_ids"]
    report = run_closed_loop(args.address, known, args.concurrency, args.requests, args.k, args.cold_share)
    print(json.dumps(report, indent=2))
    return 0 if report["errors"] == {} else 1


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
    p.add_argument("-v", "--verbose", action="store_true")
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
    d.set_defaults(func=cmd_data)

    def train_flags(x: argparse.ArgumentParser) -> None:
        x.add_argument("--data", required=True, help="canonical dataset directory")
        x.add_argument("--epochs", type=int, help="two-tower epochs")
        x.add_argument("--factors", type=int, help="WALS factors")
        x.add_argument("--mf-iterations", type=int, help="WALS iterations")
        x.add_argument("--seed", type=int, default=0)

    t = sub.add_parser("train", help="train every model and write a bundle version")
    train_flags(t)
    t.add_argument("--out", required=True, help="bundle root (versions + LATEST)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="the evaluation protocol: funnel vs popularity, WALS, EASE")
    train_flags(e)
    e.add_argument("--k", type=int, nargs="+", default=[10, 20])
    e.add_argument("--json", help="write the full report here")
    e.add_argument("--workdir", help="where the eval bundle goes (default: a temp dir)")
    e.set_defaults(func=cmd_eval)

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
    sv.add_argument("--candidate-address", help="ranking only: host:port of candidate_svc")
    sv.add_argument("--event-db", help="ranking only: SQLite event store path")
    sv.add_argument("--retrieve-timeout-ms", type=int, help="ranking only: Retrieve deadline")
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

    lt = sub.add_parser("loadtest", help="closed-loop load on a running ranking service")
    lt.add_argument("--address", default="127.0.0.1:50052")
    lt.add_argument("--bundle", help="draw known user ids from this bundle (else every user is new)")
    lt.add_argument("--cold-share", type=float, default=0.1, help="share of requests from never-seen users")
    lt.add_argument("--concurrency", type=int, default=4)
    lt.add_argument("--requests", type=int, default=2000)
    lt.add_argument("--k", type=int, default=10)
    lt.set_defaults(func=cmd_loadtest)

    dm = sub.add_parser("demo", help="synthetic data -> train -> both services -> recommendations")
    dm.add_argument("--workdir", default="var/demo")
    dm.add_argument("--users", type=int, default=2000)
    dm.add_argument("--items", type=int, default=1500)
    dm.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.cwd() / ".cache" / "numba"))
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
