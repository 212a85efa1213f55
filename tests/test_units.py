"""kvsched.units: numbers and quantities read as Kubernetes writes them, ASCII only (issue 16: Unicode digits,
underscores and overflowing values were accepted or crashed the readers)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from kvsched.api.objects import DeploymentObj, NodeObj, PodObj
from kvsched.api.names import GPU_ANNOTATION, GPU_MEMORY_MIB_LABEL, MEMORY_FRACTION_ANNOTATION, RATE_ANNOTATION, \
    SIZE_ANNOTATION, SLO_ANNOTATION
from kvsched.api.readers import read_pod
from kvsched.controller.inventory import annotated_gpu, node_gpu_count, node_memory_gib, running_share
from kvsched.controller.models import read_annotations
from kvsched.units import UnitError, decimal_number, memory_gib, quantity_bytes, whole_number

BAD_DIGITS = ["²", "٣", "１", "1_0", "+1", "-1", "1.0", "", " ", "0x1", "1e2"]


@pytest.mark.parametrize("text, expected", [("0", 0), ("7", 7), (" 12 ", 12), ("0012", 12)])
def test_whole_number_reads_ascii_digits(text: str, expected: int) -> None:
    assert whole_number(text) == expected


@pytest.mark.parametrize("text", BAD_DIGITS)
def test_whole_number_refuses_what_isdigit_or_int_would_take(text: str) -> None:
    with pytest.raises(UnitError, match="whole number"):
        whole_number(text)


@pytest.mark.parametrize("text, expected", [
    ("12", 12.0), ("0.5", 0.5), (".5", 0.5), ("5.", 5.0), ("-2", -2.0), ("+3", 3.0), ("1e3", 1000.0),
    ("1E-3", 0.001), (" 4 ", 4.0), ("1e308", 1e308),
])
def test_decimal_number_reads_decimals(text: str, expected: float) -> None:
    assert decimal_number(text) == expected


@pytest.mark.parametrize("text", ["1_000", "٣", "１", "inf", "nan", "Infinity", "0x10", "1e309", "", "1.2.3", "e3",
                                  "1 000"])
def test_decimal_number_refuses_what_float_would_take_or_overflow(text: str) -> None:
    with pytest.raises(UnitError):
        decimal_number(text)


@pytest.mark.parametrize("text", ["١٦Gi", "1_000Gi", "inf", "nan", "16gi", "16 Gi", "Gi", "1e400Gi"])
def test_quantities_follow_the_kubernetes_grammar(text: str) -> None:
    with pytest.raises(UnitError, match="not a Kubernetes quantity"):
        quantity_bytes(text)


@pytest.mark.parametrize("text, gib", [("16Gi", 16.0), ("16.Gi", 16.0), (".5Gi", 0.5), ("81920Mi", 80.0),
                                       ("1e9", 1e9 / 2**30), ("+2Gi", 2.0)])
def test_quantities_kubernetes_accepts_still_read(text: str, gib: float) -> None:
    assert memory_gib(text) == pytest.approx(gib)


@pytest.mark.parametrize("text", ["1e400", "1e9999999", "1e99999999999999999"])
def test_a_quantity_too_large_for_a_float_is_refused(text: str) -> None:
    """"1e9999999" (past Decimal's exponent range) raised decimal.Overflow, which stopped every round."""
    with pytest.raises(UnitError, match="too large"):
        memory_gib(text)


@pytest.mark.parametrize("text, expected", [
    pytest.param("16Gi", "17179869184", id="binary suffix"),
    pytest.param("16e9", "16000000000", id="exponent"),
    pytest.param("1.5E3", "1500", id="exponent, capital E"),
    pytest.param("16E", "16000000000000000000", id="exa"),
    pytest.param("16000000000000000000n", "16000000000", id="nano suffix"),
    pytest.param("2u", "0.000002", id="micro suffix"),
    pytest.param("16m", "0.016", id="milli suffix"),
    pytest.param("1048575.9999999999", "1048576", id="below a nanobyte: rounded up"),
    pytest.param("0.99999999999999999999999999999Mi", "1048576", id="exact past 28 digits"),
    pytest.param("1048575.999999999000000000000000000000000001", "1048576", id="rounded up from far below"),
    pytest.param("0.1n", "0.000000001", id="a tenth of a nanobyte is one"),
    pytest.param("-0.1n", "-0.000000001", id="negative: rounded away from zero"),
    pytest.param("-1e-10", "-0.000000001", id="negative exponent: rounded away from zero"),
    pytest.param("1e-999999999", "0.000000001", id="tiny exponent"),
    pytest.param("0e5", "0", id="zero with an exponent"),
    pytest.param("-0", "0", id="negative zero"),
    pytest.param("8Ei", str(2**63 - 1), id="binary capped at the largest int64"),
    pytest.param("99999999999999999999Ei", str(2**63 - 1), id="huge binary capped"),
    pytest.param("99999999999999999999E", "99999999999999999999" + "0" * 18, id="decimal not capped"),
])
def test_quantities_read_as_the_apiserver_reads_them(text: str, expected: str) -> None:
    """apimachinery's ParseQuantity: exact, non-zero amounts rounded away from zero to a nanobyte, binary
    suffixes capped at 2**63 - 1 (the CRD's CEL compares quantities that way: tests/e2e/test_modelserving_fuzz.py
    found "1048575.9999999999" accepted by the apiserver and refused here, and "n" suffixes not read)."""
    assert quantity_bytes(text) == Decimal(expected)


def test_a_size_the_apiserver_rounds_up_to_1mi_is_1mi() -> None:
    assert memory_gib("1048575.9999999999") == 1 / 1024


@pytest.mark.parametrize("text", BAD_DIGITS[:-1])
def test_a_gpu_annotation_not_in_ascii_digits_holds_no_gpu(text: str) -> None:
    """A pod annotated `kvsched.io/gpu: "²"` crashed the controller's inventory and the extender's cache."""
    pod = read_pod({"metadata": {"name": "p", "namespace": "ns", "annotations": {GPU_ANNOTATION: text}},
                    "spec": {"nodeName": "n"}})
    assert annotated_gpu(pod) is None


@pytest.mark.parametrize("text", ["٠.٥", "0_5", "nan", "inf", "1.5", "0"])
def test_a_memory_fraction_annotation_that_is_not_a_share_is_ignored(text: str) -> None:
    pod = PodObj(namespace="ns", name="p", annotations={MEMORY_FRACTION_ANNOTATION: text})
    assert running_share(pod) is None


@pytest.mark.parametrize("capacity", ["²", "٣", "1_0", "-1"])
def test_a_node_gpu_count_not_in_ascii_digits_is_an_error_naming_the_resource(capacity: str) -> None:
    with pytest.raises(UnitError, match="nvidia.com/gpu"):
        node_gpu_count(NodeObj(name="n", gpu_capacity=capacity))


@pytest.mark.parametrize("mib", ["٨٠٠٠٠", "81_920", "inf", "nan"])
def test_a_gpu_memory_mib_label_not_in_ascii_is_an_error_naming_the_label(mib: str) -> None:
    with pytest.raises(UnitError, match=GPU_MEMORY_MIB_LABEL):
        node_memory_gib(NodeObj(name="n", labels={GPU_MEMORY_MIB_LABEL: mib}))


@pytest.mark.parametrize("rate", ["1_000", "١٠", "inf", "1e309", "nan"])
def test_a_rate_annotation_python_would_read_is_invalid(rate: str) -> None:
    deployment = DeploymentObj(namespace="ns", name="d", annotations={
        SIZE_ANNOTATION: "16Gi", RATE_ANNOTATION: rate, SLO_ANNOTATION: "1"})
    values = read_annotations(deployment)
    assert "requestRate" not in values.fields and values.fields["modelSize"] == "16Gi"
    assert len(values.problems) == 1 and RATE_ANNOTATION in values.problems[0] and repr(rate) in values.problems[0]
