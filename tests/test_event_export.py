"""`recsys events export`: the event log merged into a dataset that `recsys train` loads."""

from __future__ import annotations

import pytest

from ranking_svc.events import SQLiteEventStore, StoredEvent
from recsys.cli import main
from training.data import load_dataset, positive_mask, save_dataset

T_MS = 1_700_000_000_500


@pytest.fixture
def base(tiny_dataset, tmp_path):
    path = tmp_path / "data"
    save_dataset(tiny_dataset, path)
    return path


def logged(key, user, item, kind, value=1.0, ts=T_MS, query=""):
    return StoredEvent(key, user, item, kind, value, ts, query)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def test_export_merges_every_logged_interaction(base, tiny_dataset, tmp_path, backend, request, capsys):
    items = list(tiny_dataset.items["item_id"][:3])
    events = [
        logged("a", "exported-user", items[0], "like"),
        logged("b", "exported-user", items[1], "watch", 93.0, ts=T_MS + 1000),
        logged("c", "exported-user", items[2], "rating", 4.5),
        logged("d", "exported-user", items[2], "dislike"),
        logged("e", "exported-user", items[0], "impression"),
        logged("f", "exported-user", "", "search", query="space"),  # no place in a dataset
        logged("g", "exported-user", "item-not-in-catalog", "click"),
    ]
    if backend == "sqlite":
        store, flag = SQLiteEventStore(tmp_path / "ev.sqlite3"), ["--event-db", str(tmp_path / "ev.sqlite3")]
    else:
        from ranking_svc.redis_events import RedisEventStore
        from tests.redis_server import RedisServer

        server = RedisServer(tmp_path / "redis").start()  # its own: the export reads the default prefix
        request.addfinalizer(server.stop)
        store, flag = RedisEventStore(server.url), ["--event-store-url", server.url]
    store.append(events + events[:2])  # a retried batch is one event each
    store.close()

    out = tmp_path / "merged"
    assert main(["events", "export", *flag, "--data", str(base), str(out)]) == 0
    assert '"events_merged": 5' in capsys.readouterr().out
    merged = load_dataset(out)  # what `recsys train --data` reads: validated on load
    before = tiny_dataset.interactions
    assert len(merged.interactions) == len(before) + 5
    mine = merged.interactions[merged.interactions["user_id"] == "exported-user"]
    got = sorted(zip(mine["item_id"], mine["event_type"], mine["value"], mine["timestamp"]))
    assert got == sorted([
        (items[0], "like", 1.0, T_MS // 1000), (items[1], "watch", 93.0, T_MS // 1000 + 1),
        (items[2], "rating", 4.5, T_MS // 1000), (items[2], "dislike", 1.0, T_MS // 1000),
        (items[0], "impression", 1.0, T_MS // 1000),
    ])
    # the trainer's positives now include the logged like, watch and high rating
    assert positive_mask(mine).sum() == 3
    assert merged.meta["events_merged"] == 5


@pytest.mark.slow
def test_train_learns_from_exported_events(base, tiny_dataset, tiny_config, tmp_path):
    from dataclasses import replace

    from recsys.bundle import load_bundle
    from training.pipeline import train

    items = list(tiny_dataset.items["item_id"][:4])
    store = SQLiteEventStore(tmp_path / "ev.sqlite3")
    store.append([logged(f"k{i}", "loop-user", item, "like", ts=T_MS + i) for i, item in enumerate(items)])
    store.close()
    out = tmp_path / "merged"
    assert main(["events", "export", "--event-db", str(tmp_path / "ev.sqlite3"), "--data", str(base), str(out)]) == 0
    config = replace(tiny_config, two_tower=replace(tiny_config.two_tower, epochs=1),
                     mf=replace(tiny_config.mf, iterations=2))
    b = load_bundle(train(load_dataset(out), tmp_path / "bundles", config))
    row = b.user_index["loop-user"]  # a user only the event log knew
    assert sorted(b.item_ids[i] for i in b.user_pos.row(row)) == sorted(items)


def test_compact_archives_old_events_and_export_reads_archive_plus_store(base, tiny_dataset, tmp_path, capsys):
    import time

    from ranking_svc.events import read_archive

    items = list(tiny_dataset.items["item_id"][:2])
    now = int(time.time() * 1000)
    day = 86_400_000
    old = [logged(f"old{j}", "compacted-user", items[0], "like", ts=now - (40 + j) * day) for j in range(5)]
    new = [logged("new0", "compacted-user", items[1], "click", ts=now - day)]
    db = tmp_path / "ev.sqlite3"
    store = SQLiteEventStore(db)
    store.append(old + new)
    stats_before = store.item_stats(items, now)
    store.close()
    archive = tmp_path / "archive" / "events.csv"

    flags = ["--event-db", str(db), "--keep-days", "30", "--archive", str(archive), "--batch", "2"]
    assert main(["events", "compact", *flags]) == 0
    assert '"archived": 5' in capsys.readouterr().out
    assert sorted(read_archive(archive), key=lambda e: e.idempotency_key) == old, "archive must be lossless"
    store = SQLiteEventStore(db)
    try:
        assert [e.idempotency_key for e in store.all_events()] == ["new0"]
        assert store.item_stats(items, now) == stats_before, "compaction keeps item stats"
    finally:
        store.close()
    assert main(["events", "compact", *flags]) == 0  # nothing older left: the archive is unchanged
    assert '"archived": 0' in capsys.readouterr().out
    assert len(list(read_archive(archive))) == 5

    # a second copy of the archive (as after a compaction interrupted before its delete)
    copy = tmp_path / "copy.csv"
    copy.write_text(archive.read_text())
    out = tmp_path / "merged"
    assert main(["events", "export", "--event-db", str(db), "--archive", str(archive), "--archive", str(copy),
                 "--data", str(base), str(out)]) == 0
    assert '"events_merged": 6' in capsys.readouterr().out, "the full log = archive + store, each event once"
    mine = load_dataset(out).interactions
    assert (mine["user_id"] == "compacted-user").sum() == 6
