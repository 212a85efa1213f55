"""The controller's decision core at scale, without an API server: how long one decision takes and how many
writes it asks for, on a synthetic world (N ModelServings with their Deployments on G GPUs).

Phases: the first decision (every status written) with a budget of 0 for comparison and with the controller's
budget (what it does: the first plan gets the whole budget), the same world again (must write nothing), the world with
every planned replica running (pods on their slots), then one model's request rate raised 5x (writes and
evictions of that re-plan). Figures, not tests. Time is wall time (median of --repeat runs per phase).
Run: `python -m bench.controller [--models 1000] [--gpus 500] [--budget 5] [--repeat 3]`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import random
import statistics
import time
from typing import Any, Sequence

from kvsched.api.names import DEFAULT_SCHEDULER_NAME, GPU_ANNOTATION, MODEL_LABEL
from kvsched.api.objects import DeploymentObj, ModelServingObj, NodeObj, PodObj, World
from kvsched.controller import DecisionConfig, decide
from kvsched.controller.decide import Decision
from kvsched.packer import Gpu, Model, PackOptions, Plan, Slot, solve


def world(models: int, gpus: int, seed: int = 0) -> World:
    rng = random.Random(seed)
    nodes = []
    for n in range((gpus + 7) // 8):
        count = min(8, gpus - 8 * n)
        memory = 81920 if n % 2 == 0 else 40960
        nodes.append(NodeObj(f"node-{n:04d}", labels={"nvidia.com/gpu.memory": str(memory)},
                             gpu_capacity=str(count)))
    deployments, servings = [], []
    for m in range(models):
        name = f"model-{m:05d}"
        deployments.append(DeploymentObj("bench", name, replicas=1 + (m % 7 == 0),
                                         template={"spec": {"containers": [{"name": "server"}]}}))
        servings.append(ModelServingObj("bench", name, spec={
            "workloadRef": {"kind": "Deployment", "name": name}, "modelSize": f"{rng.choice([2, 4, 8, 14])}Gi",
            "requestRate": round(rng.uniform(0.5, 5.0), 2), "sloSeconds": rng.choice([0.5, 1, 2])}))
    return World(tuple(nodes), (), tuple(deployments), tuple(servings))


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Strategic merge for the controller's patches: maps merge, `containers`/`env` merge by name."""
    out = copy.deepcopy(target)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif key in ("containers", "env") and isinstance(value, list):
            by_name = {item["name"]: item for item in out.get(key, [])}
            for item in value:
                by_name[item["name"]] = _merge(by_name.get(item["name"], {}), item)
            out[key] = list(by_name.values())
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply(w: World, d: Decision) -> World:
    """The world after the API server took the decision's status writes and Deployment patches."""
    statuses = {s.key: s.status for s in d.statuses}
    servings = tuple(dataclasses.replace(ms, status=dict(statuses[ms.key])) if ms.key in statuses else ms
                     for ms in w.model_servings)
    patches = {p.key: p.patch["spec"] for p in d.deployment_patches}
    deployments = []
    for dep in w.deployments:
        if dep.key in patches:
            whole = _merge({"template": dict(dep.template), "strategy": dict(dep.strategy)}, patches[dep.key])
            dep = dataclasses.replace(dep, template=whole["template"], strategy=whole["strategy"])
        deployments.append(dep)
    return dataclasses.replace(w, model_servings=servings, deployments=tuple(deployments))


def run_pods(w: World) -> World:
    pods = [PodObj("bench", f"{ms.name}-{i}", node=s["node"], labels={MODEL_LABEL: ms.name},
                   annotations={GPU_ANNOTATION: str(s["gpu"])}, scheduler_name=DEFAULT_SCHEDULER_NAME, ready=True)
            for ms in w.model_servings for i, s in enumerate(ms.status.get("slots") or [])]
    return dataclasses.replace(w, pods=tuple(pods))


def timed(w: World, budget_s: float, repeat: int) -> tuple[float, Decision]:
    def planner(models: Sequence[Model], gpus: Sequence[Gpu], current: Sequence[Slot],
                planned: Sequence[Slot]) -> Plan:
        return solve(models, gpus, current=current, planned=planned, options=PackOptions(time_budget_s=budget_s))

    times, decision = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        decision = decide(w, DecisionConfig(), planner, now="2026-01-01T00:00:00Z")
        times.append(time.perf_counter() - start)
    assert decision is not None
    return statistics.median(times), decision


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--gpus", type=int, default=500)
    ap.add_argument("--budget", type=float, default=5.0, help="packer time budget per decision, seconds")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    w = world(args.models, args.gpus)
    rows: list[tuple[str, float, Decision]] = []
    t, d = timed(w, 0.0, args.repeat)
    rows.append(("first decision, budget 0 (a quick plan)", t, d))
    t, d = timed(w, args.budget, args.repeat)
    rows.append((f"first decision, budget {args.budget:g}s (the controller's)", t, d))
    w = run_pods(apply(w, d))
    t, d = timed(w, args.budget, args.repeat)
    rows.append(("every replica running, unchanged", t, d))
    w = apply(w, d)
    t, d = timed(w, args.budget, args.repeat)
    rows.append(("unchanged again", t, d))
    first = w.model_servings[0]
    spec: dict[str, Any] = {**first.spec, "requestRate": float(first.spec["requestRate"]) * 5}
    w = dataclasses.replace(w, model_servings=(dataclasses.replace(first, spec=spec), *w.model_servings[1:]))
    t, d = timed(w, args.budget, args.repeat)
    rows.append(("one rate x5", t, d))
    print(f"{args.models} models, {args.gpus} GPUs, median of {args.repeat}")
    print(f"{'phase':36} {'seconds':>8} {'writes':>7} {'statuses':>8} {'steps':>6} {'max KVPR':>9}")
    for name, t, d in rows:
        kvpr = d.plan.max_kvpr if d.plan else 0.0
        print(f"{name:36} {t:8.3f} {d.writes:7d} {len(d.statuses):8d} {len(d.steps):6d} {kvpr:9.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
