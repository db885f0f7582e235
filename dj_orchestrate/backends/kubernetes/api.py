"""The few Kubernetes API calls dj-orchestrate makes, as JSON over the ``kubernetes``
package's authenticated client, retried with backoff."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from ...errors import UsageError
from .settings import RUN_LABEL, version_tuple

RETRIES = 8
HINT_RETRIES = 2  # for status and reconcile, whose answer is only a hint: do not make them wait


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status, self.reason, self.message = status, reason, message


class Gone(ApiError):
    """410: the watch's resourceVersion is too old; list again."""


API_ERRORS = (ApiError, urllib3.exceptions.HTTPError, k8s_client.ApiException)  # no (usable) answer from the API


class Api:
    """The few calls dj-orchestrate makes, as JSON over the ``kubernetes`` package's
    authenticated client: retried with backoff on 429 and 5xx (honouring Retry-After)
    and on connection errors; other errors raise ApiError with the API's message."""

    def __init__(self, api_client: Any, namespace: str, sleep: Callable[[float], None] = time.sleep,
                 retries: int = RETRIES) -> None:
        self.client = api_client
        self.namespace = namespace
        self.sleep = sleep
        self.retries = retries

    @classmethod
    def connect(cls, context: str | None = None, namespace: str | None = None, retries: int = RETRIES) -> "Api":
        """In a pod: its service account. Else the kubeconfig ($KUBECONFIG or
        ~/.kube/config) and its current context (or ``context``)."""
        configuration = k8s_client.Configuration()
        default_ns = None
        try:
            if os.environ.get("KUBERNETES_SERVICE_HOST") and not context:
                k8s_config.load_incluster_config(client_configuration=configuration)
                default_ns = os.environ.get("POD_NAMESPACE") or _read("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            else:
                path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
                k8s_config.load_kube_config(config_file=path, context=context, client_configuration=configuration)
                contexts, current = k8s_config.list_kube_config_contexts(config_file=path)
                chosen = next((c for c in contexts if c["name"] == context), current) if context else current
                default_ns = (chosen or {}).get("context", {}).get("namespace")
        except (k8s_config.ConfigException, OSError, TypeError, ValueError) as err:
            raise UsageError(f"no Kubernetes cluster to talk to: {str(err).splitlines()[0] if str(err) else 'no kubeconfig'}",
                             "set KUBECONFIG or ~/.kube/config (kubectl config get-contexts), or run inside a cluster") from None
        return cls(k8s_client.ApiClient(configuration), namespace or default_ns or "default", retries=retries)

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
                content_type: str = "application/json", stream: bool = False, timeout: float | None = 60) -> Any:
        delay = 0.5
        for attempt in range(self.retries):
            params = self.client.param_serialize(method, path, query_params=list((query or {}).items()),
                                                 header_params={"Content-Type": content_type, "Accept": "application/json"},
                                                 body=body, auth_settings=["BearerToken"])
            try:
                response = self.client.call_api(*params, _request_timeout=(10, timeout) if timeout else None) \
                    if not stream else self.client.rest_client.pool_manager.request(
                        params[0], params[1], headers=params[2], preload_content=False,
                        timeout=urllib3.Timeout(connect=10, read=timeout))
            except (urllib3.exceptions.HTTPError, k8s_client.ApiException) as err:
                if attempt + 1 == self.retries or isinstance(err, urllib3.exceptions.ReadTimeoutError):
                    raise
                self.sleep(delay)
                delay = min(delay * 2, 30)
                continue
            raw = response.response if hasattr(response, "response") else response
            if 200 <= raw.status < 300:
                return raw if stream else json.loads(raw.data or b"{}")
            data = raw.data if not stream else raw.read()
            if (raw.status == 429 or raw.status >= 500) and attempt + 1 < self.retries:
                self.sleep(_retry_after(raw.headers.get("Retry-After")) or delay)
                delay = min(delay * 2, 30)
                continue
            status = _json(data)
            raise (Gone if raw.status == 410 else ApiError)(raw.status, status.get("reason") or raw.reason or "",
                                                            status.get("message", ""))
        raise AssertionError("unreachable")

    # -- the objects
    def jobs_path(self, name: str = "") -> str:
        return f"/apis/batch/v1/namespaces/{self.namespace}/jobs" + (f"/{name}" if name else "")

    def version(self) -> tuple[int, int]:
        answer = self.request("GET", "/version")
        return version_tuple(f"{answer.get('major', '')}.{answer.get('minor', '')}")

    def namespace_exists(self) -> bool | None:
        """None when we may not ask (no right to read namespaces)."""
        try:
            self.request("GET", f"/api/v1/namespaces/{self.namespace}")
            return True
        except ApiError as err:
            return False if err.status == 404 else None

    def create(self, manifest: dict) -> tuple[dict, bool]:
        """Create ``manifest`` in its namespace; a 409 means it exists (this run's
        deterministic name): adopt it. Returns the object and whether it was new."""
        kind = manifest["kind"]
        path = _collection(kind, self.namespace)
        try:
            return self.request("POST", path, body=manifest), True
        except ApiError as err:
            if err.status != 409:
                raise
        return self.request("GET", f"{path}/{manifest['metadata']['name']}"), False

    def jobs(self, run: str) -> tuple[dict[str, dict], str]:
        """The run's Jobs by name, and the list's resourceVersion (for a watch)."""
        answer = self.request("GET", self.jobs_path(), query={"labelSelector": f"{RUN_LABEL}={run}"})
        items = {j["metadata"]["name"]: j for j in answer.get("items", [])
                 if j.get("metadata", {}).get("labels", {}).get(RUN_LABEL) == run}
        return items, answer.get("metadata", {}).get("resourceVersion", "")

    def watch_jobs(self, run: str, resource_version: str, seconds: float) -> Iterator[dict]:
        """Events of the run's Jobs until ``seconds`` pass without one. Gone (410) when
        the resourceVersion expired: the caller lists again."""
        query = {"labelSelector": f"{RUN_LABEL}={run}", "watch": "true", "allowWatchBookmarks": "true"}
        if resource_version:
            query["resourceVersion"] = resource_version
        response = self.request("GET", self.jobs_path(), query=query, stream=True, timeout=seconds)
        try:
            buffer = b""
            for chunk in response.stream(4096):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in filter(None, (li.strip() for li in lines)):
                    event = json.loads(line)
                    obj = event.get("object", {})
                    if event.get("type") == "ERROR":
                        raise (Gone if obj.get("code") == 410 else ApiError)(obj.get("code", 500), obj.get("reason", ""),
                                                                            obj.get("message", ""))
                    yield event
        except (urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.ProtocolError):
            return
        finally:
            response.release_conn()

    def release(self, name: str) -> None:
        self.request("PATCH", self.jobs_path(name), body={"spec": {"suspend": False}},
                     content_type="application/merge-patch+json")

    def delete(self, kind: str, name: str) -> None:
        """Delete (pods with it: Background propagation; their workers get SIGTERM)."""
        try:
            self.request("DELETE", f"{_collection(kind, self.namespace)}/{name}",
                         body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})
        except ApiError as err:
            if err.status != 404:
                raise

    def pods(self, namespace: str) -> dict[str, str]:
        """Our pods in ``namespace``: name -> phase."""
        answer = self.request("GET", f"/api/v1/namespaces/{namespace}/pods",
                              query={"labelSelector": "app.kubernetes.io/managed-by=dj-orchestrate"})
        return {p["metadata"]["name"]: p.get("status", {}).get("phase", "") for p in answer.get("items", [])}


def _collection(kind: str, namespace: str) -> str:
    group = {"Job": "/apis/batch/v1", "Role": "/apis/rbac.authorization.k8s.io/v1",
             "RoleBinding": "/apis/rbac.authorization.k8s.io/v1", "ServiceAccount": "/api/v1"}[kind]
    return f"{group}/namespaces/{namespace}/{kind.lower()}s"


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _json(data: bytes | None) -> dict:
    try:
        value = json.loads(data or b"{}")
        return value if isinstance(value, dict) else {}
    except ValueError:
        return {}


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None

