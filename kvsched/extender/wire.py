"""kube-scheduler's extender wire format (k8s.io/kube-scheduler/extender/v1) as pydantic models.

The Go structs carry no json tags, so the JSON keys are the Go field names: `Pod`, `Nodes`, `NodeNames`,
`FailedNodes`, `FailedAndUnresolvableNodes`, `Error`, `Host`, `Score`, `PodName`, `PodNamespace`, `PodUID`,
`Node`. The Pod inside is a core/v1 Pod in its own (camelCase) JSON. We parse only the few Pod fields the
extender reads (metadata name/namespace/uid/labels/annotations, spec.schedulerName/nodeName) and ignore the rest,
so a 7 KB vLLM pod costs one pass of pydantic-core. With `nodeCacheCapable: false` the scheduler sends whole
Node objects in `Nodes.items`; they are kept as raw dicts because the filter answer must return them.
Called by: kvsched.extender.app.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import to_json

MIN_SCORE = 0   # MinExtenderPriority
MAX_SCORE = 10  # MaxExtenderPriority


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ObjectMeta(_Wire):
    name: str = ""
    namespace: str = ""
    uid: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class PodSpec(_Wire):
    schedulerName: str = ""  # noqa: N815 (the API's spelling)
    nodeName: str = ""       # noqa: N815


class Pod(_Wire):
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: PodSpec = Field(default_factory=PodSpec)


class NodeList(_Wire):
    items: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("items")
    @classmethod
    def _named(cls, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every Node must carry `metadata.name` as a string (the answer refers to nodes by it)."""
        for i, node in enumerate(items):
            if not isinstance(node_name(node), str):
                raise ValueError(f"Nodes.items[{i}].metadata.name must be a string")
        return items


def node_name(node: dict[str, Any]) -> str | None:
    """A Node object's `metadata.name`, or None when it is missing or not a string."""
    metadata = node.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) else None


class ExtenderArgs(_Wire):
    """Body of filter and prioritize. Exactly one of `Nodes` (nodeCacheCapable false) and `NodeNames` (true)."""

    Pod: Pod
    Nodes: NodeList | None = None
    NodeNames: list[str] | None = None

    def candidate_names(self) -> list[str]:
        if self.NodeNames is not None:
            return self.NodeNames
        if self.Nodes is not None:
            return [node_name(n) or "" for n in self.Nodes.items]
        return []


class ExtenderFilterResult(_Wire):
    """Filter's answer: `NodeNames` when the request had names, `Nodes` when it had Node objects."""

    Nodes: NodeList | None = None
    NodeNames: list[str] | None = None
    FailedNodes: dict[str, str] = Field(default_factory=dict)
    FailedAndUnresolvableNodes: dict[str, str] = Field(default_factory=dict)
    Error: str = ""


class HostPriority(_Wire):
    Host: str
    Score: int = Field(ge=MIN_SCORE, le=MAX_SCORE)


class ExtenderBindingArgs(_Wire):
    PodName: str = Field(min_length=1)
    PodNamespace: str = Field(min_length=1)
    PodUID: str = ""
    Node: str = Field(min_length=1)


class ExtenderBindingResult(_Wire):
    Error: str = ""


def host_priority_list_json(neutral_hosts: list[str], neutral_score: int, scores: dict[str, int]) -> bytes:
    """A HostPriorityList as JSON bytes: `neutral_score` for every host in `neutral_hosts`, `scores` for the rest
    (kube-scheduler reads the list by Host; order carries no meaning).

    The neutral part is made from the JSON array of the names, escaped once in Rust by pydantic-core, with each
    separator `","` turned into `","Score":n},{"Host":"`: that byte sequence cannot occur inside an escaped
    string (a quote inside one is always preceded by a backslash), so this is exact for any name, and it avoids
    building a dict per host (500 of them cost more than the rest of a prioritize answer)."""
    parts: list[bytes] = []
    if neutral_hosts:
        inner = to_json(neutral_hosts)[1:-1]
        score = b'","Score":%d},{"Host":"' % neutral_score
        parts.append(b'{"Host":' + inner.replace(b'","', score) + b',"Score":%d}' % neutral_score)
    if scores:
        parts.append(to_json([{"Host": h, "Score": s} for h, s in scores.items()])[1:-1])
    return b"[" + b",".join(parts) + b"]"
