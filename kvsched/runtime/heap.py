"""Short pauses of Python's cyclic garbage collector in a process that holds big informer stores.

A full collection walks every tracked object while holding the GIL: with the stores of 5000 trimmed pods and
1000 ModelServings that is ~10^5 objects and 70-130 ms on this project's 2-core machine, during which the
extender answers nothing (a re-plan allocates enough to set off several). `freeze_survivors` collects once and
moves what survives into the collector's permanent generation (`gc.freeze`), which later passes skip, so a full
pass then walks only what was made since. Reference counting still frees a frozen object when it is dropped
(the informers' objects are trees of dicts, lists and strings, freed that way); what a freeze keeps for good is
a reference cycle that was alive at the freeze and died after it, so `keep_frozen` freezes again only every few
minutes, after collecting. Called by: kvsched.runtime.extender (once the caches are synced)."""

from __future__ import annotations

import gc
import threading

REFREEZE_INTERVAL_S = 300.0  # how often the objects made since the last freeze are collected and frozen


def freeze_survivors() -> None:
    """Collect the garbage there is now, then freeze every tracked object left. Pauses (GIL held) for the objects
    made since the last freeze, not for the frozen ones."""
    gc.collect()
    gc.freeze()


def keep_frozen(stop: threading.Event, interval_s: float = REFREEZE_INTERVAL_S) -> None:
    """`freeze_survivors` now and then every `interval_s` seconds until `stop` is set (run on a daemon thread)."""
    freeze_survivors()
    while not stop.wait(interval_s):
        freeze_survivors()
