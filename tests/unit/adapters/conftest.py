"""What the adapters' tests share: servers on 127.0.0.1 closed after each test."""
from __future__ import annotations

import pytest


@pytest.fixture
def closing():
    """`closing(thing)` returns the thing and closes it after the test."""
    made = []

    def keep(thing):
        made.append(thing)
        return thing

    yield keep
    for thing in made:
        thing.close()
