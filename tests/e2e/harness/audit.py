"""The e2e apiserver's audit log: the policy `ControlPlane` starts kube-apiserver with, and a reader for it.

Every e2e session's kube-apiserver writes JSON lines (audit.k8s.io/v1 Events, Metadata level: who, verb,
objectRef, response code, the authorizer's decision; no bodies) to `<control-plane workdir>/audit.log`. Only
requests by ServiceAccounts are logged (kvsched and the kvsched kube-scheduler run as ones; the admin, the
controller-manager and KWOK do not), which keeps the file small, plus the fence requests of `fence`.
Called by: harness/cluster.py (policy, flags), tests/e2e/test_rbac_audit.py (reading).
"""
from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

FENCE_PREFIX = "/kvsched-e2e-audit-fence"

POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    # RequestReceived would log every request twice; a watch still logs ResponseStarted when it is established.
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "Metadata", "nonResourceURLs": [f"{FENCE_PREFIX}/*"]},
        {"level": "None"},
    ],
}


def apiserver_flags(workdir: Path) -> list[str]:
    """Write the policy into `workdir`; the kube-apiserver flags that log to `workdir`/audit.log with it."""
    policy = workdir / "audit-policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY, sort_keys=False))
    return [f"--audit-policy-file={policy}", f"--audit-log-path={audit_log_path(workdir)}",
            "--audit-log-format=json", "--audit-log-mode=blocking"]


def audit_log_path(workdir: Path) -> Path:
    return workdir / "audit.log"


@dataclass(frozen=True)
class Request:
    """One audited request: who, which verb on which (group, resource, subresource), and the answer."""

    audit_id: str
    username: str
    user_agent: str
    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int
    decision: str  # the authorizer's: "allow", "forbid", or "" (e.g. a non-resource request)
    uri: str
    message: str = ""  # the response status's message, when the server gave one

    @property
    def namespace_terminating(self) -> bool:
        """Refused by the NamespaceLifecycle admission plugin: nothing new is created in a namespace being deleted
        (an event about an object of another test whose namespace is going away). Not a permission."""
        return self.code == 403 and self.decision == "allow" and "is being terminated" in self.message

    @property
    def denied(self) -> bool:
        """Refused by the authorizer, or answered 403 (an admission plugin's authorization check), except the
        namespace lifecycle's refusal in a terminating namespace."""
        return self.decision == "forbid" or (self.code == 403 and not self.namespace_terminating)

    @property
    def rule(self) -> tuple[str, str, str, str]:
        """(apiGroup, resource, subresource, verb), as an RBAC rule would name it."""
        return (self.group, self.resource, self.subresource, self.verb)

    def __str__(self) -> str:
        sub = f"/{self.subresource}" if self.subresource else ""
        return (f"{self.username} ({self.user_agent.split(' ')[0]}): {self.verb} {self.group or 'core'}/"
                f"{self.resource}{sub} {self.namespace}/{self.name} -> {self.code} {self.decision}")


def parse(event: dict[str, Any]) -> Request:
    ref = event.get("objectRef") or {}
    annotations = event.get("annotations") or {}
    return Request(
        audit_id=str(event.get("auditID", "")), username=str((event.get("user") or {}).get("username", "")),
        user_agent=str(event.get("userAgent", "")), verb=str(event.get("verb", "")),
        group=str(ref.get("apiGroup", "")), resource=str(ref.get("resource", "")),
        subresource=str(ref.get("subresource", "")), namespace=str(ref.get("namespace", "")),
        name=str(ref.get("name", "")), code=int((event.get("responseStatus") or {}).get("code", 0)),
        decision=str(annotations.get("authorization.k8s.io/decision", "")), uri=str(event.get("requestURI", "")),
        message=str((event.get("responseStatus") or {}).get("message", "")))


def requests(path: Path) -> Iterator[Request]:
    """Every request of the log, once each (a watch's ResponseStarted and ResponseComplete are one request; the
    later stage wins). A line cut short by a concurrent write is skipped."""
    seen: dict[str, Request] = {}
    with path.open() as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            request = parse(event)
            seen[request.audit_id] = request
    yield from seen.values()


def fence(server: str, token: str, ca_cert: Path, log: Path, timeout_s: float = 30.0) -> None:
    """Make a request the policy logs and wait until it is in `log`. The blocking backend writes a request's
    event as its handler returns, so once the fence's event is there, those of requests answered before the
    fence was sent are there too. Raises TimeoutError."""
    marker = f"{FENCE_PREFIX}/{uuid.uuid4().hex}"
    start = log.stat().st_size if log.exists() else 0
    context = ssl.create_default_context(cafile=str(ca_cert))
    request = urllib.request.Request(f"{server}{marker}", headers={"Authorization": f"Bearer {token}"})
    try:
        urllib.request.urlopen(request, timeout=10, context=context).close()
    except urllib.error.HTTPError:
        pass  # 404: nothing serves it, and that is the point
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists():
            with log.open("rb") as f:
                f.seek(start)
                if marker.encode() in f.read():
                    return
        time.sleep(0.2)
    raise TimeoutError(f"the audit fence {marker} did not reach {log} in {timeout_s:.0f}s")
