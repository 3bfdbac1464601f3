"""A shadow run's settings: which topics it reads from the live deployment and which are its own."""
from streams.replay.run import shadow_settings
from streams.settings import Settings


def test_a_shadow_reads_the_live_inputs_and_writes_everything_else_under_its_own_prefix():
    # Given a live deployment under 'acme.' and its shadow
    live = Settings.from_env({"ENGAGE_TOPIC_PREFIX": "acme."})
    shadow = shadow_settings(live)
    # Then the shadow reads what others write from the live topics
    for name in ("engage.events", "engage.profiles", "engage.identity", "engage.agent-availability"):
        assert shadow.topic(name) == live.topic(name) == f"acme.{name}"
    # and writes (and reads back) all it makes itself, rules and decisions included, under its own prefix
    for name in ("engage.signals", "engage.decisions", "engage.delivery", "engage.rules", "engage.outcomes"):
        assert shadow.topic(name) == f"acme.shadow.{name}"
    assert shadow.app_id != live.app_id and shadow.prefixes == ("acme.shadow.", "acme.")
