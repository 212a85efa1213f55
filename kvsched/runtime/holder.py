"""`kvsched gpu-holder`: the process of a GPU holder pod. Reads the UUID of the one GPU the device plugin gave
the container (NVML, the `nvidia-ml-py` package, module `pynvml`), writes it onto its own pod as the
`kvsched.io/gpu-uuid` annotation, then idles until SIGTERM.

- Exactly one GPU must be visible: 0 (no GPU given: the pod asked for none, or the container runtime did not hand
  it over) or more than one (the pod asked for more, or `NVIDIA_VISIBLE_DEVICES=all` leaked in) is an error that
  names what was seen, and the process exits 1 so that the kubelet restarts it and the pod shows the trouble.
- The write is a merge patch of one annotation: idempotent. The device plugin allocates GPUs per pod, so a
  restarted container sees the same GPU and writes the same value; a value that differs is logged as a warning
  and replaced (NVML is the truth about what this container holds).
- Idling is one `Event.wait()`: no polling, no CPU while it holds the GPU.
Called by: kvsched.cli (`kvsched gpu-holder`), tests/runtime/test_holder.py (with a fake NVML and a fake API).
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading
import time
from typing import Any, Callable, Protocol

from kvsched.api.names import GPU_UUID_ANNOTATION
from kvsched.settings import HolderSettings

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1


class HolderError(RuntimeError):
    """The holder cannot report its GPU; str() says why (for the log and the pod's termination message)."""


class PodAnnotator(Protocol):
    """What the holder needs from the API: read its pod's annotations, merge-patch annotations onto it. Both raise
    on failure (kvsched.k8s.writers.ApiWriter does)."""

    def pod_annotations(self, namespace: str, name: str) -> dict[str, str]: ...

    def annotate(self, namespace: str, name: str, annotations: dict[str, str]) -> Any: ...


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_gpu_uuid(nvml: Any) -> str:
    """The UUID (`GPU-xxxxxxxx-...`) of the one GPU NVML sees through `nvml` (the `pynvml` module or a fake with
    its functions). Raises HolderError when NVML fails or sees 0 or more than 1 GPU. O(GPUs)."""
    try:
        nvml.nvmlInit()
    except Exception as e:
        raise HolderError(f"NVML did not initialise ({e}): no NVIDIA driver visible in this container (does the "
                          "holder pod request nvidia.com/gpu: 1 on a node with the device plugin?)") from None
    try:
        count = int(nvml.nvmlDeviceGetCount())
        uuids = [_text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))) for i in range(count)]
    except Exception as e:
        raise HolderError(f"NVML failed while listing GPUs: {e}") from None
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # nothing held: a failed shutdown changes nothing for the answer
            pass
    if len(uuids) != 1:
        seen = ", ".join(uuids) if uuids else "none"
        raise HolderError(f"a GPU holder must see exactly 1 GPU, NVML sees {len(uuids)} ({seen}): the pod must "
                          "request nvidia.com/gpu: 1 and must not set NVIDIA_VISIBLE_DEVICES itself")
    return uuids[0]


def report_uuid(api: PodAnnotator, namespace: str, name: str, uuid: str) -> bool:
    """Write `uuid` as the pod's GPU_UUID_ANNOTATION unless it is there already; True when it wrote. A different
    value there is replaced with a warning. Raises what `api` raises."""
    current = api.pod_annotations(namespace, name).get(GPU_UUID_ANNOTATION)
    if current == uuid:
        return False
    if current is not None:
        log.warning("pod %s/%s said it holds GPU %s; NVML says %s: correcting", namespace, name, current, uuid)
    api.annotate(namespace, name, {GPU_UUID_ANNOTATION: uuid})
    return True


def hold(settings: HolderSettings, nvml: Any, api: PodAnnotator, stop: threading.Event, *,
         sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> int:
    """Read the GPU, report it (retrying 1 s apart for `settings.write_timeout_s`), then wait for `stop`.
    Returns the exit code; a HolderError or a write that keeps failing is logged and returns EXIT_FAILED."""
    if not settings.pod_name or not settings.pod_namespace:
        log.error("pod name and namespace are required (--pod-name/--pod-namespace, or KVSCHED_POD_NAME and "
                  "KVSCHED_POD_NAMESPACE from the Downward API)")
        return EXIT_FAILED
    try:
        uuid = read_gpu_uuid(nvml)
    except HolderError as e:
        log.error("%s", e)
        return EXIT_FAILED
    deadline = clock() + settings.write_timeout_s
    while True:
        try:
            wrote = report_uuid(api, settings.pod_namespace, settings.pod_name, uuid)
            break
        except Exception as e:
            if clock() >= deadline:
                log.error("could not annotate pod %s/%s with %s=%s: %s", settings.pod_namespace, settings.pod_name,
                          GPU_UUID_ANNOTATION, uuid, e)
                return EXIT_FAILED
            log.warning("annotating pod %s/%s failed (%s); retrying", settings.pod_namespace, settings.pod_name, e)
            sleep(1.0)
    log.info("holding GPU %s for kvsched (%s)", uuid, "reported" if wrote else "already reported")
    stop.wait()
    return EXIT_OK


class _ApiAnnotator:
    """PodAnnotator over the Kubernetes API (kvsched.k8s.rest)."""

    def __init__(self, api: Any) -> None:
        self.api = api

    def pod_annotations(self, namespace: str, name: str) -> dict[str, str]:
        from kvsched.k8s.rest import call

        pod = call(self.api, "GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        return {str(k): str(v) for k, v in annotations.items()}

    def annotate(self, namespace: str, name: str, annotations: dict[str, str]) -> Any:
        from kvsched.k8s.rest import MERGE_PATCH, call

        return call(self.api, "PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}",
                    {"metadata": {"annotations": annotations}}, content_type=MERGE_PATCH)


def run(settings: HolderSettings) -> int:
    """`kvsched gpu-holder`: hold until SIGTERM/SIGINT; returns the exit code. Raises ClientConfigError."""
    from kvsched.k8s.client import api_client

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        nvml = importlib.import_module("pynvml")
    except ImportError:
        log.error("the nvidia-ml-py package (module pynvml) is not installed")
        return EXIT_FAILED
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("signal %d: releasing the GPU", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return hold(settings, nvml, _ApiAnnotator(api_client(settings.kubeconfig)), stop)
