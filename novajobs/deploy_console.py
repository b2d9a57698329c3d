"""The console's Kubernetes Deployment and Service, rendered by `novajobs render-deploy`
only when ``k8s_console`` is on (off by default: the console is an operator's tool).

One replica (runs started from the console are kept in its memory), non-root like the
CronJobs, read-only root filesystem, probes on /healthz (liveness: the process answers)
and /readyz (readiness: Redis answers). It binds 0.0.0.0 inside the pod, so it refuses
to start unless the Secret provides ``NOVAJOBS_CONSOLE_TOKEN``; every request then needs
the token. The Service is ClusterIP: reach it with `kubectl port-forward` or your ingress.
"""

from __future__ import annotations

from typing import Any

from novajobs import __version__, yamltext

PORT = 8787
UID = 1000


def render_console(settings: Any, header: str) -> str:
    labels = {
        "app.kubernetes.io/name": "novajobs",
        "app.kubernetes.io/component": "console",
        "app.kubernetes.io/version": __version__,
        "app.kubernetes.io/managed-by": "novajobs-render-deploy",
    }
    selector = {"app.kubernetes.io/name": "novajobs", "app.kubernetes.io/component": "console"}
    meta = {"name": "novajobs-console", "namespace": settings.k8s_namespace, "labels": labels}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": labels}, "spec": _pod(settings)},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {"type": "ClusterIP", "selector": selector,
                 "ports": [{"name": "http", "port": PORT, "targetPort": "http"}]},
    }
    note = ("# The novajobs console: a Deployment and its Service.\n"
            "# The Secret must hold NOVAJOBS_CONSOLE_TOKEN (required off loopback).\n")
    return header + note + yamltext.dump(deployment) + "---\n" + yamltext.dump(service)


def _pod(settings: Any) -> dict[str, Any]:
    def probe(path: str, period: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period,
                "timeoutSeconds": 5, "failureThreshold": 3}

    return {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "console",
            "image": settings.k8s_image or f"novajobs:{__version__}",
            "imagePullPolicy": "IfNotPresent",
            "command": ["novajobs"],
            "args": ["console", "--bind", f"0.0.0.0:{PORT}"],
            "env": [{"name": "NOVAJOBS_TIMEZONE", "value": settings.timezone}],
            "envFrom": [
                {"configMapRef": {"name": settings.k8s_configmap, "optional": True}},
                {"secretRef": {"name": settings.k8s_secret}},
            ],
            "ports": [{"name": "http", "containerPort": PORT}],
            "livenessProbe": probe("/healthz", 20),
            "readinessProbe": probe("/readyz", 10),
            "resources": {"requests": {"cpu": "50m", "memory": "128Mi"},
                          "limits": {"memory": settings.k8s_memory_limit}},
            "securityContext": {"allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                                "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        }],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
    }
