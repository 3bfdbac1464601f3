"""What make bench reports of the tables' state: per table, per customer with a journey, per visitor."""
from __future__ import annotations

from streams import topics
from streams.settings import Settings
from streams.tools.bench import _table_state


def test_table_state_counts_what_each_table_holds_per_key_and_on_disk(tmp_path):
    # Given a worker's folder with two partitions of the journey table and detection's RocksDB
    for p, size in ((0, 300), (1, 200)):
        (tmp_path / "worker-0" / "v1" / "tables" / f"key_to_journey-{p}.db").mkdir(parents=True)
        (tmp_path / "worker-0" / "v1" / "tables" / f"key_to_journey-{p}.db" / "000001.sst").write_bytes(b"x" * size)
    (tmp_path / "worker-0" / "detection" / "0").mkdir(parents=True)
    (tmp_path / "worker-0" / "detection" / "0" / "000002.sst").write_bytes(b"y" * 1000)
    # and what the changelogs say the tables hold: C1 did something, C2 only has a profile
    live = {topics.CUSTOMER_TO_PROFILE: {b'"C1"': 250, b'"C2"': 240}, topics.KEY_TO_JOURNEY: {b'"C1"': 900, b'"v9"': 100},
            topics.CUSTOMER_TO_CONTACTS: {b'"C1"': 1300}, topics.VISITOR_TO_STATE: {b'"v9"': 400, b'"v8"': 300},
            topics.PARTITION_TO_TIMERS: {b'"0:q"': 100}}
    state = _table_state(Settings(data_dir=tmp_path), live)
    # Then each table's keys, bytes and files; the customers with a journey; and per visitor, the timers shared out
    assert state["by_table"][topics.KEY_TO_JOURNEY] == {"keys": 2, "bytes": 1000, "bytes_per_key": 500.0,
                                                        "rocksdb_bytes": 500}
    assert state["by_table"][topics.VISITOR_TO_STATE]["rocksdb_bytes"] == 1000
    assert state["customers_with_a_journey"] == 1 and state["bytes_per_customer_median"] == 250 + 900 + 1300
    assert state["journey_bytes_max"] == 900 and state["visitors"] == 2 and state["bytes_per_visitor"] == 400.0
