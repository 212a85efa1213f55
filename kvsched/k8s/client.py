"""Build an `ApiClient` from a kubeconfig or the in-cluster service account, with a default request timeout.

Order: an explicit `--kubeconfig` path, else `$KUBECONFIG`, else the in-cluster config (when
`KUBERNETES_SERVICE_HOST` is set), else `~/.kube/config`. Raises `ClientConfigError` with a sentence when none
works. Called by: the CLI (`kvsched extender`, `kvsched controller`) and e2e tests.
"""

from __future__ import annotations

import os
from typing import Any

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

# A plain API call (get, patch, create a Binding) answers in milliseconds; 10 s means the apiserver is in
# trouble, and the caller (a retry loop or the scheduler's own retry) should move on rather than hang.
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 10.0


class ClientConfigError(RuntimeError):
    """No usable kubeconfig or in-cluster configuration; str() says which sources were tried."""


class TimeoutApiClient(client.ApiClient):
    """An ApiClient whose calls default to a (connect, read) timeout instead of waiting forever.

    A call that passes `_request_timeout` itself (a watch: longer than its server-side timeoutSeconds) keeps it.
    """

    def __init__(self, configuration: client.Configuration,
                 timeout_s: tuple[float, float] = (DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_READ_TIMEOUT_S)) -> None:
        super().__init__(configuration)
        self.default_timeout_s = timeout_s

    def call_api(self, method: Any, url: Any, header_params: Any = None, body: Any = None,
                 post_params: Any = None, _request_timeout: Any = None) -> Any:
        return super().call_api(method, url, header_params=header_params, body=body, post_params=post_params,
                                _request_timeout=_request_timeout or self.default_timeout_s)


def load_configuration(kubeconfig: str | None = None, context: str | None = None) -> client.Configuration:
    """The client Configuration from the first source that exists (see the module docstring)."""
    configuration = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG") or None
    try:
        if path:
            # KUBECONFIG may list several files; the client merges a colon-separated list itself.
            config.load_kube_config(config_file=path, context=context, client_configuration=configuration,
                                    persist_config=False)  # type: ignore[no-untyped-call]
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            default = os.path.expanduser("~/.kube/config")
            if not os.path.exists(default):
                raise ClientConfigError("no Kubernetes configuration: pass --kubeconfig, set KUBECONFIG, run "
                                        "in a pod, or create ~/.kube/config")
            config.load_kube_config(config_file=default, context=context, client_configuration=configuration,
                                    persist_config=False)  # type: ignore[no-untyped-call]
    except (ConfigException, OSError) as e:
        raise ClientConfigError(f"cannot load the Kubernetes configuration ({path or 'in-cluster'}): {e}") from None
    # No transparent retries inside a call (urllib3 retries an idempotent request on a read timeout, which turned a
    # hung lease renewal into ~80 s against a 15 s lease): every caller retries on its own schedule.
    configuration.retries = False
    return configuration


def api_client(kubeconfig: str | None = None, context: str | None = None,
               timeout_s: tuple[float, float] = (DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_READ_TIMEOUT_S)
               ) -> client.ApiClient:
    """An ApiClient (see `load_configuration`) whose calls time out after `timeout_s` = (connect, read) seconds
    unless they pass their own `_request_timeout`. Raises ClientConfigError."""
    return TimeoutApiClient(load_configuration(kubeconfig, context), timeout_s)
