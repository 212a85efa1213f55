"""A running `kvsched serve` is cut off while its watches' resourceVersions are lost for real: every informer (the
controller's and the extender's) lists again, and a change made while kvsched was cut off is planned and bound,
with no placement lost (issue 7: "relist on 410 Gone, backoff on dropped connections"; issue 16: a view counts as
current only once a list is applied, so after a failure the informers list again rather than resume a watch from
a resourceVersion, and never depend on the old one being still there).

kvsched reaches the apiserver through a TCP forwarder (harness/netcut.py) that the test cuts: every connection is
closed and reconnects are refused, so its informers back off holding their last resourceVersion. Meanwhile the test
scales a Deployment (2 -> 3 replicas) and makes those resourceVersions gone in one of two ways, then restores the
network:

- `etcd-compaction`: on a control plane of its own whose kube-apiserver runs with `--watch-cache=false`, etcd is
  compacted at its current revision (v3 HTTP gateway). With the watch cache on (the default) a compaction alone
  gives no 410: the apiserver serves a recent resourceVersion from its cache of events, whatever etcd has dropped.
  Without it, the watch goes to etcd, which refuses a compacted revision: the apiserver sends an ERROR event 410
  ("The resourceVersion for the provided watch is too old.").
- `apiserver-restart`: the session's control plane (watch cache on, as in production) restarts kube-apiserver.
  Its new watch cache starts at etcd's revision when it starts, after the scale, so a watch from an older
  resourceVersion gets an ERROR event 410 ("too old resource version").

Either way a watch from a resourceVersion kvsched held would get 410 Gone; the informers do not try one: after the
cut each lists again (`kvsched_watch_relists_total{resource}`, and "listing again" in the log).

The cut lasts longer than the e2e's usual renew deadline (4 s), past which a leader stops writing and exits to be
restarted (issue 16's fencing); a restarted process would list afresh and prove nothing about its informers. So
here kvsched runs with a lease that outlasts the cut (CUT_LEASE), and the test asserts it was never restarted.

Under `kvsched serve` the controller and the extender share one informer per collection (kvsched.runtime.feeds), but
the Deployments' informer is the controller's alone and each informer reconnects on its own backoff schedule. When the
controller re-plans first (here: the third llama replica makes it restart qwen with a smaller memory share), the
extender must not turn the replacement down from its stale view ("GPU 1 planned for qwen is held by pod ..."):
kube-scheduler would retry that pod only on the next pod or node change or after its 5-minute unschedulable
timeout (3 of 8 runs of `apiserver-restart` took 5.5 minutes so). While one of its watches reconnects, the
extender answers managed pods with an Error instead, which kube-scheduler retries with backoff; the test asserts
that every replica is bound within 90 s of the network coming back.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from .harness.cluster import ControlPlane, ExtenderConfig
from .harness.controller import scheduler_service_account_kubeconfig, service_account_kubeconfig, unique
from .harness.kube import api_client, apply_crds, delete_nodes, project_crd_paths, wait_for
from .harness.netcut import TcpForwarder, compact, etcd_revision
from .harness.processes import Component, ComponentFailed
from .harness.tools import Tools
from .test_controller import MODELS, Pool, create_models, serving, slot_set, wait_settled

pytestmark = pytest.mark.e2e

# Each informer of `kvsched serve` that must list again: one per collection (kvsched.runtime.feeds: the
# controller's and the extender's pods, nodes and ModelServings share one; the Deployments and PodDisruptionBudgets
# are the controller's).
RELISTS = {"nodes": 1, "pods": 1, "deployments.apps": 1, "modelservings.kvsched.io": 1,
           "poddisruptionbudgets.policy": 1}
# (lease duration, renew deadline) in seconds: longer than the cut (informers backing off twice, an apiserver
# restart), so the leader renews once the network is back instead of exiting.
CUT_LEASE = (180, 150)


@pytest.fixture(scope="module")
def plane_without_watch_cache(e2e_tools: Tools, tmp_path_factory: pytest.TempPathFactory
                              ) -> Iterator[ControlPlane]:
    """A control plane of this module whose kube-apiserver serves watches from etcd (`--watch-cache=false`)."""
    plane = ControlPlane(workdir=tmp_path_factory.mktemp("control-plane-no-watch-cache"), tools=e2e_tools,
                         apiserver_args=["--watch-cache=false"])
    try:
        try:
            plane.start()
        except ComponentFailed as e:
            pytest.fail(f"control plane without watch cache did not start: {e}\n\n{plane.log_tails()}",
                        pytrace=False)
        yield plane
    finally:
        plane.stop()


def forwarded_kubeconfig(kubeconfig: Path, server: str) -> Path:
    """A copy of `kubeconfig` whose cluster is at `server` (the forwarder), next to it."""
    config = yaml.safe_load(kubeconfig.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = server
    path = kubeconfig.with_name(f"{kubeconfig.name}-forwarded")
    path.write_text(yaml.safe_dump(config))
    return path


def counter(metrics: dict[str, float], name: str, resource: str) -> float:
    return metrics.get(f'{name}{{resource="{resource}"}}', 0.0)


def compact_etcd(plane: ControlPlane) -> None:
    revision = etcd_revision(plane.etcd_url)
    compact(plane.etcd_url, revision)
    print(f"etcd compacted at revision {revision}")


def restart_apiserver(plane: ControlPlane) -> None:
    started = time.monotonic()
    plane.restart_apiserver()
    print(f"kube-apiserver restarted in {time.monotonic() - started:.1f}s")


def new_namespace(kube: client.ApiClient) -> str:
    core = client.CoreV1Api(kube)
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(lambda: core.read_namespaced_service_account("default", name), lambda sa: True, 60.0,
             f"ServiceAccount {name}/default")
    return name


@pytest.mark.parametrize("way", ["etcd-compaction", "apiserver-restart"])
def test_informers_list_again_and_see_the_change_made_while_cut_off(
        way: str, request: pytest.FixtureRequest) -> None:
    if way == "etcd-compaction":
        plane: ControlPlane = request.getfixturevalue("plane_without_watch_cache")
        make_gone: Callable[[ControlPlane], None] = compact_etcd
    else:
        plane = request.getfixturevalue("control_plane")
        make_gone = restart_apiserver
    assert plane.kubeconfig is not None and plane.tools.helm.exists(), "helm renders the scheduler's config"
    kube = api_client(plane.kubeconfig)
    namespace = new_namespace(kube)
    assert "modelservings.kvsched.io" in apply_crds(kube, project_crd_paths())
    forwarder = TcpForwarder("127.0.0.1", int(plane.server.rsplit(":", 1)[1])).start()
    schedulers: list[Component] = []
    scheduler_kubeconfig = scheduler_service_account_kubeconfig(kube, plane)

    def start_scheduler(url: str) -> Component:
        scheduler = plane.start_scheduler(ExtenderConfig(url=url, kubeconfig=scheduler_kubeconfig),
                                          name=unique("kvsched-scheduler"))
        schedulers.append(scheduler)
        return scheduler

    kubeconfig = forwarded_kubeconfig(service_account_kubeconfig(kube, plane, namespace), forwarder.url)
    pool = Pool(plane, kube, namespace, unique("pool"), kubeconfig, start_scheduler)
    try:
        pool.add_nodes({"big": (2, "80Gi"), "small": (2, "40Gi")})
        proc = pool.start(lease_s=CUT_LEASE[0], renew_deadline_s=CUT_LEASE[1])
        create_models(pool)
        before = wait_settled(pool, list(MODELS))
        counts = proc.metrics()
        assert all(counter(counts, "kvsched_watch_relists_total", r) == 0 for r in RELISTS), counts

        # Cut kvsched off; scale llama while it cannot see it; make its resourceVersions gone; reconnect.
        cut_at = time.monotonic()
        dropped = forwarder.cut()
        # Each informer fails at least twice: the watch that broke, then a reconnect refused after a backoff.
        wait_for(proc.metrics, lambda m: all(counter(m, "kvsched_watch_errors_total", r) >= 2 * n
                                             for r, n in RELISTS.items()),
                 30, "every informer failing to watch and to reconnect (backing off)")
        client.AppsV1Api(kube).patch_namespaced_deployment_scale("llama", namespace, {"spec": {"replicas": 3}})
        # One more write, so the newest revision is past the one after every resourceVersion kvsched holds.
        client.CoreV1Api(kube).create_namespaced_config_map(namespace, {"metadata": {"name": "after-the-scale"}})
        make_gone(plane)
        forwarder.restore()
        print(f"kvsched cut off for {time.monotonic() - cut_at:.1f}s ({dropped} connections closed)")

        restored_at = time.monotonic()
        relisted = wait_for(proc.metrics, lambda m: all(
            counter(m, "kvsched_watch_relists_total", r) >= n for r, n in RELISTS.items()), 90,
            f"relists after the cut of {RELISTS}")
        print(f"every informer relisted {time.monotonic() - restored_at:.1f}s after the network came back: "
              + ", ".join(f"{r}={counter(relisted, 'kvsched_watch_relists_total', r):.0f}" for r in RELISTS))
        log = proc.component.log_path.read_text()
        again = [line for line in log.splitlines() if "; listing again in " in line]
        informers = {line.split(" kvsched.k8s.watch: ", 1)[1].split(": ", 1)[0] for line in again}
        # One informer per collection: the controller's namespace shares the extender's all-namespace watches.
        assert informers == {"nodes", "pods", f"deployments.apps in {namespace}", "modelservings.kvsched.io",
                             f"poddisruptionbudgets.policy in {namespace}"}, \
            again[-12:]

        # The scale made while kvsched was cut off is planned at once...
        wait_for(lambda: serving(pool, "llama"), lambda ms: (ms.get("status") or {}).get("placedReplicas") == 3,
                 30, "llama's third replica planned")
        print(f"llama's third replica planned {time.monotonic() - restored_at:.1f}s after the network came back")
        # ...and bound, without waiting for kube-scheduler's 5-minute unschedulable timeout (docs/extender.md).
        after = wait_settled(pool, list(MODELS), timeout_s=90)
        print(f"every replica bound and Ready {time.monotonic() - restored_at:.1f}s after the network came back")
        assert proc.component.running and proc.restarts == 0, proc.exit_codes  # the same process relisted
        assert after["llama"]["status"]["placedReplicas"] == 3
        assert slot_set(before["llama"]) < slot_set(after["llama"])
        for name in ("qwen", "mixtral"):
            assert slot_set(after[name]) == slot_set(before[name])
        assert serving(pool, "llama")["status"]["replicas"] == 3
    except BaseException:
        print(plane.log_tails())
        raise
    finally:
        forwarder.stop()
        for p in pool.processes:
            p.stop()
        for s in schedulers:
            s.stop()
        delete_nodes(client.CoreV1Api(kube), pool.nodes)
        client.CoreV1Api(kube).delete_namespace(namespace)
        kube.close()
