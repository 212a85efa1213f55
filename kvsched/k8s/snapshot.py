"""One consistent-enough read of the cluster for `kvsched plan --kubeconfig`: list Nodes, Pods, Deployments and
ModelServings once and read them into a `World` (no watch, no write).
Called by: kvsched.cli.
"""

from __future__ import annotations

from dataclasses import replace

from kubernetes import client

from kvsched.api.objects import World
from kvsched.api.readers import read_deployment, read_model_serving, read_node, read_pod
from kvsched.k8s.watch import DEPLOYMENTS, MODELSERVINGS, NODES, PODS, ApiListWatch, WatchError


def read_world(api: client.ApiClient, namespace: str | None = None) -> World:
    """Every object the controller decides from (ModelServings, Deployments and Pods of `namespace` only, when
    given). Raises WatchError (HTTP error, e.g. RBAC or a missing CRD) or a connection error."""
    nodes, _ = ApiListWatch(api, NODES).list()
    pods, _ = ApiListWatch(api, replace(PODS, namespace=namespace)).list()
    deployments, _ = ApiListWatch(api, replace(DEPLOYMENTS, namespace=namespace)).list()
    try:
        servings, _ = ApiListWatch(api, replace(MODELSERVINGS, namespace=namespace)).list()
    except WatchError as e:
        if "404" not in str(e):
            raise
        servings = []  # the CRD is not installed: no ModelServings yet
    return World(tuple(read_node(n) for n in nodes), tuple(read_pod(p) for p in pods),
                 tuple(read_deployment(d) for d in deployments), tuple(read_model_serving(m) for m in servings))
