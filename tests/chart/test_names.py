"""The chart's YAML spells the names the code declares once: the CRD (helm/kvsched/crds and deploy/crds) against
kvsched.api.names, the ClusterRole's rules for it, the Grafana dashboard's queries against kvsched.metrics, and the
scheduler name and the annotation, label and env names the chart mentions. Renaming one side fails a test here.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hack.chart import CHART_DIR, REPO_ROOT, Helm, documents
from kvsched.api import names
from kvsched.metrics import Metrics

CRD_FILES = sorted([*(CHART_DIR / "crds").glob("*.yaml"), *(REPO_ROOT / "deploy" / "crds").glob("*.yaml")])
DASHBOARDS = sorted((CHART_DIR / "dashboards").glob("*.json"))

# kvsched metrics with no dashboard panel, each with the reason. Empty: every metric is on the dashboard.
UNPANELLED: dict[str, str] = {}


# -- the CRD ---------------------------------------------------------------------------------------------------
def crd(path: Path) -> dict[str, Any]:
    [doc] = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    assert doc["kind"] == "CustomResourceDefinition", path
    return doc  # type: ignore[no-any-return]


def test_the_chart_and_deploy_have_the_crd() -> None:
    assert [p.name for p in CRD_FILES] == [f"{names.PLURAL}.{names.GROUP}.yaml"] * 2


@pytest.mark.parametrize("path", CRD_FILES, ids=[str(p.relative_to(REPO_ROOT)) for p in CRD_FILES])
def test_crd_spells_the_names(path: Path) -> None:
    doc = crd(path)
    spec = doc["spec"]
    assert doc["metadata"]["name"] == f"{names.PLURAL}.{names.GROUP}"
    assert spec["group"] == names.GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == names.KIND
    assert spec["names"]["plural"] == names.PLURAL
    assert spec["names"]["singular"] == names.KIND.lower()
    assert spec["names"]["listKind"] == f"{names.KIND}List"
    # One version, served and stored: the one the code reads and writes (kvsched.api.names.VERSION).
    assert [(v["name"], v["served"], v["storage"]) for v in spec["versions"]] == [(names.VERSION, True, True)]
    # The controller writes the plan to the status subresource (kvsched/k8s/writers.py, `.../status`).
    assert spec["versions"][0]["subresources"] == {"status": {}}
    # shortNames (`ms`) are for kubectl only: the code never spells them, so kvsched.api.names has none.


# -- RBAC for the CRD ------------------------------------------------------------------------------------------
def test_cluster_role_names_the_crd_as_the_code_does(helm: Helm) -> None:
    [role] = [d for d in documents(helm.template()) if d["kind"] == "ClusterRole"]
    crd_rules = [r for r in role["rules"] if names.GROUP in r["apiGroups"]]
    assert crd_rules, f"the ClusterRole grants nothing in {names.GROUP}"
    resources = {res for r in crd_rules for res in r["resources"]}
    assert resources == {names.PLURAL, f"{names.PLURAL}/status"}
    assert all(r["apiGroups"] == [names.GROUP] for r in crd_rules), "the CRD's group shares a rule with another"


# -- the dashboard ---------------------------------------------------------------------------------------------
def exprs(node: object) -> Iterator[str]:
    """Every PromQL `expr` anywhere in a dashboard model (panels, rows' nested panels, templating)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from exprs(item)


def kvsched_families() -> dict[str, str]:
    """Every metric kvsched exports: family name (without `_total`) -> type (gauge, counter, histogram)."""
    return {f.name: f.type for f in Metrics().registry.collect()}


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def family_of(series: str, families: dict[str, str]) -> str | None:
    """The family a series name in a query belongs to: a gauge by its name, a counter by `<name>_total`, a
    histogram by `<name>_bucket`, `_sum` or `_count`; None when no kvsched metric exposes it."""
    for family, kind in families.items():
        if any(series == family + suffix for suffix in SUFFIXES[kind]):
            return family
    return None


def queried_series(dashboard: Path) -> set[str]:
    return {name for e in exprs(json.loads(dashboard.read_text())) for name in re.findall(r"\bkvsched_\w+", e)}


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_every_series_the_dashboard_queries_is_a_kvsched_metric(dashboard: Path) -> None:
    families = kvsched_families()
    series = queried_series(dashboard)
    assert series, f"{dashboard} queries no kvsched metric"
    assert sorted(s for s in series if family_of(s, families) is None) == []


def test_every_kvsched_metric_has_a_panel_or_a_reason() -> None:
    assert DASHBOARDS, f"no dashboard in {CHART_DIR / 'dashboards'}"
    families = kvsched_families()
    panelled = {family_of(s, families) for d in DASHBOARDS for s in queried_series(d)}
    assert sorted(set(families) - panelled - set(UNPANELLED)) == [], "no panel, and not in UNPANELLED"
    assert sorted(set(UNPANELLED) & panelled) == [], "has a panel: remove it from UNPANELLED"
    assert set(UNPANELLED) <= set(families), "UNPANELLED names a metric kvsched does not export"


# -- scheduler name, annotations, labels, env --------------------------------------------------------------------
def test_the_charts_scheduler_name_is_the_codes(helm: Helm) -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    assert values["schedulerName"] == names.DEFAULT_SCHEDULER_NAME
    docs = documents(helm.template())
    [config_map] = [d for d in docs if d["kind"] == "ConfigMap" and "scheduler-config.yaml" in d.get("data", {})]
    config = yaml.safe_load(config_map["data"]["scheduler-config.yaml"])
    assert [p["schedulerName"] for p in config["profiles"]] == [names.DEFAULT_SCHEDULER_NAME]
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    [kvsched] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "kvsched"]
    assert f"--scheduler-name={names.DEFAULT_SCHEDULER_NAME}" in kvsched["args"]


def code_names() -> set[str]:
    """Every string constant of kvsched.api.names."""
    return {v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)}


# Names under kvsched.io/ the chart uses for itself, not shared with the code.
CHART_ONLY = {"kvsched.io/dashboard"}  # Chart.yaml: where the chart's dashboard JSON is


def chart_texts() -> Iterator[tuple[Path, str]]:
    for path in sorted(CHART_DIR.rglob("*")):
        if path.is_file() and path.suffix in (".yaml", ".tpl", ".txt", ".json") and path.parent.name != "crds":
            yield path, path.read_text()


def test_annotation_label_and_env_names_in_the_chart_are_the_codes() -> None:
    known = code_names() | CHART_ONLY
    pattern = re.compile(r"\b(?:kvsched\.io|nvidia\.com)/[A-Za-z0-9._-]*[A-Za-z0-9]|\b(?:KVSCHED|NVIDIA)_[A-Z0-9_]+")
    found = {(m, str(path.relative_to(CHART_DIR))) for path, text in chart_texts() for m in pattern.findall(text)}
    assert found, "the chart mentions no annotation, label or env name"
    assert sorted((m, p) for m, p in found if m not in known) == []


def test_the_charts_notes_show_the_codes_model_annotations_and_env() -> None:
    notes = (CHART_DIR / "templates" / "NOTES.txt").read_text()
    for name in (*names.MODEL_ANNOTATIONS, names.MEMORY_FRACTION_ENV, names.VISIBLE_DEVICES_ENV,
                 names.GPU_ANNOTATION):
        assert name in notes, name
