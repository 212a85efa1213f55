"""Properties of the occupancy rule under random plans, holders and bind sequences: a bind never puts two
replicas of one model on a GPU, never overfills a GPU's memory, only takes planned slots, and filter passes a node
exactly when a bind there would succeed and
prioritize scores it at least COLD_SCORE; some holders have left (deleted) to exercise the return-to-GPU rule."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvsched.api.names import GPU_ANNOTATION, MODEL_LABEL
from kvsched.controller.slots import COLD_SCORE, NEUTRAL_SCORE, PlannedSlot, PodRef

from tests.extender.world import model, node, pod, world

NODES = ["n0", "n1", "n2"]
GPUS = 2
MEMORY_GIB = 80
SIZES = {"m0": 16, "m1": 40, "m2": 64}


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[dict], list[dict], list[dict], list[tuple[str, str]]]:
    models = []
    for name, size in SIZES.items():
        slots = draw(st.lists(st.tuples(st.sampled_from(NODES), st.integers(0, GPUS)), max_size=4, unique=True))
        models.append(model(name, f"{size}Gi", slots))
    holders = []
    for i in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(list(SIZES)))
        holders.append(pod(f"old-{i}", name, draw(st.sampled_from(NODES)), draw(st.integers(0, GPUS - 1))))
    gone = [pod(f"gone-{i}", draw(st.sampled_from(list(SIZES))), draw(st.sampled_from(NODES)),
                draw(st.integers(0, GPUS - 1))) for i in range(draw(st.integers(0, 3)))]
    binds = draw(st.lists(st.tuples(st.sampled_from(list(SIZES)), st.sampled_from(NODES)), max_size=12))
    return models, holders, gone, binds


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_binds_respect_the_plan_replicas_and_memory(
        scenario: tuple[list[dict], list[dict], list[dict], list[tuple[str, str]]]) -> None:
    models, holders, gone, binds = scenario
    cache = world([node(n, gpus=GPUS, memory_mib=MEMORY_GIB * 1024) for n in NODES], models, holders, gone=gone)
    planned = {(m["metadata"]["name"], s["node"], s["gpu"]) for m in models for s in m["status"]["slots"]}
    on_gpu: dict[tuple[str, int], list[str]] = {}
    for h in holders:
        on_gpu.setdefault((h["spec"]["nodeName"], int(h["metadata"]["annotations"][GPU_ANNOTATION])), []).append(
            h["metadata"]["labels"][MODEL_LABEL])
    for i, (model_name, node_name) in enumerate(binds):
        ref = PodRef("ml", f"new-{i}", f"uid-new-{i}", f"ml/{model_name}")
        passes = node_name in cache.filter(ref, [node_name]).passed
        score = cache.score(ref, [node_name]).get(node_name, NEUTRAL_SCORE)
        assert passes == (score >= COLD_SCORE)  # prioritize ranks every node filter passes above the others
        choice = cache.reserve(ref, node_name)
        assert passes == isinstance(choice, PlannedSlot)  # filter and bind agree
        if not isinstance(choice, PlannedSlot):
            continue
        gpu = (node_name, choice.gpu)
        assert (model_name, node_name, choice.gpu) in planned
        assert model_name not in on_gpu.get(gpu, [])  # no second replica of a model on one GPU
        on_gpu.setdefault(gpu, []).append(model_name)
        assert sum(SIZES[m] for m in on_gpu[gpu]) <= MEMORY_GIB  # never overfilled
