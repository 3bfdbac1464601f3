"""The command line: a bad argument or setting prints one line to stderr and exits 2, never a traceback.

Only commands that fail before touching Kafka are run here (argument parsing, settings, rule files).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from streams.cli import main
from streams.decision.actions import load_actions
from streams.settings import REPO_ROOT

BAD_ACTIONS = """\
policy:
  max_offers_per_day: 2
actions:
  - id: pigeon-post
    answers: [cancel_intent]
    value: 10
    uplift: {act: 0.2, baseline: 0.1}
    channels:
      - {channel: pigeon}
    message: 'Hi {name}'
    ttl: 5m
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Settings come from the environment: start every test from none of ours."""
    for name in list(os.environ):
        if name.startswith(("ENGAGE_", "KAFKA_", "SCHEMA_REGISTRY")):
            monkeypatch.delenv(name)


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    return lines[0]


@pytest.mark.parametrize("argv, expected", [
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: command"),
    (["simulate", "--rate", "-1"], "argument --rate: must be a finite number greater than zero: '-1'"),
    (["simulate", "--rate", "0"], "argument --rate: must be a finite number greater than zero: '0'"),
    (["simulate", "--rate", "nan"], "argument --rate: must be a finite number greater than zero: 'nan'"),
    (["simulate", "--rate", "inf"], "argument --rate: must be a finite number greater than zero: 'inf'"),
    (["simulate", "--duration", "-3"], "argument --duration: must be a finite number greater than zero: '-3'"),
    (["simulate", "--rate", "abc"], "argument --rate: not a number: 'abc'"),
    (["simulate", "--speed", "ten"], "argument --speed: not a number: 'ten'"),
    (["simulate", "--bogus"], "unrecognized arguments: --bogus"),
    (["adapter", "fax"], "argument kind: invalid choice: 'fax'"),
    (["broker", "up", "--port", "-5"], "argument --port: must be a finite number greater than zero: '-5'"),
])
def test_a_bad_argument_prints_one_line_and_exits_2(argv, expected, monkeypatch, capsys):
    # Given a command line with a mistake (and, should the parser ever let it through, no simulator
    # or broker to start: this test must never reach Kafka)
    import streams.tools.localkafka
    import streams.tools.play

    def must_not_run(*_, **__):
        raise AssertionError("the bad argument was accepted")

    monkeypatch.setattr(streams.tools.play, "play", must_not_run)
    monkeypatch.setattr(streams.tools.localkafka, "up", must_not_run)
    # When engage runs it
    code, out, err = run_main(argv, capsys)
    # Then it exits 2 with one line on stderr that says what is wrong and where to look
    line = one_line(err)
    assert code == 2
    assert line.startswith("engage: ") and expected in line and "--help" in line
    assert out == ""


@pytest.mark.parametrize("env, expected", [
    ({"ENGAGE_PARTITIONS": "zero"}, "engage: ENGAGE_PARTITIONS must be a whole number, got 'zero'"),
    ({"ENGAGE_PARTITIONS": "0"}, "engage: ENGAGE_PARTITIONS must be at least 1, got 0"),
    ({"ENGAGE_REPLICATION": "1.5"}, "engage: ENGAGE_REPLICATION must be a whole number, got '1.5'"),
    ({"ENGAGE_TOPIC_PREFIX": "prod/"}, "engage: ENGAGE_TOPIC_PREFIX may hold letters, digits, '.', '_' and '-' only, "
                                       "got 'prod/'"),
    ({"ENGAGE_LEARN": "sometimes"}, "engage: ENGAGE_LEARN must be on or off, got 'sometimes'"),
    ({"ENGAGE_INPUT_PREFIX": "live prod."}, "engage: ENGAGE_INPUT_PREFIX may hold letters, digits, '.', '_' and '-' "
                                            "only, got 'live prod.'"),
    ({"ENGAGE_VISITOR_TTL": "soon"}, "engage: ENGAGE_VISITOR_TTL must be a duration like 500ms, 5s, 10m, 2h or 30d, "
                                     "got 'soon'"),
    ({"ENGAGE_SESSION_TIMEOUT": "2s"}, "engage: ENGAGE_SESSION_TIMEOUT must be between 6s and 30m, got '2s'"),
])
def test_a_bad_setting_prints_one_line_and_exits_2(env, expected, monkeypatch, capsys):
    # Given a bad setting in the environment
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # When a command that needs no broker runs (settings are read before any command)
    code, out, err = run_main(["rules", "validate", str(REPO_ROOT / "rules" / "actions.yaml")], capsys)
    # Then it exits 2 with the setting's name, value and the rule it breaks
    assert code == 2
    assert one_line(err) == expected
    assert out == ""


@pytest.mark.parametrize("value", ["nan", "inf", "-5s"])
def test_a_duration_setting_that_is_not_a_finite_positive_number_is_refused(value, monkeypatch, capsys):
    # Given ENGAGE_VISITOR_TTL=nan (or inf, or negative); When any command runs
    monkeypatch.setenv("ENGAGE_VISITOR_TTL", value)
    code, out, err = run_main(["rules", "validate", str(REPO_ROOT / "rules" / "actions.yaml")], capsys)
    # Then one line and exit 2, as for every other bad setting, not a ValueError's traceback
    assert code == 2 and one_line(err).startswith("engage: ENGAGE_VISITOR_TTL ")
    assert f"got {value!r}" in err and out == ""


def test_rules_validate_names_file_line_rule_and_reason(tmp_path, monkeypatch, capsys):
    # Given an actions file whose action asks for a channel that does not exist, on line 9
    monkeypatch.chdir(tmp_path)  # errors name files relative to the working directory
    (tmp_path / "actions.yaml").write_text(BAD_ACTIONS)  # the 'action' prefix picks the actions loader
    # When it is validated
    code, out, err = run_main(["rules", "validate", "actions.yaml"], capsys)
    # Then one line says file:line, the rule and the reason
    line = one_line(err)
    assert line.startswith("invalid: actions.yaml:9: rule 'pigeon-post': unknown channel 'pigeon' (known: ")
    assert out == ""
    # A file that fails validation exits 1, like a linter; 2 is kept for bad arguments and settings.
    assert code == 1


def test_rules_validate_points_at_the_line_of_broken_yaml(tmp_path, monkeypatch, capsys):
    # Given an actions file with a YAML syntax error: the flow mapping on line 7 is not closed
    monkeypatch.chdir(tmp_path)
    (tmp_path / "actions.yaml").write_text(BAD_ACTIONS.replace("{act: 0.2, baseline: 0.1}", "{act: 0.2, baseline: 0.1"))
    # When it is validated
    code, _, err = run_main(["rules", "validate", "actions.yaml"], capsys)
    # Then the one line names the file and the line where the parser gave up (the next one), and says why
    assert one_line(err) == "invalid: actions.yaml:8: not valid YAML: expected ',' or '}', but got ':'"
    assert code == 1


def test_rules_validate_reports_a_file_it_cannot_read(tmp_path, capsys):
    # Given a path to no file; When it is validated; Then one line says it cannot be read
    path = tmp_path / "actions-missing.yaml"
    code, _, err = run_main(["rules", "validate", str(path)], capsys)
    line = one_line(err)
    assert line.startswith(f"invalid: {path}: cannot read:")
    assert code == 1


def test_rules_validate_accepts_the_shipped_actions(capsys):
    # Given the repository's actions file; When validated; Then it is ok, on stdout, and exits 0
    path = REPO_ROOT / "rules" / "actions.yaml"
    code, out, err = run_main(["rules", "validate", str(path)], capsys)
    assert code == 0 and err == ""
    assert out.startswith("ok: ") and f"({len(load_actions(path).actions)} rules, version " in out


def _engage(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ENGAGE_", "KAFKA_", "SCHEMA_REGISTRY"))}
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=REPO_ROOT, env={**environ, **env},
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("args, env, expected", [
    (["frobnicate"], {}, "invalid choice: 'frobnicate'"),
    (["simulate", "--rate", "-1"], {}, "argument --rate: must be a finite number greater than zero: '-1'"),
    (["rules", "validate", "rules/actions.yaml"], {"ENGAGE_PARTITIONS": "zero"},
     "ENGAGE_PARTITIONS must be a whole number, got 'zero'"),
    (["adapter", "desktop"], {}, "adapter desktop: set ENGAGE_DESKTOP_TOKEN"),
    (["rules", "validate", "rules/actions.yaml"], {"ENGAGE_STANDBY_REPLICAS": "-1"}, "ENGAGE_STANDBY_REPLICAS"),
])
def test_as_a_process_the_exit_code_is_2_and_stderr_one_line(args, env, expected):
    # Given the real entry point in a fresh interpreter; When run with a mistake
    proc = _engage(*args, **env)
    # Then the process exits 2 and stderr holds one line, no traceback
    assert proc.returncode == 2, proc.stderr
    assert expected in one_line(proc.stderr)
    assert proc.stdout == ""


@pytest.mark.parametrize("argv, expected", [
    (["rules", "backtest", "--from", "yesterday"], "not a time: 'yesterday'"),
    (["rules", "backtest", "--from", "1h", "--to", "2h"], "--to (2h) must be later than --from (1h)"),
    (["rules", "backtest"], "the following arguments are required: --from"),
    (["rules", "rollback", "--nope"], "unrecognized arguments: --nope"),
])
def test_bad_rules_arguments_print_one_line_before_any_kafka_is_needed(argv, expected, capsys):
    # Given no broker at all; When the rules command gets a time or argument it cannot use
    code, _, err = run_main(argv, capsys)
    # Then one line names the problem and the exit code is 2
    assert code == 2 and expected in one_line(err)


def test_an_unknown_scenario_is_refused_in_one_line_naming_the_shipped_ones(capsys):
    # Given no scenario of that name; When engage simulate is asked to play it
    code, out, err = run_main(["simulate", "--scenario", "no-such-world"], capsys)
    # Then one line says so and lists what is shipped, before anything reaches Kafka
    assert code == 2 and out == ""
    assert one_line(err) == ("engage: no-such-world: no such scenario file "
                             "(shipped: default, drift, scarce-agents, zero-uplift)")


@pytest.mark.parametrize("argv, expected", [
    (["report", "lift", "--from", "1h", "--to", "2h"], "--to (2h) must be later than --from (1h)"),
    (["report", "lift", "--from", "yesterday-ish"], "yesterday-ish"),
    (["bench-decisions", "--scenario", "no-such-world"], "no-such-world: no such scenario file"),
    (["simulate", "--rate", "5000"], "simulate: at most 1000 journeys per second"),
    (["bench-decisions", "--warm-up", "a while"], "not a duration up to 24h like 30m or 2h: 'a while'"),
    (["bench-decisions", "--warm-up", "3d"], "not a duration up to 24h"),
    (["rules", "history", "--name", "offers"], "invalid choice: 'offers'"),
])
def test_report_bench_and_simulate_refuse_bad_arguments_in_one_line_before_reaching_kafka(argv, expected, monkeypatch, capsys):
    # Given no broker may be touched
    import streams.admin
    import streams.tools.localkafka

    def must_not_run(*_, **__):
        raise AssertionError("the bad argument was accepted")

    monkeypatch.setattr(streams.admin, "wait_for_broker", must_not_run)
    monkeypatch.setattr(streams.tools.localkafka, "up", must_not_run)
    # When engage runs the command, then it exits 2 with one line that says what is wrong
    code, out, err = run_main(argv, capsys)
    assert code == 2 and out == ""
    assert one_line(err).startswith("engage: ") and expected in one_line(err)


@pytest.mark.parametrize("argv, expected", [
    (["forget", "C" * 300], "forget: an id is 1 to 256 characters without control characters"),
    (["forget", "C1\x1b[31m"], "forget: an id is 1 to 256 characters without control characters"),
    (["profiles", "load", "/no/such/export.csv"], "profiles load: /no/such/export.csv is not a file"),
    (["profiles", "load", str(REPO_ROOT / "README.md")], "cannot tell the format from the name"),
    (["merge", "C1", "C1"], "merge: a key cannot be merged into itself"),
    (["merge", "C1", "C" * 300], "merge: an id is 1 to 256 characters without control characters"),
    (["merge", "C1\x00", "C2"], "merge: an id is 1 to 256 characters without control characters"),
])
def test_forget_merge_and_profiles_load_refuse_bad_input_in_one_line_before_reaching_kafka(argv, expected, capsys):
    # Given no broker at all; When an id or a file cannot be used
    code, _, err = run_main(argv, capsys)
    # Then one line names the problem and the exit code is 2
    assert code == 2 and expected in one_line(err)


@pytest.mark.parametrize("env, argv, expected", [
    ({}, ["adapter", "webhook", "--url", "https://crm.example/hook"],
     "adapter webhook: a webhook needs a secret to sign with: set ENGAGE_WEBHOOK_SECRET"),
    ({"ENGAGE_WEBHOOK_SECRET": "s3cret-value"}, ["adapter", "webhook", "--url", "file:///etc/passwd"],
     "adapter webhook: the webhook URL must be http:// or https:// with a host, got 'file:///etc/passwd'"),
    ({"ENGAGE_WEBHOOK_SECRET": "s3cret-value"}, ["adapter", "webhook"],
     "adapter webhook: the webhook URL must be http:// or https:// with a host, got ''"),
    ({"ENGAGE_CONTEXT_TOKEN": "s3cret-value"}, ["adapter", "email"],
     "adapter email: the sender's address is needed: set ENGAGE_SMTP_FROM"),
    ({"ENGAGE_SMTP_FROM": "offers@shop.example"}, ["adapter", "email"],
     "adapter email: asking the context service needs its token: set ENGAGE_CONTEXT_TOKEN"),
    ({"ENGAGE_SMTP_FROM": "Offers <offers@shop.example>", "ENGAGE_CONTEXT_TOKEN": "s3cret-value"}, ["adapter", "email"],
     "adapter email: not a plain e-mail address (28 characters)"),
])
def test_an_adapter_missing_its_secret_url_or_sender_is_refused_in_one_line(env, argv, expected, monkeypatch, capsys):
    # Given no secret, a URL that is not http(s), or no usable sender (this test must never reach Kafka)
    for name in ("ENGAGE_WEBHOOK_SECRET", "ENGAGE_WEBHOOK_URL", "ENGAGE_WEBHOOK_CHANNELS", "ENGAGE_SMTP_FROM",
                 "ENGAGE_CONTEXT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # When the adapter is started, then it exits 2 with one line, and never prints the secret
    code, out, err = run_main(argv, capsys)
    assert code == 2 and one_line(err) == f"engage: {expected}" and "s3cret-value" not in err + out


@pytest.mark.parametrize("argv, expected", [
    (["replay", "--to", "now"], "engage: replay: --from is needed (an ISO time, or a time ago such as 2h)"),
    (["replay", "--from", "2026-12-02T10:00", "--to", "2026-12-02T09:00"],
     "engage: replay: --to (2026-12-02T09:00) must be later than --from (2026-12-02T10:00)"),
    (["replay", "--diff", "--from", "1h"], "engage: replay: --diff and --clean go with --shadow"),
    (["replay", "--shadow", "--from", "1h"],
     "engage: replay --shadow runs from now on: --from and --keep do not apply (diff with --shadow --diff)"),
])
def test_replay_misuse_is_refused_in_one_line_before_any_broker_is_asked(argv, expected, monkeypatch, capsys):
    # Given arguments that cannot make a replay (and a broker that must never be reached)
    import streams.admin

    monkeypatch.setattr(streams.admin, "wait_for_broker", lambda *_, **__: pytest.fail("the broker was asked"))
    # When engage runs them
    code, out, err = run_main(argv, capsys)
    # Then one line says what is wrong, exit 2
    assert code == 2 and one_line(err) == expected and out == ""


def test_chaos_refuses_a_broker_it_does_not_own(monkeypatch, capsys):
    # Given KAFKA_BOOTSTRAP_SERVERS naming a cluster (the suite stops and freezes its broker)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker1:9092")
    # When the fault suite is asked for
    code, out, err = run_main(["chaos", "--only", "broker_freeze"], capsys)
    # Then it is refused in one line, before it touches anything
    assert code == 2 and out == ""
    assert one_line(err) == "engage: chaos stops and freezes its broker, so it starts its own: unset KAFKA_BOOTSTRAP_SERVERS"
