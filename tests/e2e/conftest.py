"""Session fixtures for e2e tests: one real control plane per session, fresh namespaces per test, kvsched
schedulers on demand, and component log tails attached to every failing e2e test's report.

Without the binaries (tests/e2e/cluster/build.sh not run) the e2e tests skip with the reason locally; with
CI=true they fail instead, so nothing skips silently in CI.
"""
from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from .harness.cluster import ControlPlane, ExtenderConfig
from .harness.controller import scheduler_service_account_kubeconfig, service_account_kubeconfig
from .harness.kube import api_client, apply_crds, project_crd_paths, wait_for
from .harness.kvsched import ExtenderProcess
from .harness.processes import Component, ComponentFailed
from .harness.tools import Tools, cache_root, locate_tools, missing_tools

CONTROL_PLANE = pytest.StashKey[ControlPlane]()


def pytest_configure(config: pytest.Config) -> None:
    """Turn SIGTERM (a CI timeout, `kill`) into KeyboardInterrupt so fixtures tear the control plane down."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        def interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum}")
        signal.signal(signal.SIGTERM, interrupt)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def e2e_tools() -> Tools:
    """The cached binaries; skip (locally) or fail (CI=true) when any is missing."""
    tools = locate_tools()
    missing = missing_tools(tools)
    if missing:
        reason = (f"e2e control plane not built (run `make e2e-tools`); missing in {cache_root()}: "
                  + ", ".join(missing))
        if _in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return tools


@pytest.fixture(scope="session")
def control_plane(e2e_tools: Tools, tmp_path_factory: pytest.TempPathFactory,
                  request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    """etcd, kube-apiserver, kube-controller-manager, KWOK and the default kube-scheduler, ready to use."""
    plane = ControlPlane(workdir=tmp_path_factory.mktemp("control-plane"), tools=e2e_tools)
    request.config.stash[CONTROL_PLANE] = plane
    try:
        try:
            plane.start()
        except ComponentFailed as e:
            pytest.fail(f"e2e control plane did not start: {e}\n\n{plane.log_tails()}", pytrace=False)
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    """An admin ApiClient for the control plane."""
    assert control_plane.kubeconfig is not None
    api = api_client(control_plane.kubeconfig)
    yield api
    api.close()


@pytest.fixture(scope="session")
def core(kube: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(kube)


@pytest.fixture(scope="session")
def apps(kube: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(kube)


@pytest.fixture(scope="session")
def project_crds(kube: client.ApiClient) -> list[str]:
    """Apply the project's CRDs (every CustomResourceDefinition under deploy/ or helm/*/crds/) and wait until
    they are Established; returns their names (empty until the ModelServing CRD lands)."""
    return apply_crds(kube, project_crd_paths())


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace whose default ServiceAccount exists (pods need it); deleted after the test."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(lambda: core.read_namespaced_service_account("default", name), lambda sa: True, 60.0,
             f"ServiceAccount {name}/default")
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="session")
def scheduler_kubeconfig(control_plane: ControlPlane, kube: client.ApiClient) -> Path:
    """The credentials of the chart's kube-scheduler container: a ServiceAccount bound as deploy/kvsched.yaml binds
    the scheduler (system:kube-scheduler, system:volume-scheduler, extension-apiserver-authentication-reader)."""
    return scheduler_service_account_kubeconfig(kube, control_plane)


@pytest.fixture
def kvsched_scheduler(control_plane: ControlPlane, scheduler_kubeconfig: Path
                      ) -> Generator[Callable[..., Component], None, None]:
    """Factory: `kvsched_scheduler(url, **ExtenderConfig fields)` starts a kube-scheduler configured as the Helm
    chart configures its own (profile `kvsched`, the chart's extender entry; needs helm to render it), running as
    the chart's scheduler ServiceAccount (`scheduler_kubeconfig`; `kubeconfig=` overrides it), with the extender
    at `url`, and waits until it is ready. Every one started is stopped after the test."""
    if not control_plane.tools.helm.exists():
        reason = f"helm is not built ({control_plane.tools.helm}; run `make e2e-tools`): it renders the chart"
        if _in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    started: list[Component] = []

    def start(url: str, **extender: object) -> Component:
        scheduler = control_plane.start_scheduler(
            ExtenderConfig(url=url, **{"kubeconfig": scheduler_kubeconfig, **extender}),  # type: ignore[arg-type]
            name=f"kvsched-scheduler-{len(started) + 1}-{uuid.uuid4().hex[:4]}",
        )
        started.append(scheduler)
        return scheduler

    yield start
    for scheduler in started:
        scheduler.stop()


@pytest.fixture
def extender(control_plane: ControlPlane, kube: client.ApiClient, namespace: str,
             project_crds: list[str]) -> Iterator[ExtenderProcess]:
    """`kvsched extender`, ready, as a ServiceAccount of `namespace` bound to the RBAC the chart grants
    (deploy/kvsched.yaml); stopped after the test."""
    process = ExtenderProcess(control_plane, service_account_kubeconfig(kube, control_plane, namespace)).start()
    yield process
    process.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    """Attach the tail of every component's log to the report of a failing e2e test (setup, call or teardown)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and item.get_closest_marker("e2e"):
        plane = item.config.stash.get(CONTROL_PLANE, None)
        if plane is not None and plane.components:
            report.sections.append(("e2e component logs (tails)", plane.log_tails()))
