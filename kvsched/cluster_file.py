"""Read a cluster file (YAML or JSON) into packer inputs, with errors that name the offending field path.

The format (camelCase like Kubernetes) is described in `kvsched plan --help` and in examples/cluster.yaml:
`gpus` and/or `nodes` (shorthand for identical GPUs), `models`, optional `current` and `options`, and the
optional memory headroom: `gpuMemoryReserve` (per GPU, overridden by a GPU's or node's `memoryReserve`),
`engineOverhead` (per replica, overridden by a model's `engineOverhead`) and `engineContext` (per replica),
defaulting to kvsched.settings' DEFAULT_* figures. Memory sizes are Kubernetes quantities ("80Gi", "81920Mi",
"85899345920" bytes) or plain numbers meaning GiB. Every problem raises `ClusterFileError` naming the path (e.g.
`models[3].size`); unknown keys are errors, never ignored.
Called by: `kvsched.cli` (the `plan` subcommand).
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import yaml

from kvsched import units
from kvsched.natural_order import gpu_key
from kvsched.packer import Gpu, GpuId, InvalidInput, Model, PackOptions, Slot
from kvsched.settings import (DEFAULT_ENGINE_CONTEXT_GIB, DEFAULT_ENGINE_OVERHEAD_GIB,
                              DEFAULT_GPU_MEMORY_RESERVE_GIB)

T = TypeVar("T")

TOP_KEYS = ("gpus", "nodes", "models", "current", "options", "gpuMemoryReserve", "engineOverhead",
            "engineContext")
GPU_KEYS = ("node", "index", "memory", "memoryReserve")
NODE_KEYS = ("name", "gpus", "gpuMemory", "memoryReserve")
MODEL_KEYS = ("name", "size", "requestRate", "sloSeconds", "replicas", "engineOverhead")
CURRENT_KEYS = ("model", "replica", "node", "gpu", "memoryFraction")
OPTION_KEYS = ("stabilityThreshold", "timeBudgetSeconds", "maxMigrations")

# The packer names its own fields in InvalidInput (`size_gib`, `memory_gib`, ...); these map them back to the
# keys of the file, per kind of object, so every error names the path the user wrote.
MODEL_FIELDS = {"name": "name", "size_gib": "size", "rate_rps": "requestRate", "slo_s": "sloSeconds",
                "replicas": "replicas", "overhead_gib": "engineOverhead", "context_gib": "engineContext"}
GPU_FIELDS = {"node": "node", "index": "index", "memory_gib": "memory", "reserve_gib": "memoryReserve"}
NODE_FIELDS = {"node": "name", "index": "gpus", "memory_gib": "gpuMemory", "reserve_gib": "memoryReserve"}
OPTION_FIELDS = {"stability_threshold_ratio": "stabilityThreshold", "time_budget_s": "timeBudgetSeconds",
                 "max_migrations": "maxMigrations"}
FILE_FIELDS = {**GPU_FIELDS, **MODEL_FIELDS, **OPTION_FIELDS}


def file_field(field: str) -> str:
    """The cluster file's key for a packer field name (unknown names unchanged): `size_gib` -> `size`."""
    return FILE_FIELDS.get(field, field)


class ClusterFileError(ValueError):
    """A cluster file is unreadable or invalid. `path` is the field path ("" for the whole document)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


def _checked(make: Callable[[], T], path: str, fields: Mapping[str, str]) -> T:
    """Build a packer object; its own validation errors become file errors at `path`.<file key>, the key
    found through `fields` (packer field name -> file key)."""
    try:
        return make()
    except InvalidInput as exc:
        raise ClusterFileError(f"{path}.{fields.get(exc.field, exc.field)}", exc.why) from None


@dataclass(frozen=True)
class Headroom:
    """Memory headroom figures that override the file's top-level keys (None: the file's, else the defaults), GiB."""

    gpu_memory_reserve_gib: float | None = None
    engine_overhead_gib: float | None = None
    engine_context_gib: float | None = None


# No headroom unless a GPU or model sets its own: the packer's earlier plans (tests and benchmarks whose figures
# were taken without headroom).
NO_HEADROOM = Headroom(0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Cluster:
    """Everything `solve` needs, validated. GPUs are sorted by node name in natural order (`gpu-2` before
    `gpu-10`), then index, so the plan reads in that order."""

    models: tuple[Model, ...]
    gpus: tuple[Gpu, ...]
    current: tuple[Slot, ...]
    options: PackOptions


def load_cluster_file(file: Path, overrides: Headroom = Headroom()) -> Cluster:
    """Read and validate `file`. JSON when the suffix is .json, YAML otherwise. `overrides` (the CLI's flags)
    win over the file's top-level headroom keys; a GPU's, node's or model's own key still wins over them.
    Raises ClusterFileError."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ClusterFileError("", "no such file") from None
    except IsADirectoryError:
        raise ClusterFileError("", "is a directory, not a cluster file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClusterFileError("", f"cannot read: {exc}") from None
    if file.suffix.lower() == ".json":
        return parse_cluster(_load_json(text), overrides)
    return parse_cluster(_load_yaml(text), overrides)


def _load_json(text: str) -> object:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ClusterFileError("", f"JSON error: key {key!r} appears twice in one object")
            out[key] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise ClusterFileError("", f"line {exc.lineno}, column {exc.colno}: JSON syntax error: {exc.msg}") from None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key repeated in one mapping (PyYAML keeps the last one silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            mark = key_node.start_mark
            raise ClusterFileError(
                "", f"line {mark.line + 1}, column {mark.column + 1}: key {key!r} appears twice in one mapping"
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _load_yaml(text: str) -> object:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ClusterFileError("", f"{where}YAML syntax error: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ClusterFileError("", f"YAML error: {exc}") from None


def parse_cluster(data: object, overrides: Headroom = Headroom()) -> Cluster:
    """Validate a decoded document into a Cluster. Raises ClusterFileError naming the field path. O(size).

    Headroom: a GPU's reserve is its own `memoryReserve`, else the override (the --gpu-memory-reserve flag),
    else the file's `gpuMemoryReserve`, else DEFAULT_GPU_MEMORY_RESERVE_GIB; likewise a model's engine overhead
    (`engineOverhead`); the engine context (`engineContext`) is one figure for every replica.
    """
    if data is None:
        raise ClusterFileError("", "the file is empty: expected a mapping with models and gpus or nodes")
    top = _mapping(data, "", TOP_KEYS)
    if "models" not in top:
        raise ClusterFileError("models", "is required (a list of models to place)")
    if "gpus" not in top and "nodes" not in top:
        raise ClusterFileError("gpus", "is required (a list of GPUs), or give the nodes shorthand")
    reserve = _headroom(top, "gpuMemoryReserve", overrides.gpu_memory_reserve_gib, DEFAULT_GPU_MEMORY_RESERVE_GIB)
    overhead, _ = _headroom(top, "engineOverhead", overrides.engine_overhead_gib, DEFAULT_ENGINE_OVERHEAD_GIB)
    context, _ = _headroom(top, "engineContext", overrides.engine_context_gib, DEFAULT_ENGINE_CONTEXT_GIB)
    gpus, gpu_paths = _parse_gpus(top, reserve)
    models = _parse_models(top["models"], overhead, context)
    current = _parse_current(top.get("current", []), models, gpu_paths)
    options = _parse_options(top.get("options", {}))
    return Cluster(models=models, gpus=gpus, current=current, options=options)


def _headroom(top: Mapping[str, object], key: str, override: float | None, default: float) -> tuple[float, str]:
    """A top-level headroom figure in GiB and where it came from: the override (a flag), else the file's key (a
    quantity >= 0), else the default."""
    if override is not None:
        return override, "--" + _FLAGS[key]
    if key in top:
        return _memory_gib_or_zero(top[key], key), key
    return default, "the default"


# The `kvsched plan` flag that overrides each top-level headroom key.
_FLAGS = {"gpuMemoryReserve": "gpu-memory-reserve", "engineOverhead": "engine-overhead",
          "engineContext": "engine-context"}


def _own_headroom(obj: Mapping[str, object], key: str, path: str, inherited: float) -> float:
    """An object's own headroom key (a quantity >= 0), else the figure it inherits from the top level."""
    return _memory_gib_or_zero(obj[key], f"{path}.{key}") if key in obj else inherited


def _checked_reserve(obj: Mapping[str, object], path: str, memory_gib: float, reserve: tuple[float, str]) -> float:
    """The GPU's reserve, which must leave it some memory: the object's own memoryReserve, else the top-level one."""
    if "memoryReserve" in obj:
        own = _memory_gib_or_zero(obj["memoryReserve"], f"{path}.memoryReserve")
        if own >= memory_gib:
            raise ClusterFileError(f"{path}.memoryReserve", f"{own:g}Gi must be less than the GPU memory "
                                   f"({memory_gib:g}Gi): nothing would be left to plan")
        return own
    value, source = reserve
    if value >= memory_gib:
        raise ClusterFileError(path, f"the GPU memory reserve ({value:g}Gi, from {source}) must be less than its "
                               f"GPU memory ({memory_gib:g}Gi): nothing would be left to plan")
    return value


def _parse_gpus(top: Mapping[str, object],
                reserve: tuple[float, str]) -> tuple[tuple[Gpu, ...], dict[GpuId, str]]:
    gpus: list[Gpu] = []
    where: dict[GpuId, str] = {}

    def add(gpu: Gpu, path: str) -> None:
        if gpu.id in where:
            raise ClusterFileError(path, f"GPU {gpu.id} is already listed at {where[gpu.id]}")
        where[gpu.id] = path
        gpus.append(gpu)

    for i, item in enumerate(_list(top.get("gpus", []), "gpus")):
        path = f"gpus[{i}]"
        obj = _mapping(item, path, GPU_KEYS)
        node = _name(obj, "node", path)
        index = _integer(obj, "index", path, minimum=0)
        memory_gib = _memory_gib(_required(obj, "memory", path), f"{path}.memory")
        reserve_gib = _checked_reserve(obj, path, memory_gib, reserve)
        add(_checked(lambda: Gpu(node=node, index=index, memory_gib=memory_gib, reserve_gib=reserve_gib), path,
                     GPU_FIELDS), path)
    for i, item in enumerate(_list(top.get("nodes", []), "nodes")):
        path = f"nodes[{i}]"
        obj = _mapping(item, path, NODE_KEYS)
        node = _name(obj, "name", path)
        count = _integer(obj, "gpus", path, minimum=1)
        memory_gib = _memory_gib(_required(obj, "gpuMemory", path), f"{path}.gpuMemory")
        reserve_gib = _checked_reserve(obj, path, memory_gib, reserve)
        for index in range(count):
            add(_checked(lambda: Gpu(node=node, index=index, memory_gib=memory_gib, reserve_gib=reserve_gib), path,
                         NODE_FIELDS), path)
    if not gpus:
        raise ClusterFileError("gpus", "no GPUs listed: give at least one in gpus or nodes")
    return tuple(sorted(gpus, key=lambda gpu: gpu_key(gpu.id))), where


def _parse_models(value: object, overhead: float, context: float) -> tuple[Model, ...]:
    models: list[Model] = []
    where: dict[str, str] = {}
    for i, item in enumerate(_list(value, "models")):
        path = f"models[{i}]"
        obj = _mapping(item, path, MODEL_KEYS)
        name = _name(obj, "name", path)
        if name in where:
            raise ClusterFileError(f"{path}.name", f"{name!r} is already used by {where[name]}")
        where[name] = path
        size_gib = _memory_gib(_required(obj, "size", path), f"{path}.size")
        rate_rps = _number(_required(obj, "requestRate", path), f"{path}.requestRate", minimum=0.0)
        slo_s = _seconds(_required(obj, "sloSeconds", path), f"{path}.sloSeconds", zero_ok=False)
        replicas = _integer(obj, "replicas", path, minimum=1, default=1)
        overhead_gib = _own_headroom(obj, "engineOverhead", path, overhead)
        models.append(_checked(lambda: Model(name=name, size_gib=size_gib, rate_rps=rate_rps, slo_s=slo_s,
                                             replicas=replicas, overhead_gib=overhead_gib, context_gib=context),
                               path, MODEL_FIELDS))
    return tuple(models)


def _parse_current(value: object, models: tuple[Model, ...], gpu_paths: Mapping[GpuId, str]) -> tuple[Slot, ...]:
    replicas = {m.name: m.replicas for m in models}
    slots: list[Slot] = []
    where: dict[tuple[str, int], str] = {}
    for i, item in enumerate(_list(value, "current")):
        path = f"current[{i}]"
        obj = _mapping(item, path, CURRENT_KEYS)
        model = _name(obj, "model", path)
        if model not in replicas:
            raise ClusterFileError(f"{path}.model", f"{model!r} is not a model listed under models")
        replica = _integer(obj, "replica", path, minimum=0)
        if replica >= replicas[model]:
            raise ClusterFileError(
                f"{path}.replica", f"{replica} is out of range: model {model!r} has {replicas[model]} replica(s)"
            )
        if (model, replica) in where:
            raise ClusterFileError(path, f"replica {replica} of {model!r} is already placed at {where[model, replica]}")
        where[model, replica] = path
        gpu = GpuId(_name(obj, "node", path), _integer(obj, "gpu", path, minimum=0))
        if gpu not in gpu_paths:
            raise ClusterFileError(path, f"GPU {gpu} is not listed under gpus or nodes")
        fraction = None
        if "memoryFraction" in obj:
            fraction = _number(obj["memoryFraction"], f"{path}.memoryFraction", minimum=0.0)
            if not 0.0 < fraction <= 1.0:
                raise ClusterFileError(f"{path}.memoryFraction", f"must be in (0, 1], got {fraction:g}")
        slots.append(Slot(model=model, replica=replica, gpu=gpu, memory_fraction=fraction))
    return tuple(slots)


def _parse_options(value: object) -> PackOptions:
    obj = _mapping(value, "options", OPTION_KEYS)
    defaults = PackOptions()
    stability = defaults.stability_threshold_ratio
    budget_s = defaults.time_budget_s
    if "stabilityThreshold" in obj:
        stability = _number(obj["stabilityThreshold"], "options.stabilityThreshold", minimum=0.0)
    if "timeBudgetSeconds" in obj:
        budget_s = _seconds(obj["timeBudgetSeconds"], "options.timeBudgetSeconds", zero_ok=True)
    max_migrations = defaults.max_migrations
    if obj.get("maxMigrations") is not None:  # null: no cap, as when the key is left out
        max_migrations = _integer(obj, "maxMigrations", "options", minimum=0)
    return _checked(lambda: PackOptions(stability_threshold_ratio=stability, time_budget_s=budget_s,
                                        max_migrations=max_migrations), "options", OPTION_FIELDS)


# ---- field readers: each names the path in its error ----


_describe = units.describe


def _mapping(value: object, path: str, keys: tuple[str, ...]) -> dict[str, object]:
    if not isinstance(value, dict):
        if not path:
            raise ClusterFileError("", f"must be a mapping with models and gpus or nodes, got {_describe(value)}")
        raise ClusterFileError(path, f"must be a mapping, got {_describe(value)}")
    for key in value:
        if not isinstance(key, str) or key not in keys:
            hint = difflib.get_close_matches(str(key), keys, n=1)
            suggestion = f"did you mean {hint[0]!r}? " if hint else ""
            raise ClusterFileError(
                path, f"unknown key {key!r} ({suggestion}expected one of: {', '.join(keys)})"
            )
    return value


def _list(value: object, path: str) -> list[object]:
    if not isinstance(value, list):
        raise ClusterFileError(path, f"must be a list, got {_describe(value)}")
    return value


def _required(obj: Mapping[str, object], key: str, path: str) -> object:
    if key not in obj:
        raise ClusterFileError(f"{path}.{key}", "is required")
    return obj[key]


def _name(obj: Mapping[str, object], key: str, path: str) -> str:
    value = _required(obj, key, path)
    if not isinstance(value, str) or not value.strip():
        raise ClusterFileError(f"{path}.{key}", f"must be a non-empty string, got {_describe(value)}")
    return value


def _integer(obj: Mapping[str, object], key: str, path: str, *, minimum: int, default: int | None = None) -> int:
    if key not in obj:
        if default is None:
            raise ClusterFileError(f"{path}.{key}", "is required")
        return default
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ClusterFileError(f"{path}.{key}", f"must be an integer, got {_describe(value)}")
    if value < minimum:
        raise ClusterFileError(f"{path}.{key}", f"must be >= {minimum}, got {value}")
    return value


def _number(value: object, path: str, *, minimum: float) -> float:
    try:
        return units.number(value, minimum=minimum)
    except units.UnitError as exc:
        raise ClusterFileError(path, str(exc)) from None


def _seconds(value: object, path: str, *, zero_ok: bool) -> float:
    """A number of seconds, or a duration string "500ms", "2s", "1.5m" (a bare numeric string is seconds)."""
    try:
        return units.seconds(value, zero_ok=zero_ok)
    except units.UnitError as exc:
        raise ClusterFileError(path, str(exc)) from None


def _memory_gib_or_zero(value: object, path: str) -> float:
    """Like `_memory_gib`, but 0 ("0", "0Gi", 0) is allowed: a headroom figure may be none; negative is an error."""
    try:
        return memory_gib_or_zero(value)
    except units.UnitError as exc:
        raise ClusterFileError(path, str(exc)) from None


def memory_gib_or_zero(value: object) -> float:
    """`units.memory_gib_or_zero`: a quantity or number of GiB >= 0. Raises UnitError. Also the CLI's parser of
    --gpu-memory-reserve, --engine-overhead and --engine-context."""
    return units.memory_gib_or_zero(value)


def _memory_gib(value: object, path: str) -> float:
    """A Kubernetes quantity string (bytes unless suffixed) or a plain number of GiB, as GiB; must be > 0."""
    try:
        return units.memory_gib(value)
    except units.UnitError as exc:
        raise ClusterFileError(path, str(exc)) from None
