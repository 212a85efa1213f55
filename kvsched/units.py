"""Quantities and durations as people write them in Kubernetes objects and cluster files.

`memory_gib("16Gi")` and `seconds("500ms")` turn what a user wrote into the packer's units (GiB, seconds) or raise
`UnitError` with a sentence fit for an error message (the caller adds the field path or the object's name).
Memory is a Kubernetes quantity string (bytes unless suffixed: "80Gi", "81920Mi", "85899345920") or a plain number
meaning GiB; durations are numbers of seconds or strings "500ms", "2s", "1.5m".
Called by: the cluster file reader, the controller (annotations, ModelServing spec, node labels), the extender.

A quantity string is read as the apiserver reads it (apimachinery's resource.ParseQuantity): the same grammar
(ASCII digits; suffixes n u m k M G T P E, Ki..Ei, or a decimal exponent), exact decimal arithmetic, a non-zero
amount rounded away from zero to a whole nanobyte, and a binary-suffixed amount capped at 2**63 - 1 bytes. So a
value the CRD's CEL rules compare (`quantity(self).compareTo(quantity('1Mi'))`) compares the same here
(tests/e2e/test_modelserving_fuzz.py found the two disagreeing on "1048575.9999999999" and "n" suffixes).
"""

from __future__ import annotations

import datetime
import math
import re
from decimal import MAX_EMAX, MIN_EMIN, ROUND_UP, Context, Decimal, DecimalException

GIB_BYTES = 2**30
MIB_BYTES = 2**20
# A memory quantity string under 1 MiB is almost surely a missing unit ("80" is 80 bytes, not 80Gi).
SMALLEST_MEMORY_BYTES = MIB_BYTES

# Kubernetes' quantity grammar (apimachinery resource.Quantity), ASCII digits only: the official client's parser
# also takes "1_000", Unicode digits, "inf" and "nan", which the apiserver refuses in a resource quantity.
_QUANTITY = re.compile(r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
                       r"(?:(?P<binary>[KMGTPE]i)|(?P<decimal>[numkMGTPE])|[eE](?P<exponent>[+-]?[0-9]+))?", re.ASCII)
# Powers of 2 of the binary suffixes, powers of 10 of the decimal ones.
_BINARY_POWER = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_POWER = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_NANO = Decimal("1e-9")
# apimachinery caps a binary-suffixed quantity at the largest int64 ("The max is just a simple cap").
_BINARY_MAX = Decimal(2**63 - 1)
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_WHOLE = re.compile(r"[0-9]+", re.ASCII)
_DURATION = re.compile(r"^\s*(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?P<unit>ms|s|m)?\s*$", re.ASCII)
_SECONDS_PER_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


class UnitError(ValueError):
    """A value is not a quantity or duration of the expected kind; str() is the problem, without a field path."""


def describe(value: object) -> str:
    """How a value reads in an error message: 'the string "x"', 'a list', 'null'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def number(value: object, *, minimum: float) -> float:
    """A finite int or float >= minimum (booleans are not numbers). Raises UnitError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UnitError(f"must be a number, got {describe(value)}")
    result = float(value)
    if not math.isfinite(result):
        raise UnitError(f"must be a finite number, got {value!r}")
    if result < minimum:
        raise UnitError(f"must be >= {minimum:g}, got {value!r}")
    return result


def decimal_number(text: str) -> float:
    """A finite decimal number written in ASCII ("12", "0.5", "1e3", "-2"), as people write one in an annotation or
    label; refuses what Python's float() also takes ("1_000", Unicode digits, "inf", "nan", hex). Surrounding
    whitespace is ignored. Raises UnitError."""
    stripped = text.strip()
    if _DECIMAL.fullmatch(stripped) is None:
        raise UnitError(f"{text!r} is not a decimal number")
    result = float(stripped)
    if not math.isfinite(result):
        raise UnitError(f"{text!r} is too large")
    return result


def whole_number(text: str) -> int:
    """A whole number >= 0 written in ASCII digits ("0", "12"); refuses signs, "1_0", Unicode digits ("²", "٣")
    that str.isdigit() accepts. Surrounding whitespace is ignored. Raises UnitError."""
    stripped = text.strip()
    if _WHOLE.fullmatch(stripped) is None:
        raise UnitError(f"{text!r} is not a whole number")
    return int(stripped)


def seconds(value: object, *, zero_ok: bool) -> float:
    """A number of seconds, or a duration string "500ms", "2s", "1.5m" (a bare numeric string is seconds)."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise UnitError(f"{value!r} is not a duration (e.g. 2, \"500ms\", \"2s\", \"1m\")")
        result = float(match["number"]) * _SECONDS_PER_UNIT[match["unit"]]
    else:
        result = number(value, minimum=0.0)
    if result == 0 and not zero_ok:
        raise UnitError(f"must be greater than zero, got {value!r}")
    return result


def quantity_bytes(text: str) -> Decimal:
    """A Kubernetes quantity string as a number of bytes (may be fractional), read as the apiserver reads it:
    Kubernetes' grammar, exact, a non-zero amount rounded away from zero to a multiple of 1e-9 (a nanobyte), a
    binary-suffixed one capped at 2**63 - 1. Surrounding whitespace is ignored. Raises UnitError. O(digits)."""
    match = _QUANTITY.fullmatch(text.strip())
    if match is None:
        raise UnitError(f"{text!r} is not a Kubernetes quantity (e.g. 16Gi)")
    number = Decimal(match["number"])
    # Precision for exact products and roundings: every digit of the number, a suffix's, and nine decimals.
    exact = Context(prec=len(match["number"]) + 40, Emax=MAX_EMAX, Emin=MIN_EMIN, rounding=ROUND_UP)
    try:
        if match["binary"]:
            scale = Decimal(2 ** _BINARY_POWER[match["binary"]])
            result = min(exact.multiply(number.copy_abs(), scale), _BINARY_MAX)
        else:
            power = _DECIMAL_POWER[match["decimal"]] if match["decimal"] else int(match["exponent"] or 0)
            result = exact.scaleb(number.copy_abs(), power)
        if result and result.as_tuple().exponent < -9:  # type: ignore[operator]
            rounding = Context(prec=max(result.adjusted(), 0) + 12, Emax=MAX_EMAX, Emin=MIN_EMIN, rounding=ROUND_UP)
            result = result.quantize(_NANO, context=rounding)
    except (DecimalException, OverflowError, ValueError):
        raise UnitError(f"{text!r} is too large") from None
    return result.copy_negate() if number.is_signed() else result


def memory_gib(value: object) -> float:
    """A Kubernetes quantity string (bytes unless suffixed) or a plain number of GiB, as GiB; must be > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UnitError(f"must be a Kubernetes quantity like \"80Gi\" or a number of GiB, got {describe(value)}")
    if isinstance(value, str):
        size_bytes = quantity_bytes(value)
        if 0 < size_bytes < SMALLEST_MEMORY_BYTES:
            raise UnitError(f"{value!r} is only {size_bytes} bytes: add a unit (e.g. \"{value.strip()}Gi\"), "
                            f"or write a plain number for GiB")
        try:
            size_gib = float(size_bytes / Decimal(GIB_BYTES))
        except DecimalException:  # past Decimal's exponent range ("1e9999999"): was a crash of every round
            size_gib = math.inf
        if not math.isfinite(size_gib):
            raise UnitError(f"{value!r} is too large")
    else:
        size_gib = float(value)
        if not math.isfinite(size_gib):
            raise UnitError(f"must be a finite number of GiB, got {value!r}")
    if size_gib <= 0:
        raise UnitError(f"must be greater than zero, got {value!r}")
    return size_gib


def memory_gib_or_zero(value: object) -> float:
    """A quantity or number of GiB >= 0 (`memory_gib`, which wants > 0, for the rest). Raises UnitError."""
    if isinstance(value, str):
        size_bytes = quantity_bytes(value)
        if size_bytes < 0:
            raise UnitError(f"must not be negative, got {value!r}")
        if size_bytes == 0:
            return 0.0
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise UnitError(f"must not be negative, got {value!r}")
        if value == 0:
            return 0.0
    return memory_gib(value)


def headroom_gib(text: str) -> float:
    """A memory headroom figure given as text (a flag, an environment variable): a plain number of GiB ("1.5") or
    a Kubernetes quantity ("1Gi", "512Mi"), >= 0 and finite, in GiB. Raises UnitError."""
    try:
        value: object = decimal_number(text)
    except UnitError:
        value = text  # a quantity, or nothing memory_gib_or_zero reads ("1_0", "nan", "inf" included)
    return memory_gib_or_zero(value)


def gib_to_quantity(gib: float) -> str:
    """GiB as the shortest exact-enough quantity string a person reads: 80 -> "80Gi", 0.5 -> "512Mi"."""
    if gib == int(gib):
        return f"{int(gib)}Gi"
    mib = gib * 1024
    if abs(mib - round(mib)) < 1e-6:
        return f"{int(round(mib))}Mi"
    return f"{gib:.3f}Gi"


def memory_share(text: object) -> float | None:
    """A `kvsched.io/gpu-memory-fraction` annotation as a share of a GPU's memory in (0, 1]; None when absent or
    not such a number (the extender and the controller then count the pod by its weights or its planned share)."""
    if text is None:
        return None
    try:
        value = decimal_number(str(text))
    except UnitError:
        return None
    return value if 0.0 < value <= 1.0 else None


def timestamp_s(text: str) -> float | None:
    """Seconds since the epoch of an RFC 3339 time as Kubernetes writes it ("2026-01-01T12:00:00Z", fractions and
    offsets accepted); None for "" or anything unreadable (a missing time is not an error: the caller decides
    what it means). O(1)."""
    if not text:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.timestamp()
