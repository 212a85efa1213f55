"""The memory headroom's invariants over what a cluster runs (issue 15): read from the API, checked per GPU.

For every GPU (node, `kvsched.io/gpu`) holding managed pods, with M its memory (the node's label, read as the
controller reads it), R the GPU memory reserve and, per pod, m its model's weights, o its engine overhead
(`spec.engineOverhead`, else the controller's default) and c the CUDA context:
- the pods' `kvsched.io/gpu-memory-fraction` annotations sum to at most 1 - (R + k c) / M (k pods);
- each share x M - m >= o, when the GPU keeps at least one share step (M / 1000) of KV memory per pod
  (kvsched.controller.headroom.rounded_shares; a GPU that does not is reported too, as it leaves no KV cache).
`violations` returns one sentence per breach (empty: all hold); the scenarios assert it is empty.
Used by tests/e2e/test_controller.py and tests/e2e/test_idle.py.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Mapping

from kubernetes import client

from kvsched.api.names import GPU_ANNOTATION, MEMORY_FRACTION_ANNOTATION, MODEL_LABEL
from kvsched.api.readers import read_model_serving, read_node
from kvsched.controller.headroom import Headroom, share_bound
from kvsched.controller.inventory import node_memory_gib
from kvsched.controller.models import model_overhead_gib, model_size_gib

GROUP, VERSION, PLURAL = "kvsched.io", "v1alpha1", "modelservings"
STEP = 0.001


def violations(pods: Iterable[Any], servings: Iterable[Mapping[str, Any]], nodes: Iterable[Mapping[str, Any]],
               headroom: Headroom) -> list[str]:
    """Breaches of the invariants (module docstring) by `pods` (V1Pod), given the ModelServings and Nodes as the
    API returns them (dicts) and the headroom the controller runs with. Pods without a node, a GPU annotation
    or the model label are not kvsched's bound pods and are skipped."""
    memory = {}
    for n in nodes:
        node = read_node(n)
        gib = node_memory_gib(node)
        if gib is not None:
            memory[node.name] = gib
    models: dict[tuple[str, str], tuple[float, float]] = {}
    for obj in servings:
        ms = read_model_serving(dict(obj))
        size = model_size_gib(ms)
        if size is not None:
            models[(ms.namespace, ms.name)] = (size, model_overhead_gib(ms, headroom.overhead_gib))
    per_gpu: dict[tuple[str, int], list[tuple[str, float, float, float]]] = defaultdict(list)
    out: list[str] = []
    for p in pods:
        notes = p.metadata.annotations or {}
        labels = p.metadata.labels or {}
        if not p.spec.node_name or GPU_ANNOTATION not in notes or MODEL_LABEL not in labels:
            continue
        key = (p.metadata.namespace, labels[MODEL_LABEL])
        if key not in models:
            out.append(f"pod {p.metadata.name}: no ModelServing {key[0]}/{key[1]} with a size")
            continue
        size, overhead = models[key]
        share = float(notes.get(MEMORY_FRACTION_ANNOTATION, "nan"))
        per_gpu[(p.spec.node_name, int(notes[GPU_ANNOTATION]))].append((p.metadata.name, size, overhead, share))
    for (node_name, gpu), engines in sorted(per_gpu.items()):
        m_gpu = memory.get(node_name)
        if m_gpu is None:
            out.append(f"{node_name}/{gpu}: no GPU memory label")
            continue
        bound = share_bound(m_gpu, headroom.reserve_gib, len(engines) * headroom.context_gib)
        total = sum(e[3] for e in engines)
        where = f"{node_name}/{gpu} ({m_gpu:g} GiB; pods {[(e[0], e[3]) for e in engines]})"
        if not total <= bound + 1e-9:
            out.append(f"{where}: shares sum to {total:.3f} > {bound:.4f} = 1 - (R + k c) / M")
        kv_steps = (bound - sum((e[1] + e[2]) / m_gpu for e in engines)) / STEP
        if kv_steps < len(engines):
            out.append(f"{where}: leaves less than {STEP} of its memory per replica for KV cache")
            continue
        for name, size, overhead, share in engines:
            if not share * m_gpu - size >= overhead - 1e-6:
                out.append(f"{where}: {name} runs with {share:.3f} x {m_gpu:g} GiB = {share * m_gpu:.2f} GiB, "
                           f"less than its weights {size:g} + overhead {overhead:g} GiB")
    return out


def cluster_violations(api: client.ApiClient, namespace: str, headroom: Headroom) -> list[str]:
    """`violations` over the pods and ModelServings of `namespace` and every Node, read now."""
    core = client.CoreV1Api(api)
    servings = client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    nodes = [api.sanitize_for_serialization(n) for n in core.list_node().items]
    return violations(core.list_namespaced_pod(namespace).items, servings, nodes, headroom)
