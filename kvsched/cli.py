"""The `kvsched` command line: argparse with one subcommand per job (`plan`, `controller`, `extender`, `serve`,
`gpu-holder`).

`kvsched plan FILE` reads a cluster file, runs the packer once and prints a table per GPU, optionally writing the
plan as JSON (`--output`) and a chart (`--plot`). Exit codes: 0 a plan was made (unplaced replicas are reported,
not failures), 1 the output or plot file could not be written, 2 bad usage or a bad cluster file.
Called by: the `kvsched` console script (`kvsched.cli:main`) and the CLI tests (`main(argv)`).

The packer, the file reader (which imports `kubernetes`) and matplotlib are imported inside `run_plan` so that
`kvsched --help` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from kvsched import __version__
from kvsched.plan_output import DEFAULT_TOP, TABLE_MAX_GPUS, VIEWS, View

if TYPE_CHECKING:
    from kvsched.controller.decide import Decision
    from kvsched.progress_line import ProgressLine

EXIT_OK = 0
EXIT_WRITE_FAILED = 1
EXIT_BAD_INPUT = 2

Handler = Callable[[argparse.Namespace], int]

MAIN_DESCRIPTION = """\
kvsched packs LLM serving replicas onto shared GPUs so that the worst KV-cache
pressure ratio (KVPR) is as small as possible. A GPU's KVPR is the summed load
(request rate / SLO) of its models over the memory their weights leave free.
"""

MAIN_EPILOG = """\
Run `kvsched COMMAND --help` for a command's options.
Exit codes: 0 success, 1 an output file could not be written, 2 bad usage or bad input.
"""

PLAN_DESCRIPTION = """\
Plan where every model replica of a cluster file goes, and print one row per
GPU (node, GPU, models, used/total memory, KVPR) and a summary (max KVPR, lower
bound, gap to the bound, retunes, migration steps, solve time). With a `current`
section it re-plans: new replicas are placed as well as the search can around
the running ones, which stay unless a plan that moves them is better by more
than the stability threshold, and then the fewest move; the steps say in which
order (never over a GPU's memory).

Big clusters: above 64 GPUs the printout has one row per node (GPUs, models,
used/total memory, max KVPR) instead of one per GPU; --view table shows every
GPU, --top N the N GPUs with the highest KVPR; --output always has them all.
Nodes are listed in natural order (gpu-2 before gpu-10). When stderr is a
terminal, a solve that takes more than a second shows its progress there on one
line (phase, best max KVPR so far, lower bound, gap), cleared when it ends.

Cluster file (YAML or JSON; JSON when the name ends in .json):

  gpus:                          # list GPUs one by one ...
    - {node: n1, index: 0, memory: 80Gi}
  nodes:                         # ... and/or whole nodes of identical GPUs
    - {name: n2, gpus: 8, gpuMemory: 80Gi}      # GPUs n2/0 .. n2/7
  models:
    - name: llama-8b
      size: 16Gi                 # weights
      requestRate: 4             # requests per second, over all replicas
      sloSeconds: 1              # latency SLO: seconds, or "500ms", "2s", "1m"
      replicas: 2                # optional, default 1; replicas never share a GPU
  current:                       # optional: where replicas run now (replica
    - {model: llama-8b, replica: 0, node: n1, gpu: 0}   # numbers do not matter)
  options:                       # optional
    stabilityThreshold: 0.05     # move nothing while within 5% of the best plan
    maxMigrations: 4             # at most 4 running replicas move (default: no cap)
    timeBudgetSeconds: 30        # soft limit on the search's seconds (0: first valid plan)
  gpuMemoryReserve: 1Gi          # optional memory headroom (defaults shown):
  engineOverhead: 3Gi            # per GPU never planned; per replica inside its
  engineContext: 512Mi           # fraction; per replica outside it (CUDA context)

A GPU or node may set its own memoryReserve, a model its own engineOverhead.
KVPR counts the KV memory really left: memory - reserve - the weights, engine
overheads and CUDA contexts of its replicas; the fractions leave the reserve and
the contexts outside them, so every engine's start-up check passes in any start
order. Memory is a Kubernetes quantity ("80Gi", "81920Mi", "85899345920" =
bytes) or a plain number meaning GiB (80). Unknown keys are errors, not ignored.
"""

PLAN_EPILOG = """\
Output JSON (--output): maxKVPR, lowerBound, gapPercent, retunes, solveSeconds,
keptCurrent, moves, shareRestarts, nextMoveGain, memoryUnit ("GiB"), placements [{model,
replica, node, gpu, memoryFraction, kvMemory}], gpus [{node, gpu, kvpr, memory,
usedMemory, reserve, engineMemory, kvMemory, models}], unplaced [{model,
replica, cause, reason}], steps [{model, replica, fromNode, fromGpu, toNode,
toGpu, stopFirst, kind}]. Memory values are GiB as numbers (3 decimals);
memoryFraction is the replica's share of its GPU's memory (for vLLM's
--gpu-memory-utilization) and kvMemory the KV cache that share leaves it; per
GPU, memory = usedMemory (weights) + reserve + engineMemory (engine overheads
and CUDA contexts) + kvMemory; cause is one of ModelTooLarge, NoRoomForEngine,
NoRoomForKVCache, TooFewGPUs, InsufficientCapacity; steps are
in order: fromNode/fromGpu null start a new replica, stopFirst true stops the
old replica before the new one starts (a cycle of moves), otherwise the new one
starts first; kind is start, move or resize (a running replica restarts on its
GPU with its planned memoryFraction: the share it runs with, a current slot's
memoryFraction, does not fit the plan; resizes come first); moves counts
running replicas that change GPU, shareRestarts the resizes; nextMoveGain is
by how much more moves would lower maxKVPR when maxMigrations cut the re-plan
short (re-plan again after these steps), else 0; an infinite KVPR (weights fill
a loaded GPU) or gap is null; times are seconds. gpus and placements are listed
by node name in natural order (gpu-2 before gpu-10), then GPU index; the JSON
always has every GPU, whatever --view prints.

Exit codes: 0 a plan was made (unplaced replicas are listed, not an error),
1 --output or --plot could not be written, 2 bad usage or a bad cluster file
(one line on stderr naming the field, e.g. models[3].size).

Example: kvsched plan examples/cluster.yaml --output placement.json --plot placement.svg
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default sys.argv[1:]) and run the chosen subcommand; returns the exit code.

    argparse itself exits with 2 on a usage error and 0 after --help/--version (SystemExit).
    """
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser. Each subcommand registers itself with an `add_<name>_parser(subparsers)` function
    that sets `handler` (argparse.Namespace -> exit code); add new subcommands to the list below."""
    parser = argparse.ArgumentParser(
        prog="kvsched",
        description=MAIN_DESCRIPTION,
        epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kvsched {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    add_plan_parser(subparsers)
    add_extender_parser(subparsers)
    add_controller_parser(subparsers)
    add_serve_parser(subparsers)
    add_gpu_holder_parser(subparsers)
    return parser


def add_plan_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `kvsched plan`."""
    plan = subparsers.add_parser(
        "plan",
        help="plan a cluster file and print the placement per GPU",
        description=PLAN_DESCRIPTION,
        epilog=PLAN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plan.add_argument("file", metavar="FILE", type=Path, nargs="?",
                      help="cluster file, YAML or JSON (format above); omit with --kubeconfig")
    plan.add_argument("--kubeconfig", metavar="PATH", nargs="?", const="", default=None,
                      help="plan the live cluster instead of a file: read its GPU nodes, ModelServings, annotated "
                      "Deployments and running pods, and print the plan the controller would make (writes "
                      "nothing). Without PATH: $KUBECONFIG, in-cluster, then ~/.kube/config")
    plan.add_argument("--node-selector", metavar="SELECTOR", default=None,
                      help="with --kubeconfig: the controller's node selector (default $KVSCHED_NODE_SELECTOR, "
                      "else every GPU node)")
    plan.add_argument("--namespace", metavar="NAMESPACE", default=None,
                      help="with --kubeconfig: only the ModelServings, Deployments and pods of NAMESPACE "
                      "(default: all namespaces)")
    plan.add_argument("--holder-namespace", metavar="NAMESPACE", default=None,
                      help="with --kubeconfig: the controller's namespace of GPU holder pods (default "
                      "$KVSCHED_HOLDER_NAMESPACE, else kvsched-system); $KVSCHED_GPU_HOLDERS as the controller's")
    plan.add_argument("-o", "--output", metavar="FILE", help="write the plan as JSON to FILE ('-': to stdout, "
                      "instead of the table)")
    plan.add_argument("--plot", metavar="FILE", type=Path, help="draw the plan to FILE.svg or FILE.png: a bar per "
                      "GPU with its models stacked (GiB) and its KVPR marked")
    plan.add_argument("--time-budget", "--time-budget-seconds", metavar="SECONDS", type=_non_negative_float,
                      dest="time_budget_s",
                      help="soft limit on the search's seconds; 0 gives the first valid plan at once (with "
                      "--kubeconfig: the controller's, $KVSCHED_TIME_BUDGET_S, else 5; overrides "
                      "options.timeBudgetSeconds; default 30)")
    plan.add_argument("--stability-threshold", metavar="RATIO", type=_non_negative_float,
                      dest="stability_threshold_ratio", help="keep the replicas of the file's `current` placement "
                      "where they run unless the best plan found beats that by more than this ratio, else move the "
                      "fewest replicas that get within it (with --kubeconfig: the controller's, "
                      "$KVSCHED_STABILITY_THRESHOLD; overrides options.stabilityThreshold; default 0.05 = 5%%)")
    plan.add_argument("--max-migrations", metavar="N", type=_non_negative_int, dest="max_migrations",
                      help="move at most N running replicas of the file's `current` placement; the plan is then "
                      "the lowest max KVPR reachable with N moves (with --kubeconfig: the controller's, "
                      "$KVSCHED_MAX_MIGRATIONS; overrides options.maxMigrations; default: no cap)")
    plan.add_argument("--gpu-memory-reserve", "--gpu-memory-reserve-gib", metavar="QUANTITY", type=_headroom_quantity,
                      dest="gpu_memory_reserve_gib",
                      help="memory of every GPU never planned (driver reservation and the gap between a GPU's "
                      "labelled and reported memory), e.g. 1Gi; overrides gpuMemoryReserve, not a GPU's own "
                      "memoryReserve (with --kubeconfig: the controller's, $KVSCHED_GPU_MEMORY_RESERVE_GIB; "
                      "default 1Gi)")
    plan.add_argument("--engine-overhead", "--engine-overhead-gib", metavar="QUANTITY", type=_headroom_quantity,
                      dest="engine_overhead_gib",
                      help="memory each replica's engine needs inside its fraction besides weights and KV cache "
                      "(activations, CUDA graphs, workspaces), e.g. 3Gi; overrides engineOverhead, not a model's "
                      "own (with --kubeconfig: the controller's, $KVSCHED_ENGINE_OVERHEAD_GIB; a model's "
                      "spec.engineOverhead wins; default 3Gi)")
    plan.add_argument("--engine-context", "--engine-context-gib", metavar="QUANTITY", type=_headroom_quantity,
                      dest="engine_context_gib",
                      help="memory each replica's engine process takes outside its fraction (its CUDA context), "
                      "e.g. 512Mi; overrides engineContext (with --kubeconfig: the controller's, "
                      "$KVSCHED_ENGINE_CONTEXT_GIB; default 512Mi)")
    plan.add_argument("--scheduler-name", metavar="NAME", default=None,
                      help="with --kubeconfig: the scheduler profile of managed pods, as the controller's "
                      "(default $KVSCHED_SCHEDULER_NAME, else kvsched)")
    plan.add_argument("--view", choices=VIEWS, default=None,
                      help="what the printout lists: 'table' one row per GPU, 'nodes' one row per node (GPUs, "
                      "models, used/total memory, max KVPR), 'top' the GPUs with the highest KVPR; default "
                      f"'auto': the table up to {TABLE_MAX_GPUS} GPUs, the nodes above (with --top: 'top')")
    plan.add_argument("--top", metavar="N", type=_positive_int, default=None,
                      help=f"list the N GPUs with the highest KVPR (implies --view top; default N {DEFAULT_TOP})")
    plan.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                      help="show the solve's progress on stderr: by default only when stderr is a terminal and "
                      "the solve takes more than a second (one line, rewritten in place, cleared at the end); "
                      "--progress shows it from the start even into a pipe or log (a line per update), "
                      "--no-progress never")
    plan.set_defaults(handler=run_plan)


EXTENDER_DESCRIPTION = """\
Run the scheduler extender: kube-scheduler's filter, prioritize and bind verbs
(POST /filter, /prioritize, /bind) for the `kvsched` scheduler profile, plus
GET /healthz, /readyz (200 once the pod, node and ModelServing watches have
listed) and /metrics. Pods labelled kvsched.io/model land on the GPU slot their
ModelServing's status plans; other pods pass through. See docs/extender.md.

Every setting is a flag or an environment variable (the flag wins).
"""


def add_extender_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `kvsched extender` (flags generated from kvsched.settings.ExtenderSettings)."""
    from kvsched.settings import ExtenderSettings, add_settings_arguments

    extender = subparsers.add_parser(
        "extender", help="run the scheduler extender (HTTP filter/prioritize/bind for kube-scheduler)",
        description=EXTENDER_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings_arguments(extender, ExtenderSettings)
    extender.set_defaults(handler=run_extender)


def run_extender(args: argparse.Namespace) -> int:
    """`kvsched extender`: build the settings, serve until a signal. Exit 2 on bad settings or kubeconfig."""
    from kvsched.runtime.extender import run
    from kvsched.k8s.client import ClientConfigError
    from kvsched.settings import ExtenderSettings, settings_from

    try:
        settings = settings_from(ExtenderSettings, args)
        return run(settings)
    except (ValueError, ClientConfigError) as e:
        return _fail(str(e), EXIT_BAD_INPUT, command="extender")


CONTROLLER_DESCRIPTION = """\
Run the controller: watch ModelServings, annotated Deployments (kvsched.io/model-size,
kvsched.io/request-rate, kvsched.io/slo-seconds), GPU Nodes and managed Pods;
re-plan with the packer on every change; write each ModelServing's status (the
planned slots the extender enforces), patch managed Deployments' pod templates,
and migrate replicas one eviction at a time. One replica leads (a Lease); only
the leader writes. GET /healthz, /readyz (200 once the watches have listed; says
who leads) and /metrics on the metrics port. See docs/controller.md.

Every setting is a flag or an environment variable (the flag wins).
"""


def add_controller_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `kvsched controller` (flags generated from kvsched.settings.ControllerSettings)."""
    from kvsched.settings import ControllerSettings, add_settings_arguments

    controller = subparsers.add_parser(
        "controller", help="run the controller (re-plan on change, statuses, template patches, migrations)",
        description=CONTROLLER_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings_arguments(controller, ControllerSettings)
    controller.set_defaults(handler=run_controller)


def run_controller(args: argparse.Namespace) -> int:
    """`kvsched controller`: build the settings, run until SIGTERM/SIGINT. Exit 2 on bad settings."""
    from kvsched.runtime.controller import run
    from kvsched.controller.selector import SelectorError
    from kvsched.k8s.client import ClientConfigError
    from kvsched.settings import ControllerSettings, settings_from

    try:
        return run(settings_from(ControllerSettings, args))
    except (ValueError, ClientConfigError, SelectorError, OSError) as e:
        return _fail(str(e), EXIT_BAD_INPUT, command="controller")


SERVE_DESCRIPTION = """\
Run the controller and the scheduler extender in one process (one Metrics
registry): the extender's HTTP API on --port, the controller's /healthz, /readyz
and /metrics on --metrics-port. Settings of both commands; the shared ones
(--kubeconfig, --scheduler-name, --sync-timeout-seconds, --log-level) apply to both.
"""


def add_serve_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `kvsched serve`."""
    from kvsched.settings import ControllerSettings, ExtenderSettings, add_settings_arguments

    serve = subparsers.add_parser(
        "serve", help="run the controller and the extender in one process", description=SERVE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter, conflict_handler="resolve")
    add_settings_arguments(serve, ControllerSettings)
    add_settings_arguments(serve, ExtenderSettings)
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """`kvsched serve`: the controller on a thread, the extender (uvicorn) on this one."""
    from kvsched.runtime.controller import serve
    from kvsched.controller.selector import SelectorError
    from kvsched.k8s.client import ClientConfigError
    from kvsched.settings import ControllerSettings, ExtenderSettings, settings_from

    try:
        return serve(settings_from(ControllerSettings, args), settings_from(ExtenderSettings, args))
    except (ValueError, ClientConfigError, SelectorError, OSError) as e:
        return _fail(str(e), EXIT_BAD_INPUT, command="serve")


GPU_HOLDER_DESCRIPTION = """\
Run as the process of a GPU holder pod (the controller creates them; see
docs/controller.md, "GPU holders"): read through NVML the UUID of the one GPU
the device plugin gave this container, write it onto the pod's own
kvsched.io/gpu-uuid annotation, then idle until SIGTERM. Exits 1 when NVML sees
0 or more than 1 GPU, or the annotation cannot be written.

Every setting is a flag or an environment variable (the flag wins).
"""


def add_gpu_holder_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `kvsched gpu-holder` (flags generated from kvsched.settings.HolderSettings)."""
    from kvsched.settings import HolderSettings, add_settings_arguments

    holder = subparsers.add_parser(
        "gpu-holder", help="hold one GPU for kvsched (the process of a holder pod)",
        description=GPU_HOLDER_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings_arguments(holder, HolderSettings)
    holder.set_defaults(handler=run_gpu_holder)


def run_gpu_holder(args: argparse.Namespace) -> int:
    """`kvsched gpu-holder`: build the settings, hold until SIGTERM. Exit 2 on bad settings or kubeconfig."""
    from kvsched.k8s.client import ClientConfigError
    from kvsched.runtime.holder import run
    from kvsched.settings import HolderSettings, settings_from

    try:
        return run(settings_from(HolderSettings, args))
    except (ValueError, ClientConfigError) as e:
        return _fail(str(e), EXIT_BAD_INPUT, command="gpu-holder")


def run_plan(args: argparse.Namespace) -> int:
    """`kvsched plan`: read, solve, print the table or JSON, write the files asked for. Returns the exit code."""
    from kvsched.cluster_file import ClusterFileError, Headroom, file_field, load_cluster_file
    from kvsched.packer import InvalidInput, solve
    from kvsched.plan_output import plan_to_json, plan_to_table
    from kvsched.plot import PLOT_SUFFIXES, write_plot

    view: View = args.view or ("top" if args.top is not None else "auto")
    if args.top is not None and view != "top":
        return _fail(f"--top: lists the hottest GPUs, it does not combine with --view {view}", EXIT_BAD_INPUT)
    headroom = Headroom(args.gpu_memory_reserve_gib, args.engine_overhead_gib, args.engine_context_gib)
    if args.kubeconfig is not None:
        return run_plan_live(args, view)
    if args.file is None:
        return _fail("give a cluster FILE, or --kubeconfig to plan the live cluster", EXIT_BAD_INPUT)
    file: Path = args.file
    plot_file: Path | None = args.plot
    if plot_file is not None and plot_file.suffix.lower() not in PLOT_SUFFIXES:
        return _fail(f"--plot: {str(plot_file)!r} must end in .svg or .png", EXIT_BAD_INPUT)
    try:
        cluster = load_cluster_file(file, headroom)
    except ClusterFileError as exc:
        return _fail(f"{file}: {exc}", EXIT_BAD_INPUT)
    options = cluster.options
    if args.time_budget_s is not None:
        options = dataclasses.replace(options, time_budget_s=args.time_budget_s)
    if args.stability_threshold_ratio is not None:
        options = dataclasses.replace(options, stability_threshold_ratio=args.stability_threshold_ratio)
    if args.max_migrations is not None:
        options = dataclasses.replace(options, max_migrations=args.max_migrations)
    progress = _progress_line(args.progress)
    try:
        plan = solve(cluster.models, cluster.gpus, current=cluster.current, options=options, progress=progress)
    except InvalidInput as exc:
        return _fail(f"{file}: {exc.obj}: {file_field(exc.field)}: {exc.why} (got {exc.value!r})", EXIT_BAD_INPUT)
    finally:
        if progress is not None:
            progress.close()

    document = json.dumps(plan_to_json(plan), indent=2, allow_nan=False) + "\n"
    if args.output == "-":
        sys.stdout.write(document)
        if plan.unplaced:
            print(f"kvsched plan: {len(plan.unplaced)} replica(s) could not be placed, see \"unplaced\"",
                  file=sys.stderr)
    else:
        sys.stdout.write(plan_to_table(plan, view=view, top=args.top or DEFAULT_TOP))
        if args.output is not None:
            try:
                Path(args.output).write_text(document, encoding="utf-8")
            except OSError as exc:
                return _fail(f"--output: cannot write {args.output}: {exc.strerror or exc}", EXIT_WRITE_FAILED)
            print(f"wrote {args.output}", file=sys.stderr)
    if plot_file is not None:
        try:
            write_plot(plan, cluster.models, plot_file)
        except OSError as exc:
            return _fail(f"--plot: cannot write {plot_file}: {exc.strerror or exc}", EXIT_WRITE_FAILED)
        print(f"wrote {plot_file}", file=sys.stderr)
    return EXIT_OK


def _progress_line(forced: bool | None) -> ProgressLine | None:
    """The progress display `--progress`/`--no-progress` (forced) or stderr being a terminal (None) asks for."""
    from kvsched.progress_line import TERMINAL_DELAY_S, ProgressLine

    terminal = sys.stderr.isatty()
    if forced is False or (forced is None and not terminal):
        return None
    width = shutil.get_terminal_size().columns
    return ProgressLine(sys.stderr, in_place=terminal, delay_s=0.0 if forced else TERMINAL_DELAY_S, width=width)


def run_plan_live(args: argparse.Namespace, view: View) -> int:
    """`kvsched plan --kubeconfig`: the controller's decision over the live cluster, printed, nothing written."""
    import os

    from kvsched.api.objects import World
    from kvsched.controller import SelectorError, decide
    from kvsched.controller.models import collect_models
    from kvsched.k8s.client import ClientConfigError, api_client
    from kvsched.k8s.rest import ApiError
    from kvsched.k8s.snapshot import read_world
    from kvsched.k8s.watch import WatchError
    from kvsched.packer import InvalidInput, solve
    from kvsched.plan_output import plan_to_json, plan_to_table
    from kvsched.plot import PLOT_SUFFIXES, write_plot
    from kvsched.runtime.controller import decision_config
    from kvsched.settings import ControllerSettings, env_name, settings_from

    plot_file: Path | None = args.plot
    if plot_file is not None and plot_file.suffix.lower() not in PLOT_SUFFIXES:
        return _fail(f"--plot: {str(plot_file)!r} must end in .svg or .png", EXIT_BAD_INPUT)
    # The controller's decision knobs, from the same flags and KVSCHED_* variables as `kvsched controller`; the
    # controller's other variables (ports, leader election) are none of plan's business and are not read.
    knobs = argparse.Namespace(node_selector=args.node_selector, scheduler_name=args.scheduler_name,
                               stability_threshold=args.stability_threshold_ratio,
                               max_migrations=args.max_migrations, time_budget_s=args.time_budget_s,
                               gpu_memory_reserve_gib=args.gpu_memory_reserve_gib,
                               engine_overhead_gib=args.engine_overhead_gib,
                               engine_context_gib=args.engine_context_gib,
                               gpu_holders=None, holder_namespace=args.holder_namespace)
    environ = {env_name(name): os.environ[env_name(name)] for name in vars(knobs) if env_name(name) in os.environ}
    try:
        settings = settings_from(ControllerSettings, knobs, environ)
    except ValueError as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    try:
        config = decision_config(settings)
    except SelectorError as exc:
        return _fail(f"--node-selector: {exc}", EXIT_BAD_INPUT)
    except ValueError as exc:  # a headroom value of the environment (the flags are checked when parsed)
        return _fail(str(exc), EXIT_BAD_INPUT)
    try:
        options = config.pack_options()
    except InvalidInput as exc:
        # Only the environment gets here (the flags are checked when parsed); name the variable.
        name = {"stability_threshold_ratio": "stability_threshold"}.get(exc.field, exc.field)
        return _fail(f"{env_name(name)}: {exc.why} (got {exc.value!r})", EXIT_BAD_INPUT)
    try:
        world: World = read_world(api_client(args.kubeconfig or None), args.namespace or None)
    except (ClientConfigError, ApiError, WatchError, OSError) as exc:
        return _fail(f"--kubeconfig: cannot read the cluster: {exc}", EXIT_BAD_INPUT)
    decision = decide(world, config,
                      lambda m, g, c, p: solve(m, g, current=c, planned=p, options=options), now="")
    for event in decision.events:
        if event.type == "Warning":
            print(f"kvsched plan: {event.target.kind} {event.target.namespace + '/' if event.target.namespace else ''}"
                  f"{event.target.name}: {event.reason}: {event.message}", file=sys.stderr)
    if decision.plan is None:
        print("kvsched plan: no ModelServing or annotated Deployment to plan", file=sys.stderr)
        return EXIT_OK
    plan = decision.plan
    document = json.dumps(plan_to_json(plan), indent=2, allow_nan=False) + "\n"
    if args.output == "-":
        sys.stdout.write(document)
    else:
        sys.stdout.write(plan_to_table(plan, view=view, top=args.top or DEFAULT_TOP))
        sys.stdout.write(restart_lines(decision))
        if args.output is not None:
            try:
                Path(args.output).write_text(document, encoding="utf-8")
            except OSError as exc:
                return _fail(f"--output: cannot write {args.output}: {exc.strerror or exc}", EXIT_WRITE_FAILED)
    if plot_file is not None:
        models = [e.model for e in collect_models(world, config.headroom()).entries if e.model is not None]
        try:
            write_plot(plan, models, plot_file)
        except OSError as exc:
            return _fail(f"--plot: cannot write {plot_file}: {exc.strerror or exc}", EXIT_WRITE_FAILED)
    return EXIT_OK


def restart_lines(decision: Decision) -> str:
    """The pods the controller would restart in place for their memory shares (docs/controller.md, "Memory
    shares"), as a block for the table; '' when there are none."""
    from kvsched.api.names import share_of, share_text
    from kvsched.controller.inventory import running_share

    restarts = [s for s in decision.steps if s.resize]
    if not restarts or decision.plan is None:
        return ""
    planned = {(p.model, p.gpu): decision.shares.get((p.model, p.gpu), share_of(p.memory_fraction))
               for p in decision.plan.placements}
    lines = ["", f"RESTARTS FOR MEMORY SHARES ({len(restarts)}; in place, one at a time, before any move):"]
    for step in restarts:
        runs = running_share(step.pod)
        lines.append(f"  {step.pod.namespace}/{step.pod.name} on {step.source.node} GPU {step.source.index}: runs "
                     f"with {'?' if runs is None else share_text(runs)}, planned "
                     f"{share_text(planned.get((step.model, step.source), 0.0))}")
    return "\n".join(lines) + "\n"


def _fail(message: str, code: int, command: str = "plan") -> int:
    """Print `kvsched COMMAND: message` as one line on stderr and return `code`. Each subcommand passes its own
    name, so a message never repeats it."""
    print(f"kvsched {command}: {message}", file=sys.stderr)
    return code


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 0")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 1")
    return value


def _headroom_quantity(text: str) -> float:
    """A flag's memory headroom in GiB: a Kubernetes quantity ("1Gi", "512Mi") or a plain number of GiB, >= 0."""
    from kvsched.units import UnitError, headroom_gib

    try:
        return headroom_gib(text)
    except UnitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value
