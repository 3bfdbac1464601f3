"""Reading a key's contact ledger outside the decision runner: which worker holds it, and its RocksDB as a live follower."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from streams import topics
from streams.clients import partition_of
from streams.decision.contacts import ContactsReader, Unknown, member_name, url_of_member
from streams.runtime.store import PartitionDB, json_value
from streams.settings import Settings

PREFIXES = {t: t.encode() + b"\x00" for t in (topics.CUSTOMER_TO_CONTACTS, topics.SKILL_TO_PACING)}


class FakeAdmin:
    """describe_consumer_groups as confluent-kafka answers it: members with their client.id and partitions."""

    def __init__(self, members: dict[str, list[int]], topic: str):
        self.members, self.topic, self.calls = members, topic, 0

    def describe_consumer_groups(self, groups, request_timeout=None):
        self.calls += 1
        members = [SimpleNamespace(client_id=cid, assignment=SimpleNamespace(
            topic_partitions=[SimpleNamespace(topic=self.topic, partition=p) for p in ps]))
            for cid, ps in self.members.items()]
        done = SimpleNamespace(result=lambda: SimpleNamespace(members=members))
        return {groups[0]: done}


def _settings(tmp_path, port: int) -> Settings:
    return Settings(data_dir=tmp_path / f"w{port}", http_port=port, partitions=4)


def test_a_member_name_carries_the_workers_address_and_reads_back():
    settings = Settings(http_port=6070, http_host="worker-3.internal")
    assert url_of_member(member_name(settings)) == "http://worker-3.internal:6070"
    assert url_of_member("rdkafka") is None and url_of_member("") is None


def test_the_owner_of_a_key_is_the_worker_whose_decision_runner_holds_its_partition(tmp_path):
    # Given two workers' decision runners, one holding partitions 0-1 and the other 2-3
    mine, other = _settings(tmp_path, 6066), _settings(tmp_path, 6067)
    admin = FakeAdmin({member_name(mine): [0, 1], member_name(other): [2, 3]}, mine.topic(topics.ENRICHED.name))
    reader = ContactsReader(mine, admin=admin)
    keys = {partition_of(f"C{i}", 4): f"C{i}" for i in range(200)}
    # When each partition's key is asked for
    # Then this worker's own partitions are read here (None), the others at the other worker's address
    assert [reader.owner(keys[p]) for p in range(4)] == [None, None, other.advertised_url, other.advertised_url]
    # And the group is described once for all of them (kept for a few seconds)
    assert admin.calls == 1


def test_a_partition_no_member_holds_is_unknown_and_asked_again_next_time(tmp_path):
    # Given a group rebalancing: partition 3 held by no one
    mine = _settings(tmp_path, 6066)
    admin = FakeAdmin({member_name(mine): [0, 1, 2]}, mine.topic(topics.ENRICHED.name))
    reader = ContactsReader(mine, admin=admin)
    key = next(f"C{i}" for i in range(200) if partition_of(f"C{i}", 4) == 3)
    # When its key is asked for, twice
    for _ in range(2):
        with pytest.raises(Unknown):
            reader.owner(key)
    # Then the group was described each time (a partition unknown is not kept)
    assert admin.calls == 2
    # And once the rebalance is over it is found
    admin.members[member_name(mine)] = [0, 1, 2, 3]
    assert reader.owner(key) is None


def test_the_ledger_is_read_as_the_runner_last_wrote_it_and_followed_when_its_folder_is_made_again(tmp_path):
    # Given this worker's decision runner holding C1's partition, with a ledger written
    settings = _settings(tmp_path, 6066)
    partition = partition_of("C1", 4)
    folder = settings.data_dir / "decision" / str(partition)
    runner_db = PartitionDB(folder, PREFIXES)
    runner_db.write([(topics.CUSTOMER_TO_CONTACTS, "C1", json_value({"offers_today": 1}))], {})
    reader = ContactsReader(settings, admin=FakeAdmin({}, ""))
    # When it is read, then the runner writes again and it is read again
    first = reader.local("C1")
    runner_db.write([(topics.CUSTOMER_TO_CONTACTS, "C1", json_value({"offers_today": 2}))], {})
    second = reader.local("C1")
    # Then each read sees the runner's latest write; a key without a ledger is None
    assert (first, second) == ({"offers_today": 1}, {"offers_today": 2})
    neighbour = next(f"C-{i}" for i in range(200) if partition_of(f"C-{i}", 4) == partition)
    assert reader.local(neighbour) is None
    # And when the runner drops its copy and restores it afresh (a new folder), the new one is read
    runner_db.close()
    import shutil

    shutil.rmtree(folder)
    runner_db = PartitionDB(folder, PREFIXES)
    runner_db.write([(topics.CUSTOMER_TO_CONTACTS, "C1", json_value({"offers_today": 5}))], {})
    assert reader.local("C1") == {"offers_today": 5}
    reader.close()
    runner_db.close()


def test_a_partition_the_runner_never_wrote_on_this_worker_has_no_ledger(tmp_path):
    reader = ContactsReader(_settings(tmp_path, 6066), admin=FakeAdmin({}, ""))
    assert reader.local("C1") is None
