"""kvsched.runtime.heap: what a freeze keeps out of the collector's passes, and what it still frees."""
from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator

import pytest

from kvsched.runtime.heap import freeze_survivors, keep_frozen


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


class Node:
    """A tracked object that can sit in a cycle and be watched by a weak reference."""

    def __init__(self) -> None:
        self.other: Node | None = None


def test_survivors_are_frozen_and_garbage_is_collected_first() -> None:
    store = [{"metadata": {"name": f"pod-{i}"}} for i in range(1000)]
    garbage = Node()
    garbage.other = Node()
    garbage.other.other = garbage  # a cycle: only the collector frees it
    dead = weakref.ref(garbage)
    del garbage
    freeze_survivors()
    assert dead() is None                      # collected before the freeze, not kept for good
    assert gc.get_freeze_count() >= len(store)
    walked = {id(o) for o in gc.get_objects()}  # what the collector's passes walk now
    assert not any(id(s) in walked for s in store)


def test_a_frozen_tree_is_still_freed_by_reference_counting() -> None:
    kept = Node()
    alive = weakref.ref(kept)
    freeze_survivors()
    del kept
    assert alive() is None


def test_keep_frozen_freezes_at_once_and_stops_when_told() -> None:
    stop = threading.Event()
    thread = threading.Thread(target=keep_frozen, args=(stop, 0.01), daemon=True)
    thread.start()
    stop.set()
    thread.join(5)
    assert not thread.is_alive() and gc.get_freeze_count() > 0
