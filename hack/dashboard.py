"""Generate the Grafana dashboard shipped with the chart (helm/kvsched/dashboards/kvsched.json) with Grafana's
foundation SDK (a build-only dependency, in the `dev` extra).

`python -m hack.dashboard` rewrites the JSON (`make dashboard`); `--check` exits 1 when the committed file differs
from this generator's output. Every query reads only metrics exported by kvsched/metrics.py (tests/chart checks
it, and evaluates every query with a real Prometheus). Gauges that describe the plan are taken from the replica
that leads (`kvsched_is_leader == 1`): standbys do not plan and may hold stale values.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from grafana_foundation_sdk.builders import bargauge, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.builders.common import StackingConfig, VizLegendOptions
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BarGaugeDisplayMode, LegendDisplayMode, LegendPlacement, StackingMode, VizOrientation,
)
from grafana_foundation_sdk.models.dashboard import DataSourceRef, DashboardCursorSync

DASHBOARD_PATH = Path(__file__).resolve().parent.parent / "helm" / "kvsched" / "dashboards" / "kvsched.json"
UID = "kvsched-overview"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
LEADER = "and on (instance) kvsched_is_leader == 1"


def query(expr: str, legend: str, ref: str, instant: bool = False) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)
    return q.instant() if instant else q.range()


def series(title: str, description: str, unit: str, *queries: prometheus.Dataquery, width: int = 12,
           stacked: bool = False) -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE)
             .height(8).span(width).line_width(1).fill_opacity(10)
             .legend(VizLegendOptions().display_mode(LegendDisplayMode.TABLE).placement(LegendPlacement.BOTTOM)
                     .show_legend(True)))
    if stacked:
        panel = panel.stacking(StackingConfig().mode(StackingMode.NORMAL))
    for q in queries:
        panel = panel.with_target(q)
    return panel


def build() -> dashboard.Dashboard:
    """The dashboard: plan quality, the GPUs, the planner's work, the extender, who leads."""
    plan_quality = series(
        "Max KVPR and its lower bound",
        "The largest KV-cache pressure ratio (load / free GiB) of the current plan, against the proven lower "
        "bound on the optimum: the gap is what a better plan could still gain.", "none",
        query(f"max(kvsched_max_kvpr {LEADER})", "max KVPR", "A"),
        query(f"max(kvsched_kvpr_lower_bound {LEADER})", "lower bound", "B"))
    gpu_kvpr = (bargauge.Panel().title("KVPR per GPU").datasource(DATASOURCE)
                .description("KVPR of every planned GPU, by node and GPU index (now).")
                .height(8).span(12).unit("none").min(0)
                .display_mode(BarGaugeDisplayMode.GRADIENT).orientation(VizOrientation.HORIZONTAL)
                .with_target(query(f"sort_desc(kvsched_gpu_kvpr {LEADER})", "{{node}} / GPU {{gpu}}", "A",
                                   instant=True)))
    gpu_memory = series(
        "GPU memory used by model weights",
        "Bytes of model weights the plan puts on each GPU (the rest is KV cache).", "bytes",
        query(f"sum by (node, gpu) (kvsched_gpu_memory_used_bytes {LEADER})", "{{node}} / GPU {{gpu}}", "A"),
        width=24)
    retunes = series(
        "Retunes per minute",
        "Mid-pack raises of the target T in the plans solved (a retune saves a failed bisection pass).", "none",
        query("sum(rate(kvsched_packer_retunes_total[$__rate_interval])) * 60", "retunes / min", "A"), width=8)
    placement = series(
        "Placement duration",
        "Seconds one re-plan takes (the packer's solve).", "s",
        query("histogram_quantile(0.5, sum by (le) (rate(kvsched_placement_duration_seconds_bucket"
              "[$__rate_interval])))", "p50", "A"),
        query("histogram_quantile(0.99, sum by (le) (rate(kvsched_placement_duration_seconds_bucket"
              "[$__rate_interval])))", "p99", "B"), width=8)
    decisions = series(
        "Decisions and re-plans",
        "Decisions the controller's loop made and re-plans it solved, per minute. A decision follows every change "
        "it watches (and a resync every 30 s); a re-plan only a change of a model or the GPUs: on an idle cluster "
        "re-plans stay at 0.", "none",
        query("sum(rate(kvsched_reconcile_rounds_total[$__rate_interval])) * 60", "decisions / min", "A"),
        query("sum(rate(kvsched_placement_duration_seconds_count[$__rate_interval])) * 60", "re-plans / min", "B"),
        width=8)
    models = series(
        "Models by state",
        "ModelServings by state: placed, partial, unschedulable, invalid, migrating.", "none",
        query(f"sum by (state) (kvsched_models {LEADER})", "{{state}}", "A"), width=8, stacked=True)
    migrations = series(
        "Migrations",
        "Replica migrations started (evictions) per interval, by reason; and the migration steps decided, by "
        "kind (move, resize): over a settled change the two add up to the same.", "none",
        query("sum by (reason) (increase(kvsched_migrations_total[$__rate_interval]))", "{{reason}}", "A"),
        query("sum by (kind) (increase(kvsched_replan_steps_total[$__rate_interval]))", "planned {{kind}}", "B"),
        width=8)
    latency = series(
        "Extender p99 latency by verb",
        "99th percentile of the seconds the extender takes to answer filter, prioritize and bind.", "s",
        query("histogram_quantile(0.99, sum by (verb, le) (rate(kvsched_extender_request_duration_seconds_bucket"
              "[$__rate_interval])))", "{{verb}}", "A"), width=8)
    requests = series(
        "Extender requests and bind conflicts",
        "Requests per second by verb and outcome; bind conflicts are binds refused because another pod took "
        "the slot meanwhile (the scheduler retries them).", "reqps",
        query("sum by (verb, outcome) (rate(kvsched_extender_requests_total[$__rate_interval]))",
              "{{verb}} {{outcome}}", "A"),
        query("sum(rate(kvsched_bind_conflicts_total[$__rate_interval]))", "bind conflicts", "B"), width=8)
    watches = series(
        "Watch relists and errors",
        "Per collection: lists made again because a watch's resourceVersion was gone (410), and lists or watches "
        "that failed and are retried with backoff. While any is reconnecting the controller writes nothing.",
        "none",
        query("sum by (resource) (increase(kvsched_watch_relists_total[$__rate_interval]))", "relist {{resource}}",
              "A"),
        query("sum by (resource) (increase(kvsched_watch_errors_total[$__rate_interval]))", "error {{resource}}",
              "B"), width=12)
    start_gate = series(
        "Start gate and disruption budget",
        "One engine starts per GPU at a time: pending replicas that could bind but for a replica starting on the "
        "GPU (bound, not Ready, within the start timeout), and the extender's refusals at the gate per minute "
        "(filter answers with no node passed, binds). Waits that last show slow or crash-looping start-ups. "
        "Restarting pods: managed pods stopping or starting, what --max-restarting bounds for migration waves.",
        "none",
        query(f"max(kvsched_start_gate_waiting_pods {LEADER})", "waiting pods", "A"),
        query("sum by (verb) (rate(kvsched_start_gate_refusals_total[$__rate_interval])) * 60",
              "{{verb}} refusals / min", "B"),
        query(f"max(kvsched_restarting_pods {LEADER})", "restarting pods", "C"), width=24)
    leader = (stat.Panel().title("Leader and cache").datasource(DATASOURCE)
              .description("1 for the replica that holds the leader Lease (only it writes), and whether each "
                           "replica's watches have listed (cache synced).")
              .height(8).span(12).unit("none")
              .with_target(query("max by (instance) (kvsched_is_leader)", "leader {{instance}}", "A",
                                 instant=True))
              .with_target(query("max by (instance) (kvsched_cache_synced)", "synced {{instance}}", "B",
                                 instant=True)))
    holders = series(
        "GPUs held through the device plugin",
        "GPU holder pods: held is the GPUs the device plugin gave kvsched (the holder reported its GPU's UUID; "
        "replicas bind only to these), waiting the holders created but not reporting yet (Pending: another pod "
        "holds the node's GPUs; or starting). Both 0 with --gpu-holders=false.", "none",
        query(f"sum by (state) (kvsched_gpu_holders {LEADER})", "{{state}}", "A"), width=24, stacked=True)
    layout: list[tuple[str, list[Any]]] = [
        ("Plan", [plan_quality, gpu_kvpr, gpu_memory]),
        ("Planner", [retunes, placement, models]),
        ("Migrations and extender", [migrations, latency, requests]),
        ("Replicas", [leader, watches, decisions]),
        ("Start-up", [start_gate]),
        ("GPU holders", [holders]),
    ]
    board = (dashboard.Dashboard("kvsched").uid(UID).tags(["kvsched", "gpu", "scheduler"])
             .description("kvsched: KV-cache pressure of the GPU plan, the planner and the scheduler extender.")
             .refresh("30s").time("now-3h", "now").tooltip(DashboardCursorSync.CROSSHAIR).editable()
             .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")))
    panel_id = 0
    for title, panels in layout:  # Grafana wants a unique id per panel, rows included
        panel_id += 1
        board = board.with_row(dashboard.Row(title).id(panel_id))
        for panel in panels:
            panel_id += 1
            board = board.with_panel(panel.id(panel_id))
    return board


def render() -> str:
    """The dashboard JSON as committed: keys sorted, two-space indent, a final newline."""
    model = json.loads(json.dumps(build().build(), cls=JSONEncoder))
    return json.dumps(model, indent=2, sort_keys=True) + "\n"


def queries(model: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard model, in panel order."""
    return [t["expr"] for p in model.get("panels", []) for t in p.get("targets", []) if t.get("expr")]


def metric_names(expr: str) -> set[str]:
    """The kvsched_* metric names an expression reads (series names as exposed, e.g. ..._bucket)."""
    return set(re.findall(r"\bkvsched_[a-z_]+\b", expr))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hack.dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether the committed JSON is current")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not DASHBOARD_PATH.exists() or DASHBOARD_PATH.read_text() != text:
            print(f"{DASHBOARD_PATH} is stale: run `make dashboard`", file=sys.stderr)
            return 1
        return 0
    DASHBOARD_PATH.parent.mkdir(parents=True, exist_ok=True)
    DASHBOARD_PATH.write_text(text)
    print(f"wrote {DASHBOARD_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
