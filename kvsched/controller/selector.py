"""Kubernetes label selectors as a string (`--node-selector`): parse, match a label set, and turn into the
`matchExpressions` of a node affinity term.

Grammar (the one kubectl accepts): comma-separated requirements, each `key=value`, `key==value`, `key!=value`,
`key` (exists), `!key` (does not exist), `key in (a,b)` or `key notin (a,b)`. The empty string selects everything.
`label_selector` reads an API object's label selector (a PodDisruptionBudget's) into the same Selector.
Called by: kvsched.controller.inventory (which nodes kvsched may use), kvsched.controller.template (affinity),
kvsched.controller.pdb (which pods a PodDisruptionBudget selects).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

_SET = re.compile(r"^\s*(?P<key>[^\s!=,()]+)\s+(?P<op>in|notin)\s+\((?P<values>[^()]*)\)\s*$")
_EQ = re.compile(r"^\s*(?P<key>[^\s!=,()]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s!=,()]*)\s*$")
_EXISTS = re.compile(r"^\s*(?P<neg>!?)\s*(?P<key>[^\s!=,()]+)\s*$")


class SelectorError(ValueError):
    """The selector string does not parse; str() names the part that does not."""


@dataclass(frozen=True)
class Requirement:
    """One requirement: operator In, NotIn, Exists or DoesNotExist over `values`."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        return self.key not in labels or labels[self.key] not in self.values  # NotIn

    def to_expression(self) -> dict[str, Any]:
        """The NodeSelectorRequirement (camelCase dict) of a node affinity term."""
        expression: dict[str, Any] = {"key": self.key, "operator": self.operator}
        if self.operator in ("In", "NotIn"):
            expression["values"] = list(self.values)
        return expression


@dataclass(frozen=True)
class Selector:
    """All requirements must hold (AND); no requirement selects every label set."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def to_expressions(self) -> list[dict[str, Any]]:
        return [r.to_expression() for r in self.requirements]


def _split(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def label_selector(selector: Mapping[str, Any] | None) -> Selector | None:
    """A metav1.LabelSelector (camelCase dict: `matchLabels`, `matchExpressions`) as a Selector; None when it
    selects nothing: no selector (policy/v1 PodDisruptionBudgets select no pod then) or a part that does not read
    (an unknown operator, a value that is not a string; the apiserver refuses those). `{}` selects every label
    set. O(requirements)."""
    if selector is None:
        return None
    labels, expressions = selector.get("matchLabels") or {}, selector.get("matchExpressions") or []
    if not isinstance(labels, Mapping) or not isinstance(expressions, list):
        return None
    requirements = [Requirement(str(k), "In", (str(v),)) for k, v in sorted(labels.items())]
    for e in expressions:
        if not isinstance(e, Mapping) or e.get("operator") not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return None
        values = e.get("values") or []
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            return None
        requirements.append(Requirement(str(e.get("key", "")), str(e["operator"]), tuple(values)))
    return Selector(tuple(requirements))


def parse_selector(text: str) -> Selector:
    """Parse a selector string (grammar in the module docstring). Raises SelectorError. O(len(text))."""
    if not text.strip():
        return Selector()
    requirements = []
    for part in _split(text):
        if not part.strip():
            raise SelectorError(f"empty requirement in {text!r}")
        if m := _SET.match(part):
            values = tuple(v.strip() for v in m["values"].split(",") if v.strip())
            if not values:
                raise SelectorError(f"{part.strip()!r} lists no values")
            requirements.append(Requirement(m["key"], "In" if m["op"] == "in" else "NotIn", values))
        elif m := _EQ.match(part):
            requirements.append(Requirement(m["key"], "NotIn" if m["op"] == "!=" else "In", (m["value"],)))
        elif m := _EXISTS.match(part):
            requirements.append(Requirement(m["key"], "DoesNotExist" if m["neg"] else "Exists"))
        else:
            raise SelectorError(f"{part.strip()!r} is not a label requirement (e.g. key=value, key, !key, "
                                "key in (a,b))")
    return Selector(tuple(requirements))
