"""ModelServing specs the CRD must refuse (each with the field its message names) and specs it must accept: one
table for the offline checks (tests/chart/test_crd_bounds.py: the schema's structural bounds, and the controller
agreeing with every bound) and the e2e test against the real apiserver (tests/e2e/test_crd_bounds.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GOOD_SPEC: dict[str, Any] = {"workloadRef": {"kind": "Deployment", "name": "llm"}, "modelSize": "16Gi",
                             "requestRate": 4, "sloSeconds": 1}


@dataclass(frozen=True)
class SpecCase:
    """A ModelServing: `spec` is GOOD_SPEC with `changes` applied (a value None removes the field); `name` its
    metadata.name. `field` is the field a refusal names ("" for a spec the CRD accepts); `cel` when only a CEL
    rule (x-kubernetes-validations) catches it, which only the apiserver evaluates."""

    id: str
    changes: dict[str, Any] = field(default_factory=dict)
    field: str = ""
    cel: bool = False
    name: str = "llm"

    def spec(self) -> dict[str, Any]:
        spec = dict(GOOD_SPEC)
        for key, value in self.changes.items():
            if value is None:
                spec.pop(key, None)
            else:
                spec[key] = value
        return spec


BAD = [
    SpecCase("negative replicas", {"replicas": -1}, "spec.replicas"),
    SpecCase("replicas over 100000", {"replicas": 100_001}, "spec.replicas"),
    SpecCase("negative rate", {"requestRate": -1}, "spec.requestRate"),
    SpecCase("zero SLO", {"sloSeconds": 0}, "spec.sloSeconds"),
    SpecCase("negative SLO", {"sloSeconds": -0.5}, "spec.sloSeconds"),
    SpecCase("SLO over a day", {"sloSeconds": 86_401}, "spec.sloSeconds"),
    SpecCase("rate 1e308 at SLO 0.5 (infinite load)", {"requestRate": 1e308, "sloSeconds": 0.5},
             "spec.requestRate", cel=True),
    SpecCase("rate 1e13 at SLO 1 (load over 1e12)", {"requestRate": 1e13, "sloSeconds": 1}, "spec.requestRate",
             cel=True),
    SpecCase("rate 1 at SLO 1e-13 (load over 1e12)", {"requestRate": 1, "sloSeconds": 1e-13}, "spec.requestRate",
             cel=True),
    SpecCase("size with a bad unit", {"modelSize": "16GB"}, "spec.modelSize"),
    SpecCase("size with Arabic-Indic digits", {"modelSize": "١٦Gi"}, "spec.modelSize"),
    SpecCase("size with an underscore", {"modelSize": "1_000Mi"}, "spec.modelSize"),
    SpecCase("size a boolean", {"modelSize": True}, "spec.modelSize"),
    SpecCase("negative size", {"modelSize": "-16Gi"}, "spec.modelSize", cel=True),
    SpecCase("zero size", {"modelSize": "0"}, "spec.modelSize", cel=True),
    SpecCase("size 16 bytes (a missing unit)", {"modelSize": "16"}, "spec.modelSize", cel=True),
    SpecCase("integer size 16 (bytes)", {"modelSize": 16}, "spec.modelSize", cel=True),
    SpecCase("negative engine overhead", {"engineOverhead": "-1Gi"}, "spec.engineOverhead", cel=True),
    SpecCase("engine overhead 100 bytes", {"engineOverhead": "100"}, "spec.engineOverhead", cel=True),
    SpecCase("engine overhead not a quantity", {"engineOverhead": "2 GiB"}, "spec.engineOverhead"),
    SpecCase("workload not a Deployment", {"workloadRef": {"kind": "StatefulSet", "name": "llm"}},
             "spec.workloadRef"),
    SpecCase("rate missing", {"requestRate": None}, "requestRate", cel=True),
    SpecCase("name of 64 characters", name="m" * 64, field="metadata.name", cel=True),
]

GOOD = [
    SpecCase("quantity string"),
    SpecCase("integer size in bytes, rate 0, SLO a day, 0 replicas, overhead 0",
             {"modelSize": 16 * 2**30, "requestRate": 0, "sloSeconds": 86_400, "replicas": 0,
              "engineOverhead": 0}),
    SpecCase("every bound at its limit", {"modelSize": "1Mi", "requestRate": 1e12, "sloSeconds": 1,
                                          "replicas": 100_000, "engineOverhead": "1Mi"}),
    SpecCase("decimal and exponent quantities", {"modelSize": "17.5e9", "engineOverhead": "0.5Gi"}),
    SpecCase("name of 63 characters", name="m" * 63),
    SpecCase("fromAnnotations leaves out a rate", {"requestRate": None, "fromAnnotations": True}),
    # Found by tests/e2e/test_modelserving_fuzz.py: the apiserver takes these and the controller called them Invalid.
    SpecCase("size under 1Mi by less than a nanobyte (Kubernetes rounds it up to 1Mi)",
             {"modelSize": "1048575.9999999999"}),
    SpecCase("nano and micro suffixes", {"modelSize": "16000000000000000000n", "engineOverhead": "2000000000000u"}),
]
