"""The replay diff: signals added and removed per rule, decisions that flip, value gained and lost."""
from streams.replay.diff import diff, format_diff, is_empty


def signal(sid, rule, visitor, ts, path="/p"):
    return {"signal_id": sid, "rule_id": rule, "signal": rule.upper(), "visitor_id": visitor, "ts": ts,
            "evidence": [{"type": "page_view", "path": path, "query": None}]}


def decision(sid, outcome="act", action="offer", channel="web", score=1.0, model="m1", gate=None):
    return {"decision_id": f"d-{sid}", "visitor_id": "v-" + sid, "customer_id": None, "signal": "S",
            "signal_ts": 1_700_000_000_000 + int(sid[1:]), "outcome": outcome, "gate": gate,
            "action_id": action if outcome == "act" else None, "channel": channel if outcome == "act" else None,
            "score": score, "model_version": model}


def test_the_same_records_make_an_empty_diff():
    # Given two runs that found and decided the same things
    s = [signal("s1", "cart", "v1", 1_000), signal("s2", "login", "v2", 2_000)]
    d = [decision("s1"), decision("s2", outcome="nothing", gate="policy")]
    # When they are diffed
    report = diff(s, d, list(s), list(d))
    # Then nothing differs, and every record is counted as the same
    assert is_empty(report)
    assert report["signals"] == {"live": 2, "candidate": 2, "added": 0, "removed": 0}
    assert report["decisions"]["same"] == 2 and report["decisions"]["flipped"] == 0
    assert report["value"] == {"live": 1.0, "candidate": 1.0, "gained": 0.0, "lost": 0.0, "net": 0.0}
    assert format_diff(report, "t").endswith("no difference")


def test_signals_added_and_removed_are_counted_per_rule_with_examples():
    # Given a candidate that drops one rule's signals and adds another rule's
    live = [signal("s1", "login", "v1", 1_000, "/login"), signal("s2", "login", "v2", 2_000, "/login"),
            signal("s3", "cart", "v3", 3_000)]
    cand = [signal("s3", "cart", "v3", 3_000), signal("s4", "roaming", "v4", 4_000, "/roaming"),
            signal("s5", "roaming", "v5", 5_000, "/roaming"), signal("s6", "roaming", "v6", 6_000, "/roaming")]
    # When diffed with at most two examples
    report = diff(live, [], cand, [], examples=2)
    # Then the totals and each rule's own counts say what moved, the busiest rule first
    assert report["signals"] == {"live": 3, "candidate": 4, "added": 3, "removed": 2}
    by_rule = {r["rule_id"]: r for r in report["rules"]}
    assert [r["rule_id"] for r in report["rules"]] == ["roaming", "login", "cart"]
    assert (by_rule["roaming"]["added"], by_rule["roaming"]["removed"], by_rule["roaming"]["live"]) == (3, 0, 0)
    assert (by_rule["login"]["added"], by_rule["login"]["removed"], by_rule["login"]["candidate"]) == (0, 2, 0)
    assert (by_rule["cart"]["added"], by_rule["cart"]["removed"]) == (0, 0)
    # and the examples are the earliest, capped, with the evidence as a person reads it
    assert [e["visitor_id"] for e in by_rule["roaming"]["examples_added"]] == ["v4", "v5"]
    assert by_rule["login"]["examples_removed"][0]["evidence"] == ["page_view /login"]
    assert not is_empty(report)


def test_decisions_that_flip_are_counted_by_transition_with_the_value_gained_and_lost():
    # Given live decisions and a candidate's over the same signals
    live = [decision("s1", score=2.0), decision("s2", outcome="nothing", gate="policy"),
            decision("s3", score=1.5), decision("s4", outcome="control"), decision("s5", score=0.5)]
    cand = [decision("s1", score=2.0),                                   # same
            decision("s2", score=3.0),                                   # nothing -> act: +3.0
            decision("s3", outcome="nothing", gate="capacity"),          # act -> nothing: -1.5
            decision("s4", outcome="control"),                           # same
            decision("s5", action="call", channel="agent", score=0.25, model="m2"),  # another action: -0.25
            decision("s6", score=4.0)]                                   # added: +4.0
    # When diffed
    report = diff([], live, [], cand)
    d = report["decisions"]
    # Then each kind is counted once
    assert (d["live"], d["candidate"], d["same"], d["flipped"], d["added"], d["removed"]) == (5, 6, 2, 3, 1, 0)
    assert d["flipped_with_another_model"] == 1
    assert (d["acting_live"], d["acting_candidate"]) == (3, 4)
    assert {(f["live"], f["candidate"]): f["count"] for f in report["flips"]} == {
        ("nothing (policy)", "act offer by web"): 1,
        ("act offer by web", "nothing (capacity)"): 1,
        ("act offer by web", "act call by agent"): 1}
    # and the value: only acting decisions count, gains and losses kept apart
    assert report["value"] == {"live": 4.0, "candidate": 9.25, "gained": 7.0, "lost": 1.75, "net": 5.25}
    assert [e["decision_id"] for e in report["examples"]["flipped"]] == ["d-s2", "d-s3", "d-s5"]
    assert report["examples"]["added"][0]["live"] is None
    assert report["examples"]["added"][0]["candidate"] == "act offer by web"


def test_a_removed_decision_loses_what_it_was_worth():
    # Given a live decision to act the candidate never made
    report = diff([], [decision("s1", score=0.75)], [], [])
    # Then it is removed, and its value is lost
    assert report["decisions"]["removed"] == 1
    assert report["value"]["lost"] == 0.75 and report["value"]["net"] == -0.75
    assert "-1" in format_diff(report, "t")

