"""Decides how a YAML rule file is read: every mapping keeps its line, so errors can name it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from streams.settings import parse_duration_ms

# A rule file is published whole as one record of engage.rules and compiled by every worker: it
# must fit a Kafka message (1 MB by default) with room to spare, and compile in bounded time.
MAX_FILE_BYTES = 256 * 1024


class RuleError(ValueError):
    """A rule file is invalid. str() reads 'file:line: rule 'id': reason'."""

    def __init__(self, file: str, line: int | None, reason: str, rule_id: str | None = None):
        self.file, self.line, self.reason, self.rule_id = file, line, reason, rule_id
        where = f"{file}:{line}" if line else file
        who = f" rule '{rule_id}':" if rule_id else ""
        super().__init__(f"{where}:{who} {reason}")


class LineDict(dict):
    """A YAML mapping that remembers the (1-based) line it started on."""

    line: int = 0
    key_lines: dict



class _Loader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        # An alias repeats a node without repeating its text: a few lines can stand for billions of
        # nodes ("billion laughs"). Rule files have no need of them.
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise RuleError(self.name, mark.line + 1, "YAML aliases (*name) are not allowed in rule files")
        return super().compose_node(parent, index)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LineDict:
    loader.flatten_mapping(node)
    out = LineDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise RuleError(loader.name, key_node.start_mark.line + 1, f"key {key!r} is given twice")
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str, file: str) -> Any:
    size = len(text.encode("utf-8", "replace"))
    if size > MAX_FILE_BYTES:
        raise RuleError(file, None, f"the file is {size:,} bytes; a rule file may have at most {MAX_FILE_BYTES:,}: "
                                    "split it or remove rules")
    loader = _Loader(text)
    loader.name = file
    try:
        return loader.get_single_data()
    except RuleError:
        raise
    except RecursionError:
        raise RuleError(file, None, "the YAML is nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        raise RuleError(file, line, f"not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    finally:
        loader.dispose()


def duration_ms(value: Any, file: str, line: int, rule_id: str | None, what: str) -> int:
    """'90s', '5m', '2h', '1d' or a number of seconds, as milliseconds."""
    if isinstance(value, bool):
        raise RuleError(file, line, f"{what} must be a duration like 5m, got {value!r}", rule_id)
    if isinstance(value, (int, float)):
        ms = int(value * 1000)
    else:
        ms = parse_duration_ms(str(value))
        if ms is None:
            raise RuleError(file, line, f"{what} must be a duration like 30s, 5m or 2h, got {value!r}", rule_id)
    if ms <= 0:
        raise RuleError(file, line, f"{what} must be longer than zero", rule_id)
    return ms


def line_of(node: Any, default: int) -> int:
    return getattr(node, "line", 0) or default


def line_of_key(node: Any, key: str, default: int) -> int:
    """The line a key of a mapping is written on, so an error points at the very line."""
    return getattr(node, "key_lines", {}).get(key) or line_of(node, default)


def check_keys(node: dict, allowed: set[str], required: set[str], file: str, rule_id: str | None, what: str) -> None:
    line = line_of(node, 0)
    unknown = sorted(set(node) - allowed)
    if unknown:
        raise RuleError(file, line, f"unknown key {unknown[0]!r} in {what} (allowed: {', '.join(sorted(allowed))})", rule_id)
    missing = sorted(required - set(node))
    if missing:
        raise RuleError(file, line, f"{what} needs {missing[0]!r}", rule_id)


SIGNAL_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def whole_number(value, lo: int, hi: int, file: str, line: int, rule_id: str | None, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise RuleError(file, line, f"{what} must be a whole number from {lo} to {hi}, got {value!r}", rule_id)
    return value


def signal_and_priority(node: dict, file: str, line: int, rule_id: str) -> tuple[str, int]:
    """The signal a rule raises (a lower_case_name) and its priority (0..100, default 50)."""
    signal = node["signal"]
    if not isinstance(signal, str) or not signal or not set(signal) <= SIGNAL_NAME_OK:
        raise RuleError(file, line_of_key(node, "signal", line), f"signal must be a lower_case_name, got {signal!r}", rule_id)
    priority = whole_number(node.get("priority", 50), 0, 100, file, line_of_key(node, "priority", line), rule_id,
                            "priority")
    return signal, priority


def compile_each(items: list, file: str, compile_rule, most: int) -> list:
    """Each rule of a file compiled by `compile_rule(node, file)` (which gives it .id and .line), at most
    `most` of them, each id once; RuleError naming the file and line otherwise."""
    if len(items) > most:
        raise RuleError(file, line_of(items[most], 1), f"the file has {len(items)} rules; at most {most}")
    rules, seen = [], {}
    for node in items:
        rule = compile_rule(node, file)
        if rule.id in seen:
            raise RuleError(file, rule.line, f"id is used twice (first at line {seen[rule.id]})", rule.id)
        seen[rule.id] = rule.line
        rules.append(rule)
    return rules


def read_rule_file(path: Path) -> tuple[str, str]:
    """The text of a rule file and the name errors should use for it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleError(str(path), None, f"cannot read: {exc}") from None
    return text, _display_name(path)


def _display_name(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)

