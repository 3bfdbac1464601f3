"""Decides what a simulation scenario file means: who comes, what they really do with and without each action, and the agents.

A scenario (YAML, under bench/scenarios/; the format is described in bench/scenarios/README.md) is
the ground truth the simulator plays and the decision benchmark scores against. Invalid files are
refused with file, line and reason, like rule files.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from streams.decision.actions import CHANNELS
from streams.rules.loader import RuleError, check_keys, duration_ms, line_of, load_yaml, read_rule_file
from streams.settings import REPO_ROOT

SCENARIOS_DIR = REPO_ROOT / "bench" / "scenarios"
# What people come for. Each intent has a journey shape in the simulator (world.py) and a goal:
# what converting means for it, as the action rules' `goal` says it.
INTENTS = {"buy": "purchase", "compare": "purchase", "browse": "purchase", "cancel": "retain", "locked_out": "resolve",
           "help": "resolve"}
# Response types (seed 001): converts anyway; converts only if helped; never; an offer makes it worse.
TYPES = ("self_server", "persuadable", "lost_cause", "sleeping_dog")
HUMAN_CHANNELS = frozenset({"chat", "voice_callback", "click_to_call"})  # need a free agent of the action's skill
MAX_RATE = 1000.0          # journeys per simulated second
MAX_DURATION_MS = 7 * 86_400_000
MAX_AGENTS = 10_000
MAX_CUSTOMERS = 1_000_000
MAX_PEOPLE = 2_000_000     # expected arrivals (rate x duration): the benchmark holds every person in memory
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")  # it goes into topic names, ids and paths


@dataclass(frozen=True)
class TypeTruth:
    base: float      # P(convert) with no action
    treated: float   # P(convert) when the most effective action on its best channel reaches them


@dataclass(frozen=True)
class Intent:
    weight: float
    types: tuple[tuple[str, float], ...]   # response type -> weight


@dataclass(frozen=True)
class Skill:
    agents: int          # agents on shift, all the time
    handling_ms: int     # mean handling time of an accepted chat or call back


@dataclass(frozen=True)
class World:
    """The truth for one stretch of time: who comes and how they respond."""

    intents: tuple[tuple[str, Intent], ...]
    types: tuple[tuple[str, TypeTruth], ...]
    effects: tuple[tuple[str, tuple[tuple[str, float], ...]], ...]   # action -> channel -> share of the effect

    def truth(self, type_: str) -> TypeTruth:
        return dict(self.types)[type_]

    def effect(self, action_id: str | None, channel: str | None) -> float:
        return dict(dict(self.effects).get(action_id or "", ())).get(channel or "", 0.0)


@dataclass(frozen=True)
class Scenario:
    name: str
    seed: int
    duration_ms: int
    arrival_rate: float   # journeys per simulated second
    customers: int
    accept: float         # share of people invited by an agent who accept
    patience_ms: int      # how long someone who accepted waits for an agent before giving up
    agents: tuple[tuple[str, Skill], ...]
    world: World
    drift_at_ms: int | None = None     # from this much simulated time on, `drifted` is the truth
    drifted: World | None = None
    drift_share: float | None = None   # drift.at given as a share of the duration: kept if the duration changes
    file: str = ""

    def world_at(self, offset_ms: int) -> World:
        if self.drifted is not None and self.drift_at_ms is not None and offset_ms >= self.drift_at_ms:
            return self.drifted
        return self.world

    def skill(self, name: str | None) -> Skill | None:
        return dict(self.agents).get(name or "")

    def with_(self, **changes) -> "Scenario":
        changed = replace(self, **changes)
        if "duration_ms" in changes and self.drift_share is not None:
            changed = replace(changed, drift_at_ms=int(changed.duration_ms * self.drift_share))
        return changed


def _number(node, key, file, line, lo, hi, default=None, whole=False):
    value = node.get(key, default)
    ok = isinstance(value, int) if whole else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not lo <= value <= hi:
        raise RuleError(file, line, f"{key} must be a {'whole ' if whole else ''}number from {lo} to {hi}, got {value!r}")
    return value


def _probability(value, file, line, what) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise RuleError(file, line, f"{what} must be a probability from 0 to 1, got {value!r}")
    return float(value)


def _weights(node, allowed, file, line, what) -> tuple[tuple[str, float], ...]:
    if not isinstance(node, dict) or not node:
        raise RuleError(file, line, f"{what} must map names to weights")
    out = []
    for name, w in node.items():
        if name not in allowed:
            raise RuleError(file, line_of(node, line), f"{what}: unknown {name!r} (known: {', '.join(allowed)})")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            raise RuleError(file, line_of(node, line), f"{what}.{name} must be a weight >= 0, got {w!r}")
        out.append((name, float(w)))
    if sum(w for _, w in out) <= 0:
        raise RuleError(file, line_of(node, line), f"{what}: the weights add up to zero")
    return tuple(out)


def _intents(node, file, line, base=None) -> tuple[tuple[str, Intent], ...]:
    if not isinstance(node, dict) or not node:
        raise RuleError(file, line, "intents must map intents to {weight, types}")
    out = dict(base or ())
    for name, spec in node.items():
        iline = line_of(spec, line)
        if name not in INTENTS:
            raise RuleError(file, iline, f"unknown intent {name!r} (known: {', '.join(INTENTS)})")
        if not isinstance(spec, dict):
            raise RuleError(file, iline, f"intent {name} must be a mapping with weight and types")
        check_keys(spec, {"weight", "types"}, set() if base else {"weight", "types"}, file, None, f"intent {name}")
        earlier = out.get(name)
        if earlier is None and "types" not in spec:
            raise RuleError(file, iline, f"intent {name} is new here: it needs types")
        weight = _number(spec, "weight", file, iline, 0, 1e6, default=earlier.weight if earlier else None)
        types = _weights(spec["types"], TYPES, file, iline, f"intents.{name}.types") if "types" in spec else earlier.types
        out[name] = Intent(float(weight), types)
    if sum(i.weight for i in out.values()) <= 0:
        raise RuleError(file, line, "intents: the weights add up to zero")
    return tuple(out.items())


def _types(node, file, line, base=None) -> tuple[tuple[str, TypeTruth], ...]:
    if not isinstance(node, dict):
        raise RuleError(file, line, "types must map each response type to {base, treated}")
    out = dict(base or ())
    for name, spec in node.items():
        tline = line_of(spec, line)
        if name not in TYPES:
            raise RuleError(file, tline, f"unknown response type {name!r} (known: {', '.join(TYPES)})")
        if not isinstance(spec, dict):
            raise RuleError(file, tline, f"type {name} must be {{base: P, treated: P}}")
        check_keys(spec, {"base", "treated"}, {"base", "treated"}, file, None, f"type {name}")
        out[name] = TypeTruth(_probability(spec["base"], file, tline, f"types.{name}.base"),
                              _probability(spec["treated"], file, tline, f"types.{name}.treated"))
    missing = [t for t in TYPES if t not in out]
    if missing:
        raise RuleError(file, line, f"types needs every response type; missing {', '.join(missing)}")
    return tuple(out.items())


def _effects(node, file, line, base=None) -> tuple:
    if not isinstance(node, dict):
        raise RuleError(file, line, "effects must map action ids to {channel: share of the effect}")
    out = {k: dict(v) for k, v in (base or ())}
    for action, channels in node.items():
        eline = line_of(channels, line)
        if not isinstance(action, str) or not isinstance(channels, dict):
            raise RuleError(file, eline, f"effects.{action} must map channels to a share from 0 to 1")
        for channel, share in channels.items():
            if channel not in CHANNELS:
                raise RuleError(file, eline, f"effects.{action}: unknown channel {channel!r}")
            out.setdefault(action, {})[channel] = _probability(share, file, eline, f"effects.{action}.{channel}")
    return tuple((a, tuple(sorted(c.items()))) for a, c in sorted(out.items()))


def _agents(node, file, line) -> tuple[tuple[str, Skill], ...]:
    if not isinstance(node, dict):
        raise RuleError(file, line, "agents must map skills to {agents, handling}")
    out = []
    for skill, spec in node.items():
        sline = line_of(spec, line)
        if not isinstance(spec, dict):
            raise RuleError(file, sline, f"agents.{skill} must be {{agents: N, handling: 4m}}")
        check_keys(spec, {"agents", "handling"}, {"agents", "handling"}, file, None, f"agents.{skill}")
        out.append((str(skill), Skill(_number(spec, "agents", file, sline, 0, MAX_AGENTS, whole=True),
                                      duration_ms(spec["handling"], file, sline, None, f"agents.{skill}.handling"))))
    return tuple(out)


def compile_scenario(text: str, file: str) -> Scenario:
    doc = load_yaml(text, file)
    if not isinstance(doc, dict):
        raise RuleError(file, 1, "a scenario is a mapping (see bench/scenarios/README.md)")
    check_keys(doc, {"name", "description", "seed", "duration", "arrival_rate", "customers", "accept", "patience",
                     "intents", "types", "effects", "agents", "drift"},
               {"intents", "types", "effects", "agents"}, file, None, "the scenario")
    line = 1
    duration = duration_ms(doc.get("duration", "30m"), file, line, None, "duration")
    if duration > MAX_DURATION_MS:
        raise RuleError(file, line, "duration must be at most 7d")
    world = World(_intents(doc["intents"], file, line_of(doc["intents"], line)),
                  _types(doc["types"], file, line_of(doc["types"], line)),
                  _effects(doc["effects"], file, line_of(doc["effects"], line)))
    drift_at, drifted, drift_share = None, None, None
    if doc.get("drift") is not None:
        drift = doc["drift"]
        dline = line_of(drift, line)
        if not isinstance(drift, dict):
            raise RuleError(file, dline, "drift must be {at: 50% or a duration, and any of intents, types, effects}")
        check_keys(drift, {"at", "intents", "types", "effects"}, {"at"}, file, None, "drift")
        at = drift["at"]
        if isinstance(at, str) and at.strip().endswith("%"):
            try:
                share = float(at.strip()[:-1]) / 100
            except ValueError:
                raise RuleError(file, dline, f"drift.at must be like 50% or 15m, got {at!r}") from None
            if not 0 <= share <= 1:
                raise RuleError(file, dline, f"drift.at must be from 0% to 100%, got {at!r}")
            drift_at, drift_share = int(duration * share), share
        else:
            drift_at = duration_ms(at, file, dline, None, "drift.at")
        drifted = World(_intents(drift["intents"], file, dline, world.intents) if "intents" in drift else world.intents,
                        _types(drift["types"], file, dline, world.types) if "types" in drift else world.types,
                        _effects(drift["effects"], file, dline, world.effects) if "effects" in drift else world.effects)
    name = str(doc.get("name") or Path(file).stem)
    if not NAME.fullmatch(name):
        raise RuleError(file, line, f"name may hold up to 40 letters, digits, '-' and '_', got {name!r}")
    rate = float(_number(doc, "arrival_rate", file, line, 0.001, MAX_RATE, 1.0))
    if rate * duration / 1000 > MAX_PEOPLE:
        raise RuleError(file, line, f"arrival_rate x duration is {rate * duration / 1000:,.0f} people; at most {MAX_PEOPLE:,}")
    return Scenario(
        name=name, seed=_number(doc, "seed", file, line, -2**63, 2**63, 7, whole=True),
        duration_ms=duration, arrival_rate=rate,
        customers=_number(doc, "customers", file, line, 1, MAX_CUSTOMERS, 2000, whole=True),
        accept=_probability(doc.get("accept", 0.7), file, line, "accept"),
        patience_ms=duration_ms(doc.get("patience", "60s"), file, line, None, "patience"),
        agents=_agents(doc["agents"], file, line_of(doc["agents"], line)), world=world,
        drift_at_ms=drift_at, drifted=drifted, drift_share=drift_share, file=file)


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A path, or the name of a shipped scenario under bench/scenarios/ (default, scarce-agents, ...)."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = SCENARIOS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in SCENARIOS_DIR.glob("*.yaml")))
        raise RuleError(str(name_or_path), None, f"no such scenario file (shipped: {shipped})")
    text, file = read_rule_file(path)
    return compile_scenario(text, file)
