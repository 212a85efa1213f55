"""Which informers a process runs: each part names its feeds (a collection and the handler its events go to), and
`kvsched serve` runs one informer for each collection the controller and the extender both watch.

Two informers of one collection hold every object twice and list it twice on each relist (pods: the biggest
collection by far). A shared informer calls the controller's handler, then the extender's, each guarded so that
one raising cannot starve the other (both are meant never to raise). Scopes: the extender watches pods and
ModelServings of all namespaces (GPU holders are anywhere); the controller may watch one namespace
(`--namespace`). Then the shared informer watches all namespaces and the controller's handler hears only its
namespace's objects, which is what its own namespaced watch would deliver (a namespace never changes, so no
object enters or leaves the scope). Feeds whose label or field selectors differ are not shared (an object whose
labels change would leave one selector's scope without a DELETED), nor are feeds with different trims.
Called by: kvsched.runtime.controller (build_controller), kvsched.runtime.extender.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from kvsched.k8s.watch import Handler, Informer, Obj, Resource, WatchCounters, informer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Feed:
    """A part's wish: the events of `resource` go to `handler` (on the informer's thread)."""

    resource: Resource
    handler: Handler


def fan_out(name: str, handlers: Sequence[Handler]) -> Handler:
    """One handler calling each of `handlers` in order; an exception from one is logged and the next still runs."""

    def on_event(event_type: str, obj: Obj) -> None:
        for handler in handlers:
            try:
                handler(event_type, obj)
            except Exception:
                log.exception("%s: a handler failed on %s", name, event_type)

    return on_event


def in_namespace(namespace: str, handler: Handler) -> Handler:
    """`handler`, called only for objects of `namespace`."""

    def on_event(event_type: str, obj: Obj) -> None:
        meta = obj.get("metadata")
        if isinstance(meta, dict) and meta.get("namespace") == namespace:
            handler(event_type, obj)

    return on_event


def _wider(a: Resource, b: Resource) -> Resource | None:
    """The one collection that serves both `a` and `b` (the same one, or the all-namespaces one of which the other
    is a namespace); None when they cannot share (other collection, selectors or trim; two namespaces)."""
    if replace(a, namespace=None) != replace(b, namespace=None):
        return None
    if a.namespace == b.namespace or b.namespace is None:
        return b
    return a if a.namespace is None else None


def _narrowed(feed: Feed, wide: Resource) -> Handler:
    return feed.handler if feed.resource.namespace == wide.namespace or feed.resource.namespace is None \
        else in_namespace(feed.resource.namespace, feed.handler)


def share_informers(api: Any, first: Sequence[Feed], second: Sequence[Feed],
                    counters: WatchCounters | None = None) -> tuple[list[Informer], list[Informer]]:
    """Informers (not started) for two parts' feeds: one per feed of `first` (shared with the first feed of
    `second` that `_wider` matches: its handler fans out to `first`'s, then `second`'s) and one per feed of
    `second` left over. Returns the informers feeding `first` and those feeding `second`, in feed order (a shared
    informer is in both lists)."""
    mine: list[Informer] = []
    theirs: dict[int, Informer] = {}  # by index in `second`
    for feed in first:
        match = next(((i, g, wide) for i, g in enumerate(second) if i not in theirs
                      for wide in [_wider(feed.resource, g.resource)] if wide is not None), None)
        if match is None:
            mine.append(informer(api, feed.resource, feed.handler, counters=counters))
            continue
        index, other, wide = match
        shared = informer(api, wide, fan_out(wide.name, [_narrowed(feed, wide), _narrowed(other, wide)]),
                          counters=counters)
        mine.append(shared)
        theirs[index] = shared
    for index, feed in enumerate(second):
        if index not in theirs:
            theirs[index] = informer(api, feed.resource, feed.handler, counters=counters)
    return mine, [theirs[i] for i in range(len(second))]
