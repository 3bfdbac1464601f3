"""The data stage's runner: each partition it holds swept once assigned and then hourly; its tables read from another process."""
from __future__ import annotations

from streams import topics
from streams.clients import partition_of
from streams.data.agent import NAME, SWEEP_EVERY_S
from streams.runtime.reader import StageReader, member_name
from tests.support.runners import DataStage
from tests.support.stage import T0


def _sweeps(st: DataStage) -> list[tuple[int, int]]:
    """(partition, wall_ts) of the sweeps the runner sent."""
    name = st.runner.settings.topic(topics.DATA_SWEEPS.name)
    return [(p, st.codec.decode(name, topics.DATA_SWEEPS.schema, v)["wall_ts"])
            for t, p, _, v in st.runner.producer.sent if t == name]


def test_each_partition_held_is_swept_once_assigned_and_then_hourly(tmp_path):
    # Given a data runner holding partitions 0 and 2
    st = DataStage(tmp_path)
    st.runner.assigned = {0, 2}
    now = T0 / 1000
    # When its loop turns, now and ten seconds later
    st.runner.idle(now)
    st.runner.idle(now + 10)
    # Then each partition it holds gets one sweep, sent to that partition, at once
    assert _sweeps(st) == [(0, T0), (2, T0)]
    # And when it takes partition 1 too, that one is swept at the next turn, the others not again
    st.runner.assigned = {0, 1, 2}
    st.runner.idle(now + 20)
    assert _sweeps(st)[2:] == [(1, T0 + 20_000)]
    # And an hour after their sweep, 0 and 2 are swept again
    st.runner.idle(now + SWEEP_EVERY_S)
    assert _sweeps(st)[3:] == [(0, T0 + int(SWEEP_EVERY_S * 1000)), (2, T0 + int(SWEEP_EVERY_S * 1000))]


def test_a_sweep_record_deletes_only_its_partitions_quiet_journeys(tmp_path):
    # Given journeys on partition 0: one with a step a year old, one with a step now
    st = DataStage(tmp_path)
    year = 365 * 86_400_000
    for key, ts in (("v-quiet", T0 - year), ("v-busy", T0)):
        st.put(topics.JOURNEY_MOVES, key, {"key": key, "from_key": "d", "hops": 0,
                                           "steps": [{"ts": ts, "channel": "web", "kind": "search",
                                                      "text": "'cancel'", "ref": f"e-{key}"}]})
    assert st.stored(topics.KEY_TO_JOURNEY, "v-quiet") is not None
    # When the sweep of partition 0 comes, dated now
    st.put(topics.DATA_SWEEPS, None, {"partition": 0, "wall_ts": T0, "watermark_ts": T0, "idle_ms": 0})
    # Then the quiet journey is deleted, on the changelog too, and the busy one stays
    assert st.stored(topics.KEY_TO_JOURNEY, "v-quiet") is None
    assert ("v-quiet", None) in st.changelog(topics.KEY_TO_JOURNEY)
    assert st.stored(topics.KEY_TO_JOURNEY, "v-busy") is not None


def test_another_process_reads_several_of_a_keys_tables_as_the_runner_wrote_them(tmp_path):
    # Given a data runner that stored C1's profile and journey on C1's partition
    from tests.support.stage import profile, signal

    st = DataStage(tmp_path, partitions=4, http_port=6070)
    p = partition_of("C1", 4)
    st.put(topics.PROFILES_BY_CUSTOMER, "C1", profile("C1"), partition=p)
    st.put(topics.SIGNALS_BY_CUSTOMER, "C1", signal("sig-1"), partition=p)
    # When the worker's context service reads C1's tables (the runner's RocksDB followed read-only)
    reader = StageReader(st.runner.settings, NAME, topics.SIGNALS)
    try:
        held = reader.read("C1", [topics.CUSTOMER_TO_PROFILE, topics.KEY_TO_JOURNEY, topics.CUSTOMER_TO_FORGOTTEN])
    finally:
        reader.close()
    # Then it finds the profile and the journey with the signal's step, and no forgetting
    assert held[topics.CUSTOMER_TO_PROFILE]["display_name"] == "Sara"
    assert [s["kind"] for s in held[topics.KEY_TO_JOURNEY]] == ["search", "signal"]
    assert held[topics.CUSTOMER_TO_FORGOTTEN] is None
    # And the runner's client.id names the worker's address, so the group's description says who holds C1
    assert st.runner.client_id == member_name(st.runner.settings, NAME)
