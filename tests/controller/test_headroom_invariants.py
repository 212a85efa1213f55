"""The memory headroom's invariants hold on every GPU, whatever the plan and whatever order the replicas bind and
start in (issue 15, part 1).

Random worlds: GPUs of 40, 80, 79.6 (an H100's 81559 MiB) and 141 GiB; models of several sizes, loads (zero
included), replicas and engine overheads (the default or their own); a random memory headroom. The controller
(the real decision core and packer) plans and writes its statuses; the pending replicas then bind one at a time in
a random order through the slot rule (`slots.filter_nodes` and `choose_slot` over the pods bound so far, as the
extender does), each with its slot's share as its annotation. Then the loads change and a model may be added, the
controller re-plans over the running pods (it may plan shares that differ from those they run with) and the new
replicas bind the same way. After every bind, on the GPU it took:
- the annotations sum to at most 1 - (R + sum of the engines' contexts) / M;
- the footprints (weights + overhead + context) fit M - R;
- each engine's share x M minus its weights is at least its overhead (whenever the plan leaves the GPU at least one
  share step of KV memory per replica: `headroom.rounded_shares`);
- in EVERY order its engines could start, each one's start-up check passes: free >= share x M_reported, with
  free = M_reported - R_driver - sum over the engines already running of (share x M + context) - its own context,
  for any split of the reserve R into the label's gap (M - M_reported) and what the driver holds (R_driver).
"""
from __future__ import annotations

import dataclasses
import itertools
from collections import defaultdict
from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsched.api.names import ENGINE_OVERHEAD_ANNOTATION, RATE_ANNOTATION, SIZE_ANNOTATION, SLO_ANNOTATION
from kvsched.api.objects import PodObj, World
from kvsched.controller import DecisionConfig
from kvsched.controller.inventory import node_memory_gib
from kvsched.controller.models import model_overhead_gib, model_size_gib
from kvsched.controller.slots import (
    Holder, ModelPlan, NodeGpus, PlannedSlot, PodRef, Snapshot, choose_slot, filter_nodes, pod_holder,
)
from kvsched.controller.status import planned_slots

from .fake import apply, deployment, node, pod, run

NS = "ns"
EPS = 1e-9
STEP = 0.001  # one share step (SHARE_DECIMALS = 3)
MEMORY_MIB = [40960, 81920, 81559, 144384]
SIZES = ["2Gi", "7Gi", "13.5Gi", "30Gi", "54Gi", "70Gi"]
RATES = ["0", "0.3", "2", "8", "30"]
OVERHEADS = [None, None, "0", "1Gi", "2560Mi", "6Gi"]


@dataclasses.dataclass
class Case:
    config: DecisionConfig
    nodes: list[tuple[int, int]]                        # (GPUs, MiB per GPU)
    models: list[tuple[str, str, int, str | None]]     # (size, rate, replicas, overhead annotation)
    rates_after: list[str]                             # new rate per model
    added: tuple[str, str, int, str | None] | None     # a model added with the change
    order: Any                                         # hypothesis' data, for bind orders and start orders


@st.composite
def cases(draw: st.DrawFn) -> Case:
    config = DecisionConfig(gpu_memory_reserve_gib=draw(st.sampled_from([0.0, 0.5, 1.0, 2.0])),
                            engine_overhead_gib=draw(st.sampled_from([0.0, 1.0, 3.0])),
                            engine_context_gib=draw(st.sampled_from([0.0, 0.25, 0.5])))
    nodes = [(draw(st.integers(1, 2)), draw(st.sampled_from(MEMORY_MIB))) for _ in range(draw(st.integers(1, 3)))]
    model = st.tuples(st.sampled_from(SIZES), st.sampled_from(RATES), st.integers(1, 2), st.sampled_from(OVERHEADS))
    models = draw(st.lists(model, min_size=1, max_size=4))
    rates_after = [draw(st.sampled_from(RATES)) for _ in models]
    added = draw(st.one_of(st.none(), model))
    return Case(config, nodes, models, rates_after, added, draw(st.data()))


def annotated(name: str, size: str, rate: str, replicas: int, overhead: str | None):  # type: ignore[no-untyped-def]
    notes = {SIZE_ANNOTATION: size, RATE_ANNOTATION: rate, SLO_ANNOTATION: "1"}
    if overhead is not None:
        notes[ENGINE_OVERHEAD_ANNOTATION] = overhead
    return deployment(name, replicas=replicas, annotations=notes)


def decide_and_write(world: World, config: DecisionConfig) -> World:
    """One decision, its writes applied (statuses, owned ModelServings), twice so that owned ones get a status."""
    for _ in range(3):
        decision = run(world, config=config)
        if decision.writes == 0:
            break
        world = apply(world, decision)
    return world


def snapshot(world: World, config: DecisionConfig) -> Snapshot:
    """The slot rule's view, read as the extender's cache reads the objects."""
    plans = {}
    for ms in world.model_servings:
        key = f"{ms.namespace}/{ms.name}"
        plans[key] = ModelPlan.from_slots(key, model_size_gib(ms), planned_slots(ms.status)[0],
                                          model_overhead_gib(ms, config.engine_overhead_gib),
                                          config.engine_context_gib)
    nodes = {n.name: NodeGpus(n.name, int(n.gpu_capacity or 0), node_memory_gib(n), config.gpu_memory_reserve_gib)
             for n in world.nodes}
    held: dict[tuple[str, int], list[Holder]] = defaultdict(list)
    for p in world.pods:
        h = pod_holder(p)
        if h is not None:
            held[(h.node, h.gpu)].append(h)
    return Snapshot(plans, nodes, held)


def check_gpu(world: World, config: DecisionConfig, node_name: str, gpu: int) -> None:
    """The invariants of the module docstring on one GPU."""
    view = snapshot(world, config)
    gpus = view.node(node_name)
    assert gpus is not None and gpus.gpu_memory_gib is not None
    memory, reserve = gpus.gpu_memory_gib, gpus.reserve_gib
    engines = []  # (pod, weights, overhead, context, share)
    for h in view.holders(node_name, gpu):
        plan = view.model(h.model_key or "")
        assert plan is not None and plan.size_gib is not None and h.memory_fraction is not None
        engines.append((h.pod, plan.size_gib, plan.overhead_gib, plan.context_gib, h.memory_fraction))
    contexts = sum(e[3] for e in engines)
    bound = 1.0 - (reserve + contexts) / memory
    total = sum(e[4] for e in engines)
    where = f"{node_name}/{gpu} (M {memory:g} GiB, R {reserve:g} GiB): {engines}"
    assert total <= bound + EPS, f"shares sum to {total} > {bound}: {where}"
    assert sum(e[1] + e[2] + e[3] for e in engines) <= memory - reserve + 1e-6, f"footprints: {where}"
    # The KV memory the plan leaves this GPU, in share steps per replica: below one, rounding may take the overhead.
    kv_steps = (bound - sum((e[1] + e[2]) / memory for e in engines)) / STEP
    if kv_steps >= len(engines):
        for e in engines:
            assert e[4] * memory - e[1] >= e[2] - 1e-6, f"{e[0]}: share {e[4]} leaves less than its overhead: {where}"
    # Every start order, with the reserve split three ways between the label's gap and the driver.
    orders = list(itertools.permutations(range(len(engines))))
    for gap in (reserve, 0.0, reserve / 2):
        driver = reserve - gap
        reported = memory - gap
        for perm in orders:
            running = 0.0
            for i in perm:
                _, _, _, context, share = engines[i]
                free = reported - driver - running - context
                assert free >= share * reported - 1e-6, (
                    f"start order {[engines[j][0] for j in perm]}: {engines[i][0]} finds {free:.3f} GiB free and "
                    f"needs {share * reported:.3f} (gap {gap:g}, driver {driver:g}): {where}")
                running += share * memory + context


def bind_pending(world: World, config: DecisionConfig, permute: Callable[[list[PodObj]], list[PodObj]],
                 pick: Callable[[list[str]], str]) -> World:
    """Bind the pending pods one at a time, in the order `permute` gives, each on the node `pick` takes of those
    the slot rule passes, and check the GPU each bind takes. Pods the rule refuses stay pending."""
    pending = permute([p for p in world.pods if p.node is None])
    bound = [p for p in world.pods if p.node is not None]
    left = list(pending)
    for p in pending:
        view = snapshot(dataclasses.replace(world, pods=tuple(bound + left)), config)
        key = f"{p.namespace}/{p.labels['kvsched.io/model']}"
        ref = PodRef(p.namespace, p.name, p.uid, key)
        plan = view.model(key)
        if plan is None:
            continue
        passed = filter_nodes(ref, sorted(plan.slots_by_node), view).passed
        if not passed:
            continue
        node_name = pick(passed)
        slot = choose_slot(ref, node_name, view)
        assert isinstance(slot, PlannedSlot), slot
        left.remove(p)
        bound.append(pod(p.name, p.labels["kvsched.io/model"], node_name, slot.gpu, fraction=slot.memory_fraction))
        check_gpu(dataclasses.replace(world, pods=tuple(bound + left)), config, node_name, slot.gpu)
    return dataclasses.replace(world, pods=tuple(bound + left))


def pending_pods(world: World, tag: str) -> list[PodObj]:
    """One pending pod (named with `tag`) per wanted replica of each ModelServing that has no pod yet."""
    out = []
    for ms in world.model_servings:
        have = sum(1 for p in world.pods if p.labels.get("kvsched.io/model") == ms.name)
        want = next(d.replicas for d in world.deployments if d.name == ms.name)
        out += [pod(f"{ms.name}-{tag}{i}", ms.name, None, None) for i in range(max(0, want - have))]
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(cases())
def test_every_bind_keeps_every_engine_able_to_start_in_every_order(case: Case) -> None:
    config = case.config
    nodes = tuple(node(f"n{i}", gpus=g, memory_mib=mib) for i, (g, mib) in enumerate(case.nodes))
    deps = [annotated(f"m{i}", *m) for i, m in enumerate(case.models)]
    world = decide_and_write(World(nodes=nodes, deployments=tuple(deps)), config)
    world = dataclasses.replace(world, pods=tuple(pending_pods(world, "a")))
    permute = lambda xs: case.order.draw(st.permutations(xs))  # noqa: E731
    pick = lambda xs: case.order.draw(st.sampled_from(xs))  # noqa: E731
    world = bind_pending(world, config, permute, pick)
    # The change: new loads (shares re-planned for pods that keep the ones they run with), maybe a new model.
    deps = [annotated(f"m{i}", m[0], case.rates_after[i], m[2], m[3]) for i, m in enumerate(case.models)]
    if case.added is not None:
        deps.append(annotated(f"m{len(case.models)}", *case.added))
    world = dataclasses.replace(world, deployments=tuple(deps))
    world = decide_and_write(world, config)
    world = dataclasses.replace(world, pods=world.pods + tuple(pending_pods(world, "b")))
    world = bind_pending(world, config, permute, pick)
    for (node_name, gpu) in {(p.node, int(p.annotations["kvsched.io/gpu"])) for p in world.pods if p.node}:
        assert node_name is not None
        check_gpu(world, config, node_name, gpu)


def test_a_small_world_binds_every_replica_within_the_invariants() -> None:
    # Without randomness: one node of two 80 GiB GPUs, four models (own overheads and a model without load), the
    # default headroom: every replica binds, and both GPUs keep 1 GiB plus a context per engine outside the shares.
    config = DecisionConfig()
    deps = [annotated("a", "16Gi", "8", 2, None), annotated("b", "7Gi", "2", 2, "1Gi"),
            annotated("c", "30Gi", "0.3", 1, None), annotated("d", "13.5Gi", "0", 1, "6Gi")]
    world = decide_and_write(World(nodes=(node("n", gpus=2),), deployments=tuple(deps)), config)
    world = dataclasses.replace(world, pods=tuple(pending_pods(world, "a")))
    world = bind_pending(world, config, lambda xs: xs, lambda xs: xs[0])
    assert sum(1 for p in world.pods if p.node) == 6
    per_gpu: dict[str, list[float]] = defaultdict(list)
    for p in world.pods:
        per_gpu[p.annotations["kvsched.io/gpu"]].append(float(p.annotations["kvsched.io/gpu-memory-fraction"]))
    assert sorted(per_gpu) == ["0", "1"]
    for shares in per_gpu.values():
        assert sum(shares) <= 1.0 - (1.0 + len(shares) * 0.5) / 80 + EPS
