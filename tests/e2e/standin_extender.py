"""A test-local scheduler extender that stands in for kvsched's until the extender issue replaces it.

Used only by test_extender_contract.py. It speaks kube-scheduler's extender wire format (PascalCase
ExtenderArgs / ExtenderFilterResult / HostPriorityList / ExtenderBindingArgs), keeps the nodes it is told to,
prefers one of them, and binds through the API like the real extender will, recording every request it gets.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI
from kubernetes import client

from .harness.kube import bind_pod
from .harness.processes import free_port

BOUND_BY_ANNOTATION = "kvsched.io/e2e-bound-by"


@dataclass
class StandIn:
    """What the stand-in keeps and prefers, and the (verb, request body) pairs it received, in order."""

    keep: set[str]
    prefer: str
    reject_reason: str = "not a node this test offers"
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    url: str = ""

    def bodies(self, verb: str) -> list[dict[str, Any]]:
        return [body for v, body in self.calls if v == verb]


def create_app(standin: StandIn, core: client.CoreV1Api) -> FastAPI:
    """The FastAPI app serving POST /filter, /prioritize and /bind for `standin`."""
    app = FastAPI()

    @app.post("/filter")
    def filter_(args: dict[str, Any]) -> dict[str, Any]:
        standin.calls.append(("filter", args))
        names = args.get("NodeNames") or [n["metadata"]["name"] for n in (args.get("Nodes") or {}).get("items", [])]
        return {
            "NodeNames": [n for n in names if n in standin.keep],
            "FailedNodes": {n: standin.reject_reason for n in names if n not in standin.keep},
            "FailedAndUnresolvableNodes": {},
            "Error": "",
        }

    @app.post("/prioritize")
    def prioritize(args: dict[str, Any]) -> list[dict[str, Any]]:
        standin.calls.append(("prioritize", args))
        return [{"Host": n, "Score": 10 if n == standin.prefer else 0} for n in args.get("NodeNames") or []]

    @app.post("/bind")
    def bind(args: dict[str, Any]) -> dict[str, Any]:
        standin.calls.append(("bind", args))
        try:
            core.patch_namespaced_pod(args["PodName"], args["PodNamespace"],
                                      {"metadata": {"annotations": {BOUND_BY_ANNOTATION: "stand-in"}}})
            bind_pod(core, args["PodNamespace"], args["PodName"], args.get("PodUID"), args["Node"])
        except Exception as e:  # the scheduler reports Error to the pod's events and retries
            return {"Error": f"{type(e).__name__}: {e}"}
        return {"Error": ""}

    return app


@contextmanager
def serve(standin: StandIn, core: client.CoreV1Api, timeout_s: float = 10.0) -> Iterator[StandIn]:
    """Run the stand-in with uvicorn in a daemon thread on a free port of 127.0.0.1; sets `standin.url`."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(standin, core), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, name="standin-extender", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"stand-in extender did not start on port {port}")
        time.sleep(0.05)
    standin.url = f"http://127.0.0.1:{port}"
    try:
        yield standin
    finally:
        server.should_exit = True
        thread.join(timeout_s)
