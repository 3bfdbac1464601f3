"""Which partitions get an idle tick, and how long they count as idle."""
from streams.detection.idle import IdlePartitions


def test_a_partition_idles_from_its_latest_event_once_past_the_tick_interval():
    # Given partitions 0 and 1 assigned at t=100 s, and an event of partition 0 at t=101 s
    idle = IdlePartitions(idle_after_s=2.0)
    idle.assigned([0, 1], now=100.0)
    assert idle.saw_event(0, now=101.0) is True   # the first since its assignment (logged by the agent)
    assert idle.saw_event(0, now=101.5) is False
    # When the wall clock reads 102.5 s, then partition 1 is idle since its assignment, partition 0 not yet
    assert idle.idle_ms(1, now=102.5) == 2500
    assert idle.idle_ms(0, now=102.5) is None
    # And at 104 s partition 0 has been idle since its latest event
    assert idle.idle_ms(0, now=104.0) == 2500


def test_a_revoked_partition_is_forgotten_and_a_reassigned_one_counts_afresh():
    # Given partition 3, assigned and busy, then revoked
    idle = IdlePartitions(idle_after_s=1.0)
    idle.assigned([3], now=0.0)
    idle.saw_event(3, now=5.0)
    idle.revoked([3])
    # Then it never ticks while it is not ours
    assert idle.idle_ms(3, now=100.0) is None
    # When it is assigned again, then its idle time counts from the new assignment, and its next event is a first
    idle.assigned([3], now=200.0)
    assert idle.idle_ms(3, now=201.5) == 1500
    assert idle.saw_event(3, now=202.0) is True


def test_an_assignment_does_not_reset_a_partition_still_owned():
    # Given a partition with an event at 10 s; when a rebalance assigns it again at 50 s, then its idle time still counts from 10 s
    idle = IdlePartitions(idle_after_s=1.0)
    idle.saw_event(0, now=10.0)
    idle.assigned([0], now=50.0)
    assert idle.idle_ms(0, now=51.0) == 41000
