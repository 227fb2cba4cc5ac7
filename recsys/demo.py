"""`recsys demo` (what `make demo` runs): the whole system once, end to end.

synthetic data -> `recsys train` -> candidate and ranking services as real processes on
loopback -> real gRPC calls: recommendations for known users and a brand-new user, then the
new user likes three items and asks again -> services stopped with SIGTERM.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import grpc

from recsys.procs import ServiceProcess, start_service
from recsys.v1 import common_pb2, ranking_pb2, ranking_pb2_grpc


def _print_list(title: str, response: ranking_pb2.RecommendResponse, genres: dict[str, list[str]]) -> None:
    flags = [f"bundle {response.bundle_version}"]
    if response.cold_start:
        flags.append("cold start")
    if response.degraded:
        flags.append(f"DEGRADED ({response.degraded_reason})")
    print(f"\n== {title}  [{', '.join(flags)}]")
    for rank, item in enumerate(response.items, 1):
        g = "/".join(genres.get(item.item_id, [])[:3])
        print(f"  {rank:2d}. {item.title[:38]:<38} {g:<28} score {item.score:7.3f}  via {'+'.join(item.sources)}")


def run_demo(workdir: Path, users: int = 2000, items: int = 1500, k: int = 8) -> int:
    from training.data import load_dataset, save_dataset
    from training.pipeline import train
    from training.synthetic import generate

    workdir.mkdir(parents=True, exist_ok=True)
    data_dir, bundles = workdir / "data", workdir / "bundles"
    t0 = time.perf_counter()
    if not (data_dir / "dataset.json").exists():
        print(f"generating the synthetic dataset ({users} users, {items} items) in {data_dir}")
        save_dataset(generate(n_users=users, n_items=items, seed=0), data_dir)
    ds = load_dataset(data_dir)
    print(f"dataset: {len(ds.interactions)} interactions, {len(ds.items)} items, {ds.interactions.user_id.nunique()} users")
    print("training WALS, two-tower (PyTorch -> ONNX), index, ranker ...")
    bundle = train(ds, bundles)
    print(f"bundle {bundle.name} written in {time.perf_counter() - t0:.1f}s")

    services: list[ServiceProcess] = []
    try:
        logs = workdir / "logs"
        cand = start_service("candidate", ["--bundle", str(bundles)], logs)
        services.append(cand)
        rank = start_service(
            "ranking",
            ["--bundle", str(bundles), "--candidate-address", cand.address,
             "--event-db", str(workdir / "events.sqlite3")],
            logs,
        )
        services.append(rank)
        print(f"candidate service on {cand.address}, ranking service on {rank.address}")
        genres = {str(i): list(g) for i, g in zip(ds.items.item_id, ds.items.genres)}
        titles = {str(i): str(t) for i, t in zip(ds.items.item_id, ds.items.title)}
        _talk(rank.address, ds, genres, titles, k)
    finally:
        codes = [s.stop() for s in reversed(services)]
        print(f"\nservices stopped (exit codes {codes})")
    return 0 if all(c == 0 for c in codes) else 1


def _talk(address: str, ds, genres: dict[str, list[str]], titles: dict[str, str], k: int) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = ranking_pb2_grpc.RankingServiceStub(channel)
        counts = ds.interactions.user_id.value_counts()
        for user in [counts.index[0], counts.index[len(counts) // 2], counts.index[-1]]:
            recent = ds.interactions[ds.interactions.user_id == user].tail(3).item_id.tolist()
            liked = "; ".join(titles[i][:24] for i in recent)
            t = time.perf_counter()
            resp = stub.Recommend(ranking_pb2.RecommendRequest(user_id=str(user), k=k), timeout=5.0)
            ms = (time.perf_counter() - t) * 1000
            _print_list(f"known user {user} ({counts[user]} events; recently: {liked}) in {ms:.1f} ms", resp, genres)

        new_user = f"new-{uuid.uuid4().hex[:8]}"
        region = next((r for r in ds.users.region if r), "")
        resp = stub.Recommend(
            ranking_pb2.RecommendRequest(user_id=new_user, k=k, features=common_pb2.UserFeatures(region=region, age=30)),
            timeout=5.0,
        )
        _print_list(f"brand-new user {new_user} (region {region or 'unknown'}, no history)", resp, genres)

        # The new user likes three items of one genre: the next answer must follow.
        genre = genres[resp.items[0].item_id][0] if resp.items and genres[resp.items[0].item_id] else None
        pool = [i for i, g in genres.items() if genre in g] if genre else list(genres)
        popular = ds.interactions.item_id.value_counts()
        liked = [i for i in popular.index if i in set(pool)][3:6]
        now = int(time.time() * 1000)
        events = [
            ranking_pb2.Event(idempotency_key=f"{new_user}-{n}", user_id=new_user, item_id=i,
                              type=ranking_pb2.EVENT_TYPE_LIKE, timestamp_ms=now - 1000 * (3 - n))
            for n, i in enumerate(liked)
        ]
        ack = stub.LogEvents(ranking_pb2.LogEventsRequest(events=events), timeout=5.0)
        print(f"\n{new_user} likes {', '.join(titles[i] for i in liked)} ({genre}); stored={ack.stored}")
        resp = stub.Recommend(ranking_pb2.RecommendRequest(user_id=new_user, k=k), timeout=5.0)
        _print_list(f"{new_user} after three likes", resp, genres)
        share = sum(genre in genres.get(it.item_id, []) for it in resp.items) / max(1, len(resp.items))
        print(f"  -> {share:.0%} of the list is {genre}")
