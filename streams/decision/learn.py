"""Decides what the uplift model learns from attributions: one label per decision once its window has closed, added to its partition's evidence.

The learner reads engage.attributions (keyed by decision id). The latest revision of each
decision that had an action (taken, held out, or not taken) waits in `decision_to_label` until its
attribution window has closed; then its label (converted or not, by the action's goal) is added
to the evidence of the learner's partition and the decision is forgotten. Treated decisions teach
P(convert | act); held-out, hold-out and not-acted-on ones teach P(convert | no action): the
engine chose them on the same features the model sees, so the comparison holds given x.

A partition's clock is the latest decision time it has seen; labels are taken in steps of
STEP_MS of that clock, in (window end, decision id) order, so the same attributions in the same
order give the same evidence, the same model versions and the same draws. A label waits for its
window end plus LATENESS_MS (conversions still on their way through attribution).

Staleness: an outcome reaches every worker's model at most window + LATENESS_MS + STEP_MS of
event time after its decision, plus the time to the next decision on its partition (the clock
moves with traffic) and a second for the workers' model followers to read engage.models.
"""
from __future__ import annotations

from streams.decision.uplift import add_label, vector

STEP_MS = 30_000
LATENESS_MS = 60_000
# attribution arms that teach the model: the engine acted (treated), or it did not (untreated)
TREATED_ARMS = frozenset({"treated"})
UNTREATED_ARMS = frozenset({"control", "holdout", "none"})


def label_of(attribution: dict, partition: int) -> dict | None:
    """What the decision will teach once its window closes; None when it teaches nothing."""
    arm = attribution["arm"]
    if (attribution.get("incomplete") or not attribution.get("action_id") or not attribution.get("features")
            or arm not in TREATED_ARMS | UNTREATED_ARMS):
        return None
    return {"a": attribution["action_id"], "ch": attribution.get("channel"), "t": arm in TREATED_ARMS,
            "f": attribution["features"], "y": bool(attribution["converted"]), "end": attribution["window_end_ts"],
            "p": partition}


def new_partition_state() -> dict:
    """A learner partition: its clock (the last step taken), labels learned, evidence {action: {arm: stats}}."""
    return {"clock": 0, "labels": 0, "ev": {}}


def step_to(state: dict, decision_ts: int) -> bool:
    """Move the partition's clock to `decision_ts` if that is a whole step on; True when it moved."""
    if decision_ts - state["clock"] < STEP_MS:
        return False
    state["clock"] = decision_ts
    return True


def due(state: dict, pending, partition: int) -> list[tuple[str, dict]]:
    """The (decision id, label) pairs of `partition` among `pending` whose window closed before the clock, in order."""
    horizon = state["clock"] - LATENESS_MS
    ready = [(did, label) for did, label in pending if label["p"] == partition and label["end"] <= horizon]
    ready.sort(key=lambda item: (item[1]["end"], item[0]))
    return ready


def learn(state: dict, labels: list[tuple[str, dict]]) -> None:
    for _did, label in labels:
        add_label(state["ev"], label["a"], label["t"], vector(label["f"], label["ch"]), label["y"])
    state["labels"] += len(labels)
