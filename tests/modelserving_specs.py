"""Hypothesis strategies for ModelServing specs as people and scripts write them, good and bad: a well-formed spec
with up to three fields replaced by well-typed values across and beyond the CRD's bounds (huge, tiny, negative and
zero numbers, floats where ints go, quantity strings in every Kubernetes form and in forms Kubernetes refuses), by
ill-typed values (strings for numbers, lists, mappings, null), removed, or joined by unknown fields; now and then
the whole spec is ill-typed or missing.

Used by tests/e2e/test_modelserving_fuzz.py (each spec through the real apiserver, then kvsched) and
tests/property/test_spec_fuzz.py (the same specs through kvsched's readers and decision, no apiserver).
NaN and infinities are left out: JSON cannot carry them, so no client can send them to the apiserver.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

# workloadRef.name of a spec whose workload is its own Deployment (the e2e test puts the ModelServing's name
# there and creates that Deployment once the spec is accepted).
OWN = "own-deployment"
SPEC_FIELDS = ("workloadRef", "modelSize", "engineOverhead", "requestRate", "sloSeconds", "replicas",
               "fromAnnotations")
QUANTITY_FIELDS = ("modelSize", "engineOverhead")
NUMBER_FIELDS = ("requestRate", "sloSeconds", "replicas")
UNKNOWN_FIELDS = ("modelsize", "size", "status", "gpu", "kvsched.io/size", "")
ABSENT = object()  # the spec (or a field) is left out

# Quantity strings: forms Kubernetes takes and forms it refuses; the ones that broke a reader are kept here.
QUANTITY_WORDS = (
    "16Gi", "16e9", "16E9", "1e3", "16k", "16Ki", "16m", "0.5Gi", ".5Gi", "5.", "+16Gi", "-16Gi", "16E", "1Mi",
    "1048576", "1048575", "1048575.9999999999", "0.99999999999Mi", "16000000000000000000n", "2000000000000u",
    "1e100", "1e308", "1e1000", "1e9999999", "99999999999999999999Ei", "8Ei", "0", "-0", "0e5", "0.0", "1e-10",
    "-1e-10", "0.1n", "1_000", "1_000Mi", "²", "١٦Gi", "１６Gi", "16GiB", "16GB", "16gi", " 16Gi", "16Gi ",
    "16 Gi", "Gi", "", " ", "inf", "nan", "Infinity", "0x10", "1e1.5", "1e", "e3", "16K", "16Mi\n", "true",
)
SUFFIXES = ("", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "e3", "E9", "e-3",
            "e+2", "e0", "K", "B", "GiB", "gi", "e", "i", " Gi")
NUMBER_WORDS = (0, -0.0, 1, -1, 4.0, 0.5, 1e308, -1e308, 5e-324, 1e-300, 2**20, 2**20 - 1, 16 * 2**30,
                16.0 * 2**30, 2**63 - 1, 2**63, 2**64, 10**30, 86_400, 86_400.5, 1e12, 1e13, 100_000, 100_001, 3.0)

number_texts = (st.integers(-10**25, 10**25).map(str)
                | st.decimals(allow_nan=False, allow_infinity=False, places=12).map(str)
                | st.floats(allow_nan=False, allow_infinity=False).map(repr))
quantity_strings = (st.sampled_from(QUANTITY_WORDS) | st.sampled_from(QUANTITY_WORDS)
                    | st.builds(lambda n, s: n + s, number_texts, st.sampled_from(SUFFIXES)))
numbers = (st.sampled_from(NUMBER_WORDS) | st.integers(-2**66, 2**66) | st.integers(-3, 200_000)
           | st.floats(allow_nan=False, allow_infinity=False))
scalars = st.none() | st.booleans() | st.text(max_size=8) | numbers
ill_typed = scalars | st.lists(scalars, max_size=3) | st.dictionaries(st.text(max_size=6), scalars, max_size=3)
workload_refs = (st.fixed_dictionaries({"name": st.just(OWN)},
                                       optional={"kind": st.sampled_from(["Deployment", "StatefulSet", "deployment",
                                                                          ""])})
                 | st.fixed_dictionaries({"name": st.sampled_from(["missing", "", "x" * 254, "Bad_Name"])})
                 | st.fixed_dictionaries({"name": st.text(max_size=12)})
                 | st.just({}) | ill_typed)


def values_for(field: str) -> st.SearchStrategy[Any]:
    """Replacement values for one spec field: mostly of its own kind, sometimes anything."""
    if field in QUANTITY_FIELDS:
        return quantity_strings | quantity_strings | numbers | ill_typed
    if field in NUMBER_FIELDS:
        return numbers | numbers | quantity_strings | ill_typed
    if field == "workloadRef":
        return workload_refs
    return ill_typed


# Well-formed specs: the start of each example (most fit the e2e pool's 80Gi GPUs).
good_specs = st.fixed_dictionaries(
    {"workloadRef": st.just({"kind": "Deployment", "name": OWN}),
     "modelSize": st.sampled_from(["1Gi", "8Gi", "16Gi", "30Gi", 8 * 2**30, "17.5e9", "0.5Gi", "512Mi"]),
     "requestRate": st.sampled_from([0, 0.5, 1, 4, 100]),
     "sloSeconds": st.sampled_from([0.1, 0.5, 1, 2, 30])},
    optional={"replicas": st.integers(0, 3), "engineOverhead": st.sampled_from(["0", "1Gi", 0, "2Gi"])})


@dataclass(frozen=True)
class FuzzSpec:
    """A generated spec (`spec` is ABSENT when the object has none) and the fields it changed from a good one:
    a refusal must name one of them ("spec" when the whole spec was replaced)."""

    spec: Any
    touched: frozenset[str]

    def body(self, name: str, api_version: str, kind: str) -> dict[str, Any]:
        """The object to send, named `name`; a workloadRef naming OWN names `name` instead."""
        obj: dict[str, Any] = {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}}
        if self.spec is not ABSENT:
            obj["spec"] = self.spec
        if self.own_workload:
            obj["spec"] = {**self.spec, "workloadRef": {**self.spec["workloadRef"], "name": name}}
        return obj

    @property
    def own_workload(self) -> bool:
        """Whether the workloadRef names OWN (its Deployment is created once the spec is accepted)."""
        ref = self.spec.get("workloadRef") if isinstance(self.spec, dict) else None
        return isinstance(ref, dict) and ref.get("name") == OWN


@st.composite
def fuzz_specs(draw: st.DrawFn) -> FuzzSpec:
    """A good spec with 1-3 fields (one in six: none) replaced, removed or added, or (one in twenty) an ill-typed or missing spec."""
    if draw(st.integers(0, 19)) == 0:
        return FuzzSpec(draw(st.just(ABSENT) | ill_typed), frozenset({"spec"}))
    spec = draw(good_specs)
    touched: set[str] = set()
    for _ in range(draw(st.sampled_from([1, 2, 3, 1, 2, 0]))):
        field = draw(st.sampled_from(SPEC_FIELDS + UNKNOWN_FIELDS))
        touched.add(field)
        if field in spec and draw(st.integers(0, 4)) == 0:
            del spec[field]
        else:
            spec[field] = draw(values_for(field))
    return FuzzSpec(spec, frozenset(touched))
