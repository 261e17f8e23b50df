"""The Kubernetes manifests (packaging/k8s/), validated offline.

``kubernetes-validate`` checks every resource against the Kubernetes 1.30 schemas
(strict: an unknown field is an error); ``checkov`` runs its Kubernetes and secrets
checks, and every finding must be fixed or skipped with a reason in the resource's
annotations. checkov lives in a virtual environment of its own (``make checkov``: its
pinned dependencies would downgrade several of ``.venv``'s).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cloud_hub.api.routes import health
from cloud_hub.emqx import acl_file
from cloud_hub.provisioning import hub_role
from cloud_hub.settings import HubSettings
from sync import TopicLayout

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "packaging" / "k8s"
KUBERNETES_VERSION = "1.30.0"


def _resources() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                yield path.name, document


def _resource(kind: str, name: str) -> dict[str, Any]:
    [found] = [r for _, r in _resources()
               if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def _checkov() -> str | None:
    for candidate in (os.environ.get("CHECKOV"), str(ROOT / ".venv-checkov/bin/checkov"),
                      shutil.which("checkov")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def test_every_resource_is_valid_for_kubernetes() -> None:
    resources = list(_resources())
    assert {r["kind"] for _, r in resources} >= {
        "StatefulSet", "Service", "HorizontalPodAutoscaler", "ConfigMap", "NetworkPolicy"}
    for name, resource in resources:
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {resource['kind']}/{resource['metadata']['name']}: "
                        f"{exc.message} at {'.'.join(map(str, exc.path))}")


def test_checkov_finds_nothing_that_is_not_skipped_with_a_reason() -> None:
    checkov = _checkov()
    # Missing checkov fails, never skips: a skipped check would let CI pass unchecked.
    assert checkov is not None, (
        "checkov is not installed: `make checkov` (its own virtual environment; `make test` "
        "runs it)")
    result = subprocess.run(
        [checkov, "-d", str(MANIFESTS), "--framework", "kubernetes", "secrets",
         "--skip-download", "--output", "json"],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    assert result.stdout.strip(), result.stderr[-2000:]
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']})"
              for report in reports for c in report["results"].get("failed_checks", [])]
    assert not failed, "\n".join(failed)
    skipped = [c for report in reports for c in report["results"].get("skipped_checks", [])]
    assert skipped, "the annotations' skips were not read"
    reasons = {c["check_id"]: c["check_result"].get("suppress_comment", "") for c in skipped}
    assert all(len(reason.strip()) > 10 for reason in reasons.values()), reasons


def test_emqx_acl_is_the_broker_rules_of_the_hub_settings() -> None:
    settings = _resource("ConfigMap", "hub-settings")["data"]
    emqx = _resource("ConfigMap", "emqx-config")["data"]
    assert emqx["acl.conf"] == acl_file(
        TopicLayout(settings.get("CLOUD_HUB_MQTT_PREFIX", "fleet")),
        share_group=settings["CLOUD_HUB_SHARE_GROUP"],
        hub_username=settings["CLOUD_HUB_MQTT_USERNAME"])
    assert "no_match = deny" in emqx["emqx.conf"]
    assert "messages_rate" in emqx["emqx.conf"]
    [limit] = re.findall(r"max_subscriptions = (\d+)", emqx["emqx.conf"])
    hub = hub_role(TopicLayout(), settings["CLOUD_HUB_SHARE_GROUP"])
    assert int(limit) >= sum(acl.kind == "subscribeLiteral" for acl in hub.acls)


def test_each_hub_replica_is_a_stable_pod_with_its_client_id_and_health_probes() -> None:
    hub = _resource("StatefulSet", "hub")
    spec = hub["spec"]["template"]["spec"]
    [container] = spec["containers"]
    [client_id] = [e for e in container["env"] if e["name"] == "CLOUD_HUB_MQTT_CLIENT_ID"]
    assert client_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    HubSettings(mqtt_client_id=f"{hub['metadata']['name']}-0")  # pod names fit the pattern
    routes = {getattr(route, "path", None) for route in health.router.routes}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] in routes
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_autoscaler_scales_the_hub_on_its_queue_depth() -> None:
    from cloud_hub.metrics import HubMetrics

    hpa = _resource("HorizontalPodAutoscaler", "hub")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                             "name": "hub"}
    [metric] = hpa["spec"]["metrics"]
    [depth] = [m for m in HubMetrics().registry.collect() if m.name.endswith("queue_depth")]
    assert depth.type == "gauge"
    assert metric["pods"]["metric"]["name"] == depth.name
