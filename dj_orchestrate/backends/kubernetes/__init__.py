"""Kubernetes: one Indexed Job per table (``backend``), the API client (``api``), the
manifests (``manifests``), the release of downstream Jobs (``conductor``) and the
``[kubernetes]`` settings (``settings``, importable without the ``kubernetes`` package).

The names below are imported when first used, so that the settings (the ``run`` and
``k8s render`` options) need no client package."""

from __future__ import annotations

from .. import lazy

WHERE = {"API_ERRORS": "api", "Api": "api", "ApiError": "api", "Gone": "api", "KubernetesBackend": "backend",
         "cancel": "conductor", "conduct": "conductor", "pod_here": "manifests", "KubernetesSettings": "settings",
         "load_config": "settings"}

__getattr__ = lazy(__name__, WHERE)
