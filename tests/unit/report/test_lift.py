"""The lift report: published intervals, the current revision only, pending windows, no control, JSON and the chart."""
from __future__ import annotations

import json
import math
from statistics import NormalDist, variance

import pytest

from streams.report import lift
from streams.report.chart import write_html
from streams.report.lift import format_text, latest, lift_report, newcombe, read_attributions, wilson

T0 = 1_700_000_000_000
WINDOW = 30 * 60_000
Z = NormalDist().inv_cdf(0.975)


def att(did, arm="treated", action="checkout-assist", converted=False, ts=T0, revision=0, goal="purchase", **fields):
    """An Attribution record as the attribution stage writes it, its window over 30 minutes after ts; one customer each."""
    rec = {"decision_id": did, "key": f"C-{did}", "visitor_id": "V1", "customer_id": f"C-{did}", "revision": revision,
           "decision_ts": ts, "window_end_ts": ts + WINDOW, "updated_ts": ts, "signal": "cart_at_risk", "arm": arm,
           "outcome": "act" if arm == "treated" else "control", "gate": None, "action_id": action, "channel": "chat",
           "skill": "sales", "goal": goal, "score": 1.0, "shown": False, "accepted": False, "declined": False,
           "abandoned": False, "expired": False, "agent_seconds": 0.0, "purchases": 0, "revenue": 0.0,
           "cancelled": False, "lost_value": 0.0, "called": False, "converted": converted, "ruleset_version": "r/a"}
    rec.update(fields)
    return rec


def arm(prefix, n, converted, arm_name="treated", action="checkout-assist", **fields):
    """n decisions of one arm, the first `converted` of them converted."""
    return [att(f"{prefix}{i}", arm_name, action, converted=i < converted, **fields) for i in range(n)]


HORIZON = T0 + 10 * WINDOW  # every window in these records is over by then


def test_wilson_matches_the_published_interval():
    # Given 81 successes out of 263 (Newcombe 1998 / Wilson's example); When the interval is taken
    lo, hi = wilson(81, 263)
    # Then it is [0.2553, 0.3662]
    assert lo == pytest.approx(0.2553, abs=5e-5) and hi == pytest.approx(0.3662, abs=5e-5)
    # and an empty group has none
    assert wilson(0, 0) is None


@pytest.mark.parametrize("x1, n1, x2, n2, lo, hi", [
    (56, 70, 48, 80, 0.0524, 0.3339),   # Newcombe 1998, table II, method 10
    (9, 10, 3, 10, 0.1705, 0.8090),
    (10, 10, 0, 20, 0.6791, 1.0000),
    (0, 10, 0, 20, -0.1611, 0.2775),
])
def test_newcombe_hybrid_score_matches_the_published_intervals(x1, n1, x2, n2, lo, hi):
    # Given two proportions from Newcombe's paper; When the interval of their difference is taken
    got = newcombe(x1, n1, x2, n2)
    # Then it is the paper's method 10 interval to four decimals
    assert got == pytest.approx([lo, hi], abs=5e-5)


def test_thirty_in_a_hundred_against_ten_in_a_hundred():
    # Given 30/100 treated against 10/100 control
    records = arm("t", 100, 30) + arm("c", 100, 10, "holdout")
    # When the report is made
    o = lift_report(records, horizon_ms=HORIZON)["overall"]
    # Then the difference is 0.20 with the hybrid score interval [0.0900, 0.3058] (from the Wilson intervals
    # [0.2189, 0.3958] and [0.0552, 0.1744]), and 20 incremental conversions with it scaled by 100
    assert o["conversion_diff"] == pytest.approx(0.20)
    assert o["conversion_diff_ci"] == pytest.approx([0.0900, 0.3058], abs=5e-5)
    assert o["incremental_conversions"] == pytest.approx(20.0)
    assert o["incremental_conversions_ci"] == pytest.approx([9.00, 30.58], abs=5e-3)
    assert o["converted_anyway_share"] == pytest.approx(0.10)


def test_the_highest_revision_of_a_decision_is_the_one_that_counts():
    # Given a decision converted at revision 2, then a replay of its revision 0, and another decision written twice
    # at the same revision (the later one converted)
    records = [att("d1", revision=0), att("d1", revision=2, converted=True), att("d1", revision=0),
               att("d2", revision=1), att("d2", revision=1, converted=True)]
    # When the latest are taken and reported
    current = {r["decision_id"]: r for r in latest(records)}
    o = lift_report(records, horizon_ms=HORIZON)["overall"]
    # Then each decision counts once, as its highest revision (of equal ones, the later)
    assert len(latest(records)) == 2 and current["d1"]["revision"] == 2 and current["d1"]["converted"]
    assert current["d2"]["converted"]
    assert o["n_treated"] == 2 and o["conversion_treated"] == 1.0


def test_decisions_whose_window_is_not_over_are_pending_not_compared():
    # Given two finished decisions and one whose window ends after the latest thing attributed
    records = [att("t1", converted=True), att("c1", "holdout"), att("late", ts=T0 + 10 * 60_000)]
    # When the report is made with the default horizon (the latest decision_ts: T0 + 10 min)
    report = lift_report(records)
    # Then none of them is over; with attribution 35 minutes on, the late one (to T0 + 40 min) is still open, and so
    # is the decision that moved the horizon
    assert report["pending"] == 3 and report["overall"]["n_treated"] == 0
    later = lift_report(records + [att("x", "none", ts=T0 + 35 * 60_000, action=None)])
    assert later["pending"] == 2 and later["overall"]["n_treated"] == 1 and later["overall"]["n_control"] == 1
    assert later["decisions"] == {"treated": 1, "control": 0, "holdout": 1, "none": 0}


def test_the_range_keeps_decisions_from_start_up_to_not_including_end():
    # Given decisions an hour apart
    records = [att(f"d{i}", ts=T0 + i * 3_600_000) for i in range(4)]
    # When the report covers hours 1 and 2
    report = lift_report(records, start_ms=T0 + 3_600_000, end_ms=T0 + 3 * 3_600_000, horizon_ms=T0 + 10 * 3_600_000)
    # Then only those two count
    assert report["decisions"]["treated"] == 2 and report["pending"] == 0


def test_conversion_is_the_engines_flag_per_goal_not_recomputed():
    # Given a retain decision that converted with no revenue (did not cancel) and a purchase decision with revenue
    # the engine did not count as converted (e.g. the purchase came from another goal's rules)
    records = [att("r1", action="retention-chat", goal="retain", converted=True),
               att("p1", goal="purchase", converted=False, revenue=80.0, purchases=1),
               att("c1", "holdout", goal="purchase"), att("c2", "control", action="retention-chat", goal="retain")]
    # When the report is made
    report = lift_report(records, horizon_ms=HORIZON)
    by_action = {g["action_id"]: g for g in report["actions"]}
    # Then the report takes the flag as it is; per action control and hold-out are the comparison, overall only the
    # hold-out (a customer in one action's control group may have been treated by another action)
    assert by_action["retention-chat"]["conversion_treated"] == 1.0
    assert by_action["checkout-assist"]["conversion_treated"] == 0.0
    assert by_action["checkout-assist"]["n_control"] == 1 and by_action["retention-chat"]["n_control"] == 1
    assert report["overall"]["n_control"] == 1


def test_net_value_and_calls_are_compared_with_their_intervals():
    # Given treated people worth 10, 20, 30, 40 (one cancelling at 5) and controls worth 0, 10, 0, 10; 1 of 4 treated
    # called against 3 of 4 controls; 2 hours of agent time
    treated = [att(f"t{i}", revenue=v, agent_seconds=1800.0, called=i == 0, accepted=i < 3, converted=True)
               for i, v in enumerate((10.0, 20.0, 30.0, 40.0))]
    treated[0]["lost_value"] = 5.0
    control = [att(f"c{i}", "holdout", revenue=v, called=i < 3) for i, v in enumerate((0.0, 10.0, 0.0, 10.0))]
    # When the report is made
    o = lift_report(treated + control, horizon_ms=HORIZON)["overall"]
    # Then net value is revenue − lost value and its difference has Welch's normal interval, scaled by n treated
    a, b = [5.0, 20.0, 30.0, 40.0], [0.0, 10.0, 0.0, 10.0]
    diff, se = sum(a) / 4 - sum(b) / 4, math.sqrt(variance(a) / 4 + variance(b) / 4)
    assert o["net_value_diff"] == pytest.approx(diff) and o["net_value_diff_ci"] == pytest.approx([diff - Z * se, diff + Z * se])
    assert o["incremental_net_value"] == pytest.approx(4 * diff)
    assert o["incremental_net_value_ci"] == pytest.approx([4 * (diff - Z * se), 4 * (diff + Z * se)])
    # and calls deflected are (0.75 − 0.25) × 4 with the hybrid interval of control − treated
    assert o["calls_deflected"] == pytest.approx(2.0)
    assert o["calls_deflected_ci"] == pytest.approx([4 * v for v in newcombe(3, 4, 1, 4)])
    # and agent hours and what they bought are counted for the treated
    assert o["agent_hours"] == pytest.approx(2.0) and o["accepted_share"] == pytest.approx(0.75)
    assert o["incremental_conversions_per_agent_hour"] == pytest.approx(o["incremental_conversions"] / 2.0)


def test_a_report_without_control_has_no_intervals_and_does_not_crash(tmp_path):
    # Given only treated decisions, with no agent time
    records = arm("t", 5, 2)
    # When the report is made, printed and drawn
    report = lift_report(records, horizon_ms=HORIZON)
    text = format_text(report)
    page = write_html(report, tmp_path / "lift.html").read_text()
    # Then comparisons are None, nothing divides by zero, and the outputs say so rather than fail
    o = report["overall"]
    assert o["conversion_control"] is None and o["conversion_diff"] is None and o["conversion_diff_ci"] is None
    assert o["incremental_conversions"] is None and o["net_value_diff_ci"] is None and o["calls_deflected_ci"] is None
    assert o["incremental_conversions_per_agent_hour"] is None
    assert o["conversion_treated_ci"] == pytest.approx(wilson(2, 5))
    assert all(p["cumulative"] is None for p in report["series"])
    assert "overall" in text and "<svg" in page


def test_an_empty_topic_gives_an_empty_report():
    # Given no records at all; When the report is made; Then it is empty, not an error
    report = lift_report([])
    assert report["pending"] == 0 and report["actions"] == [] and report["overall"]["n_treated"] == 0
    assert report["series"] == [] and "overall" in format_text(report)


def test_the_report_is_json_and_its_series_has_at_most_48_buckets():
    # Given a month of decisions, one every 6 hours, treated and held out alternating
    records = [att(f"d{i}", "treated" if i % 2 else "holdout", ts=T0 + i * 6 * 3_600_000, converted=i % 3 == 0,
                   revenue=float(i % 5)) for i in range(120)]
    # When the report is made
    report = lift_report(records, start_ms=T0, end_ms=T0 + 30 * 86_400_000)
    # Then it is plain JSON (no NaN either), buckets are days, and the cumulative line is the running sum
    json.loads(json.dumps(report, allow_nan=False))
    assert report["bucket"] == "1d" and 0 < len(report["series"]) <= 48
    running = 0.0
    for point in report["series"]:
        running += point["incremental_net_value"]
        assert point["cumulative"] == pytest.approx(running)
    assert report["from"].startswith("2023-11-14T22:13:20") and report["arms_note"].startswith("treated")


def test_the_text_table_shows_intervals():
    # Given 30/100 against 10/100; When printed
    text = format_text(lift_report(arm("t", 100, 30) + arm("c", 100, 10, "holdout"), horizon_ms=HORIZON))
    # Then the difference reads in percentage points with its interval, per action and overall
    rows = [line for line in text.splitlines() if line.startswith(("checkout-assist", "overall"))]
    assert len(rows) == 2 and all(row.split()[3:7] == ["30.0%", "10.0%", "+20.0", "[9.0,"] for row in rows)
    assert "converted anyway" in text


def test_the_chart_is_one_page_of_svg_and_escapes_what_comes_from_data(tmp_path):
    # Given an action id that is a script
    hostile = "<script>alert(1)</script>"
    records = arm("t", 10, 5, action=hostile) + arm("c", 10, 2, "holdout", action=hostile)
    # When the page is written (into a folder that does not exist yet)
    path = write_html(lift_report(records, horizon_ms=HORIZON), tmp_path / "reports" / "lift.html")
    page = path.read_text()
    # Then it has its charts inline, and the id is shown as text, never as markup
    assert page.count("<svg") == 2 and "<script" not in page and "&lt;script&gt;" in page
    assert "http" not in page  # self-contained: nothing loaded from anywhere


def test_the_reader_skips_tombstones_counts_bad_records_and_takes_the_horizon_from_the_whole_topic(monkeypatch):
    # Given a topic with a decision in range, one after the range, a tombstone and a record that does not decode
    from streams import clients

    good, after = att("in", ts=T0), att("after", ts=T0 + 5 * WINDOW)
    values = {b"in": good, b"after": after}

    class Codec:
        def decode(self, topic, name, value):
            assert (topic, name) == ("engage.attributions", "Attribution")
            if value not in values:
                raise ValueError("not Avro")
            return values[value]

    rows = [(0, 0, 0, b"k", b"in"), (1, 0, 0, b"k", None), (1, 1, 0, b"k", b"junk"), (2, 0, 0, b"k", b"after")]
    monkeypatch.setattr(clients, "codec", lambda settings: Codec())
    monkeypatch.setattr(clients, "read_all", lambda settings, topic, **kw: rows if topic == "engage.attributions" else [])

    class Settings:
        def topic(self, name):
            return name

    # When the range up to just after the first decision is read
    got = read_attributions(Settings(), T0, T0 + 1)
    # Then the in-range record is kept, the junk is counted, and the horizon is the later decision's time
    assert got.records == [good] and got.skipped == 1 and got.horizon_ms == T0 + 5 * WINDOW
    records, skipped, horizon = got
    assert lift_report(records, T0, T0 + 1, horizon)["decisions"]["treated"] == 1
    assert lift.COMPARISON == ("control", "holdout")


def test_a_customer_with_several_decisions_counts_once_and_their_agent_time_in_full():
    # Given one treated customer with two decisions of the same action a minute apart (two signals),
    # whose one purchase both windows saw, and each taking an agent 10 minutes; and one control customer
    rows = [att("d1", key="C1", converted=True, revenue=100.0, agent_seconds=600.0),
            att("d2", key="C1", converted=True, revenue=100.0, agent_seconds=600.0, ts=T0 + 60_000),
            att("c1", arm="holdout", key="C2")]
    # When the report compares them
    report = lift_report(rows, horizon_ms=HORIZON)
    [group] = report["actions"]
    # Then the customer is one treated unit with one purchase, but both decisions' agent time counts
    assert group["n_treated"] == 1 and group["decisions"] == 3
    assert group["incremental_conversions"] == pytest.approx(1.0)
    assert group["incremental_net_value"] == pytest.approx(100.0)
    assert group["agent_hours"] == pytest.approx(20 / 60)
    assert report["overall"]["n_treated"] == 1


def test_an_incomplete_attribution_is_left_out_of_the_comparison():
    # Given a treated decision the attribution stage dropped before its window ended, and a complete pair
    rows = [att("t1", converted=True, incomplete=True), att("t2", converted=False), att("c1", arm="holdout")]
    # Then only the complete ones are compared
    report = lift_report(rows, horizon_ms=HORIZON)
    assert report["overall"]["n_treated"] == 1 and report["overall"]["conversion_treated"] == 0.0
