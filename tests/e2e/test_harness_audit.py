"""harness/audit.py's reading of an audit event, without a control plane: which 403s count as denied."""
from __future__ import annotations

import pytest

from tests.e2e.harness.audit import parse

TERMINATING = 'events "a.1" is forbidden: unable to create new content in namespace x because it is being terminated'


@pytest.mark.parametrize("code, decision, message, denied", [
    (201, "allow", "", False),
    (403, "forbid", "", True),  # RBAC said no
    (403, "forbid", TERMINATING, True),  # the authorizer's word wins
    (403, "allow", "cannot set blockOwnerDeletion if an ownerReference refers to a resource you can't set "
                   "finalizers on", True),  # an admission plugin's own authorization check
    (403, "allow", TERMINATING, False),  # NamespaceLifecycle: the namespace is going away, not a permission
    (422, "allow", "", False),
])
def test_denied_is_a_refused_permission_not_a_terminating_namespace(code: int, decision: str, message: str,
                                                                    denied: bool) -> None:
    event = {"auditID": "1", "user": {"username": "system:serviceaccount:ns:sa"}, "verb": "create",
             "objectRef": {"resource": "events", "namespace": "x", "name": "a.1"},
             "responseStatus": {"code": code, "message": message},
             "annotations": {"authorization.k8s.io/decision": decision}}
    assert parse(event).denied is denied
