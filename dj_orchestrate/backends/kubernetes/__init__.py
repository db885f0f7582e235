"""Kubernetes: one Indexed Job per table (``backend``), the API client (``api``), the
manifests (``manifests``), the release of downstream Jobs (``conductor``) and the
``[kubernetes]`` settings (``settings``)."""

from .api import API_ERRORS, Api, ApiError, Gone
from .backend import KubernetesBackend
from .conductor import cancel, conduct
from .manifests import pod_here
from .settings import KubernetesSettings, load_config

__all__ = ["API_ERRORS", "Api", "ApiError", "Gone", "KubernetesBackend", "KubernetesSettings", "cancel", "conduct",
           "load_config", "pod_here"]
