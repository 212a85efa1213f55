"""Random ModelServing specs through the real apiserver (issue 16, "Fuzzing"), with `kvsched serve` planning.

Control models run and settle first. Then hypothesis sends generated specs (tests/modelserving_specs.py: values
across and beyond the CRD's bounds, quantity strings in every form, ill-typed, missing and unknown fields) to the
apiserver, one ModelServing each, in the namespace the controller watches; a spec whose workloadRef is its own gets
a Deployment (0 pods: the plan is what is checked) once it is accepted. Each spec is either refused (4xx, the
message naming a field the example changed) or accepted; after all are sent, one wait: every accepted model is
reported Placed, Unplaced or Invalid (its status for its generation) within REPORT_S, and `kvsched_models{state}`
counts every model. No control model moves (same slots, its pods back on the same GPUs, no eviction to another
GPU; a fuzzed model planned on a control model's GPU restarts it in place with a smaller memory share, a Resize,
as designed); once those restarts are done, a new well-formed model is Placed within 10 s. kvsched is alive at
the end and its log has no Traceback.

The controller watches one namespace (`--namespace` takes one), so the final model shares it with the fuzzed ones
rather than living in another: the harder case, as in test_poison.py.

KVSCHED_FUZZ_EXAMPLES sets the number of specs (default 150); the examples are derandomized (the same specs on
every run) so that CI is repeatable.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kvsched.api.names import API_VERSION, GPU_ANNOTATION, GROUP, KIND, MODEL_LABEL, PLURAL, VERSION
from tests.modelserving_specs import FuzzSpec, fuzz_specs

from .harness.example import migrations
from .harness.kube import deployment_manifest, wait_for
from .test_controller import (  # noqa: F401 (`pool` is the fixture)
    Pool,
    annotated,
    condition,
    create_models,
    pool,
    serving,
    slot_set,
    wait_settled,
)

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("KVSCHED_FUZZ_EXAMPLES", "150"))
CONTROL = {"llama": ("16Gi", 4.0, "1", 2), "qwen": ("30Gi", 2.0, "1", 1)}
REPORT_S = 120.0  # every accepted model has a status for its generation within this, after the last is sent
PLACED_S = 10.0  # a new good model is Placed within this (issue 16)
SETTLE_S = 180.0  # control pods restarted in place (Resize) are bound and Ready again within this
MODEL_FIELDS = ("modelSize", "requestRate", "sloSeconds")
REQUIRED_RULE = "modelSize, requestRate and sloSeconds are required"  # the CRD's CEL rule, naming them bare


@dataclass(frozen=True)
class Sent:
    """One example: the ModelServing's name, the spec, and the apiserver's answer (status 0: created)."""

    name: str
    fuzz: FuzzSpec
    status: int
    message: str


def names_a_changed_field(message: str, fuzz: FuzzSpec) -> bool:
    """Whether a refusal's message names a field the example changed: `spec.<field>`, `spec` for a replaced
    spec, a removed model field by its bare name in the CEL rule requiring them, or spec.requestRate for a
    changed SLO (the load rule, rate / SLO, reports at requestRate)."""
    spec = fuzz.spec if isinstance(fuzz.spec, dict) else {}
    for field in fuzz.touched:
        if f"spec.{field}" in message or (field == "spec" and "spec" in message):
            return True
        if field in MODEL_FIELDS and spec.get(field) is None and REQUIRED_RULE in message:  # null is absent
            return True
        if field == "sloSeconds" and "spec.requestRate" in message:
            return True
    return False


def send_specs(pool: Pool) -> list[Sent]:
    """Create one ModelServing per generated spec (and its Deployment, 0 replicas, when its workload is its own
    and it was accepted); a refusal must be a 4xx naming a changed field. Returns every example sent."""
    custom, apps = client.CustomObjectsApi(pool.kube), client.AppsV1Api(pool.kube)
    sent: list[Sent] = []

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(fuzz=fuzz_specs())
    def send(fuzz: FuzzSpec) -> None:
        name = f"f{len(sent)}"
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, pool.namespace, PLURAL,
                                                   fuzz.body(name, API_VERSION, KIND))
        except ApiException as e:
            message = _message(e)
            sent.append(Sent(name, fuzz, e.status, message))
            assert 400 <= e.status < 500, f"{e.status} for {fuzz}: {message}"
            assert names_a_changed_field(message, fuzz), f"refusal of {fuzz} names none of " \
                f"{sorted(fuzz.touched)}: {message}"
            return
        sent.append(Sent(name, fuzz, 0, ""))
        if fuzz.own_workload:
            apps.create_namespaced_deployment(pool.namespace, deployment_manifest(name, replicas=0))

    send()
    return sent


def _message(e: ApiException) -> str:
    try:
        return str(json.loads(e.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(e.body)


def outcome(ms: dict[str, Any]) -> str | None:
    """Invalid, Placed or Unplaced, as a model's status for its generation says; None before it says."""
    status = ms.get("status") or {}
    if status.get("observedGeneration") != (ms.get("metadata") or {}).get("generation") \
            or not condition(ms, "Placed"):
        return None
    if condition(ms, "Invalid").get("status") == "True":
        return "Invalid"
    return "Placed" if condition(ms, "Placed").get("status") == "True" else "Unplaced"


def all_servings(pool: Pool) -> dict[str, dict[str, Any]]:
    items = client.CustomObjectsApi(pool.kube).list_namespaced_custom_object(
        GROUP, VERSION, pool.namespace, PLURAL)["items"]
    return {ms["metadata"]["name"]: ms for ms in items}


def control_slots(pool: Pool) -> Counter[tuple[str, str, str]]:
    """Where the control models' pods run: (model, node, GPU annotation), counted."""
    pods = client.CoreV1Api(pool.kube).list_namespaced_pod(pool.namespace).items
    return Counter((p.metadata.labels[MODEL_LABEL], p.spec.node_name,
                    (p.metadata.annotations or {}).get(GPU_ANNOTATION, ""))
                   for p in pods if (p.metadata.labels or {}).get(MODEL_LABEL) in CONTROL)


def moves(metrics: dict[str, float]) -> float:
    """Evictions that move a pod to another GPU (every reason but Resize, a restart in place)."""
    return migrations(metrics) - metrics.get('kvsched_migrations_total{reason="Resize"}', 0.0)


def test_random_specs_are_refused_naming_a_field_or_reported_and_kvsched_never_crashes(pool: Pool) -> None:
    pool.add_nodes({"a": (4, "80Gi"), "b": (4, "80Gi")})
    proc = pool.start()
    create_models(pool, CONTROL)
    before = wait_settled(pool, list(CONTROL))
    slots_before = control_slots(pool)
    seen = proc.metrics()

    started = time.monotonic()
    sent = send_specs(pool)
    sent_s = time.monotonic() - started
    accepted = [s.name for s in sent if s.status == 0]
    servings = wait_for(lambda: all_servings(pool), lambda all_: all(outcome(all_[n]) for n in accepted),
                        REPORT_S, f"{len(accepted)} accepted ModelServings reported")
    reported_s = time.monotonic() - started
    outcomes = Counter(outcome(servings[n]) for n in accepted)
    refused = Counter(s.status for s in sent if s.status)
    print(f"fuzz: {len(sent)} specs sent in {sent_s:.1f}s; refused {dict(refused)}; accepted {len(accepted)}: "
          f"{dict(outcomes)}; all reported {reported_s:.1f}s after the first was sent")
    assert len(sent) >= 0.9 * EXAMPLES  # hypothesis skips a spec it drew twice
    assert refused and outcomes["Placed"], "the examples must reach both the apiserver's checks and the planner"

    # kvsched_models{state} counts every ModelServing in the namespace once; Invalid ones as invalid.
    metrics = wait_for(proc.metrics, lambda m: sum(v for k, v in m.items() if k.startswith("kvsched_models{"))
                       == len(servings), 30, f"kvsched_models summing to {len(servings)}")
    invalid = sum(1 for ms in servings.values() if outcome(ms) == "Invalid")
    assert metrics['kvsched_models{state="invalid"}'] == invalid

    # Nothing of the control models moved and nobody was evicted to another GPU: a fuzzed model planned next to a
    # control one restarts it in place with a smaller memory share (a Resize: docs/controller.md), no more.
    # Waited for as wait_settled does (pods on their slots and Ready, then three rounds that evict and solve
    # nothing), so that the new model below is not timed against the restarts the fuzzed models caused.
    settled = wait_settled(pool, list(CONTROL), timeout_s=SETTLE_S)
    for name, ms in before.items():
        assert slot_set(settled[name]) == slot_set(ms), name
    assert control_slots(pool) == slots_before

    # A good model now: Placed within 10 s of its creation.
    fresh_at = time.monotonic()
    client.AppsV1Api(pool.kube).create_namespaced_deployment(pool.namespace, annotated("fresh", "8Gi", 1.0, "1", 1))
    wait_for(lambda: all_servings(pool).get("fresh") or {}, lambda ms: outcome(ms) == "Placed", PLACED_S,
             "ModelServing fresh Placed")
    assert time.monotonic() - fresh_at <= PLACED_S

    for name, ms in before.items():
        assert slot_set(serving(pool, name)) == slot_set(ms), name
    now = proc.metrics()
    assert moves(now) == moves(seen)
    print(f"fuzz: control pods restarted in place (Resize): {migrations(now) - migrations(seen):.0f}")
    assert proc.component.running
    log = proc.component.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback") - 2000:][:6000]
