"""Reading a key's contact ledger outside the decision runner: which worker holds it, and its RocksDB as a live follower."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from streams import topics
from streams.clients import partition_of
from streams.decision.contacts import ContactsReader, member_name
from streams.runtime.reader import FRESH_S, GROUP_FRESH_S, Unknown, url_of_member
from streams.runtime.store import PartitionDB
from streams.runtime.values import encode
from streams.settings import Settings

PREFIXES = {t: t.encode() + b"\x00" for t in (topics.CUSTOMER_TO_CONTACTS, topics.SKILL_TO_PACING)}


class FakeAdmin:
    """describe_consumer_groups as confluent-kafka answers it: members with their client.id and partitions."""

    def __init__(self, members: dict[str, list[int]], topic: str, group: str = "engage-decision"):
        self.members, self.topic, self.group, self.calls, self.fails = members, topic, group, 0, False

    def describe_consumer_groups(self, groups, request_timeout=None):
        self.calls += 1
        assert groups == [self.group]
        if self.fails:
            raise RuntimeError("the broker did not answer")
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


def test_a_partition_no_member_holds_is_unknown_and_asked_again_soon(tmp_path):
    # Given a group rebalancing: partition 3 held by no one
    mine = _settings(tmp_path, 6066)
    admin = FakeAdmin({member_name(mine): [0, 1, 2]}, mine.topic(topics.ENRICHED.name))
    now = [100.0]
    reader = ContactsReader(mine, admin=admin, clock=lambda: now[0])
    key = next(f"C{i}" for i in range(200) if partition_of(f"C{i}", 4) == 3)
    # When its key is asked for, twice at once
    for _ in range(2):
        with pytest.raises(Unknown):
            reader.owner(key)
    # Then the group was described once (a flood of requests is not a flood of descriptions)
    assert admin.calls == 1
    # And once the rebalance is over it is found at the next ask, a quarter of a second later
    admin.members[member_name(mine)] = [0, 1, 2, 3]
    now[0] += 0.3
    assert reader.owner(key) is None and admin.calls == 2


def test_a_group_that_cannot_be_described_is_unknown_and_not_asked_for_every_request(tmp_path):
    # Given a broker that does not answer
    mine = _settings(tmp_path, 6066)
    admin = FakeAdmin({member_name(mine): [0, 1, 2, 3]}, mine.topic(topics.ENRICHED.name))
    admin.fails = True
    now = [100.0]
    reader = ContactsReader(mine, admin=admin, clock=lambda: now[0])
    # When keys are asked for meanwhile: Then they are unknown, and the broker is asked once
    for i in range(5):
        with pytest.raises(Unknown):
            reader.owner(f"C{i}")
    assert admin.calls == 1
    # And when it answers again, the keys are found
    admin.fails = False
    now[0] += 0.3
    assert reader.owner("C1") is None


def test_two_members_giving_one_address_answer_nothing_rather_than_an_empty_ledger(tmp_path):
    # Given two workers both advertising this worker's address (or this one restarting, its old member not yet gone)
    mine = _settings(tmp_path, 6066)
    reader = ContactsReader(mine, admin=_TwoMembers(member_name(mine), mine.topic(topics.ENRICHED.name)))
    keys = {partition_of(f"C{i}", 4): f"C{i}" for i in range(200)}
    # When a key of either's partitions is asked for: Then it is unknown, and the answer says why
    for p in (0, 3):
        with pytest.raises(Unknown, match="more than one member"):
            reader.owner(keys[p])


class _TwoMembers(FakeAdmin):
    """Two members (distinct in the group) with the same client.id: one address for both."""

    def __init__(self, client_id: str, topic: str):
        super().__init__({}, topic)
        self.client_id = client_id

    def describe_consumer_groups(self, groups, request_timeout=None):
        members = [SimpleNamespace(client_id=self.client_id, assignment=SimpleNamespace(
            topic_partitions=[SimpleNamespace(topic=self.topic, partition=p) for p in ps])) for ps in ([0, 1], [2, 3])]
        return {groups[0]: SimpleNamespace(result=lambda: SimpleNamespace(members=members))}


def test_the_followers_of_partitions_the_runner_gave_up_are_closed(tmp_path):
    # Given this worker's runner holding C1's partition, its ledger read once (a follower opened)
    settings = _settings(tmp_path, 6066)
    partition = partition_of("C1", 4)
    runner_db = PartitionDB(settings.data_dir / "decision" / str(partition), PREFIXES)
    runner_db.write([(topics.CUSTOMER_TO_CONTACTS, "C1", encode({"offers_today": 1}))], {})
    admin = FakeAdmin({member_name(settings): [partition]}, settings.topic(topics.ENRICHED.name))
    now = [100.0]
    reader = ContactsReader(settings, admin=admin, clock=lambda: now[0])
    assert reader.owner("C1") is None and reader.local("C1") == {"offers_today": 1}
    assert partition in reader._dbs
    # When the partition moves to another worker and the group is described again
    other = _settings(tmp_path, 6067)
    admin.members = {member_name(settings): [], member_name(other): [partition]}
    now[0] += GROUP_FRESH_S + 1
    # Then the key is the other worker's, and this worker's follower of it is closed
    assert reader.owner("C1") == other.advertised_url
    assert partition not in reader._dbs
    runner_db.close()


def test_the_ledger_is_read_as_the_runner_last_wrote_it_and_followed_when_its_folder_is_made_again(tmp_path):
    # Given this worker's decision runner holding C1's partition, with a ledger written
    settings = _settings(tmp_path, 6066)
    partition = partition_of("C1", 4)
    folder = settings.data_dir / "decision" / str(partition)
    runner_db = PartitionDB(folder, PREFIXES)
    runner_db.write([(topics.CUSTOMER_TO_CONTACTS, "C1", encode({"offers_today": 1}))], {})
    clock = [0.0]
    reader = ContactsReader(settings, admin=FakeAdmin({}, ""), clock=lambda: clock[0])
    # When it is read, then the runner writes again and it is read at once, and again FRESH_S later
    first = reader.local("C1")
    runner_db.write([(topics.CUSTOMER_TO_CONTACTS, "C1", encode({"offers_today": 2}))], {})
    at_once = reader.local("C1")
    clock[0] += FRESH_S
    later = reader.local("C1")
    # Then a read sees the runner's latest write, or one at most FRESH_S older; a key without a ledger is None
    assert (first, at_once, later) == ({"offers_today": 1}, {"offers_today": 1}, {"offers_today": 2})
    neighbour = next(f"C-{i}" for i in range(200) if partition_of(f"C-{i}", 4) == partition)
    assert reader.local(neighbour) is None
    # And when the runner drops its copy and restores it afresh (a new folder), the new one is read
    runner_db.close()
    import shutil

    shutil.rmtree(folder)
    runner_db = PartitionDB(folder, PREFIXES)
    runner_db.write([(topics.CUSTOMER_TO_CONTACTS, "C1", encode({"offers_today": 5}))], {})
    assert reader.local("C1") == {"offers_today": 5}
    reader.close()
    runner_db.close()


def test_a_partition_the_runner_never_wrote_on_this_worker_has_no_ledger(tmp_path):
    reader = ContactsReader(_settings(tmp_path, 6066), admin=FakeAdmin({}, ""))
    assert reader.local("C1") is None
