"""The anchors make bench runs beside the worker: each exists, does the stated job, and the engine never imports them."""
from __future__ import annotations

import importlib.util
import sys

from streams.settings import REPO_ROOT
from streams.tools import anchors


def _common():
    sys.path.insert(0, str(anchors.ANCHORS))
    try:
        spec = importlib.util.spec_from_file_location("anchor_common", anchors.ANCHORS / "common.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(anchors.ANCHORS))


def test_every_anchor_the_bench_names_is_there():
    for script, _, _ in anchors.KINDS.values():
        assert (anchors.ANCHORS / script).is_file(), script
    assert "quixstreams==" in anchors.REQUIREMENTS.read_text()


def test_the_anchors_job_keeps_a_visitors_state_and_sends_one_output_per_20_events():
    common = _common()
    state, emitted = None, []
    for i in range(45):
        state, emit = common.step(state, {"ts": 1000 + i, "type": "page_view" if i % 2 else "search"})
        emitted.append(emit)
    assert state == {"n": 45, "last": 1044, "pages": 22}
    assert [i + 1 for i, e in enumerate(emitted) if e] == [20, 40]


def test_the_engine_never_imports_the_anchors():
    for path in (REPO_ROOT / "streams").rglob("*.py"):
        text = path.read_text()
        assert "from common import" not in text and "bench.anchors" not in text, path
