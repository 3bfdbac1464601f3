"""The Grafana dashboard under deploy/ only asks for metrics the engine makes, and lays its panels out without overlap."""
from __future__ import annotations

import json
import re

from streams import metrics
from streams.settings import REPO_ROOT

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "engage.json"


def test_every_query_names_metrics_the_engine_makes_with_their_labels():
    documented = {name: set(labels.split(",")) for name, labels in re.findall(r"^  (engage_\w+)\{([\w,]+)\}",
                                                                                 metrics.__doc__, re.M)}
    panels = [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]
    assert panels
    for panel in panels:
        for target in panel["targets"]:
            names = re.findall(r"\b(engage_\w+?)(?:_bucket|_count|_sum)?\b(?=[{\[ )]|$)", target["expr"])
            assert names, target["expr"]
            for name in names:
                assert name in documented, f"{panel['title']}: {name} is not a metric of the engine"
                for label in re.findall(r"(\w+)\s*!?=~?\"", target["expr"]):
                    assert label in documented[name], f"{panel['title']}: {name} has no label {label}"


def test_the_panels_do_not_overlap():
    taken = set()
    for p in json.loads(DASHBOARD.read_text())["panels"]:
        g = p["gridPos"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & taken, p["title"]
        taken |= cells
