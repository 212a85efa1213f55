"""Errors raised by the packer's validation. Adapters map them to exit codes, conditions and events."""

from __future__ import annotations


class InvalidInput(ValueError):
    """An input object has a bad field. The message names the object, the field and the value.

    `field` is the packer's own name for it (`size_gib`, `rate_rps`, `slo_s`, `memory_gib`, `max_migrations`, ...);
    adapters map it to their own (the cluster file reader: `size`, `requestRate`, ...).
    """

    def __init__(self, obj: str, field: str, value: object, why: str) -> None:
        self.obj = obj
        self.field = field
        self.value = value
        self.why = why
        super().__init__(f"{obj}: field {field!r} = {value!r}: {why}")
