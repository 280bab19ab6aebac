"""examples/kubernetes/ parses and hangs together: probes, the coordinator URL, labels, ports, PDB."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from modelserve.cli import build_parser

FOLDER = Path(__file__).parent.parent / "examples" / "kubernetes"


def objects() -> list[dict[str, Any]]:
    found = []
    for path in sorted(FOLDER.glob("*.yaml")):
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def named(kind: str, name: str) -> dict[str, Any]:
    (match,) = [o for o in objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return match


def test_every_file_parses_into_objects_with_a_kind_and_a_name() -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects())
    assert ("Deployment", "modelserve") in kinds and ("PodDisruptionBudget", "modelserve") in kinds
    assert ("Service", "modelserve") in kinds and ("Service", "modelserve-redis") in kinds
    assert ("Deployment", "modelserve-redis") in kinds


def test_the_deployment_runs_serve_against_the_redis_service_with_probes() -> None:
    deployment = named("Deployment", "modelserve")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    args = build_parser().parse_args(container["args"])  # what the CLI really accepts
    assert args.command == "serve" and args.host == "0.0.0.0"
    redis_service = named("Service", "modelserve-redis")
    port = redis_service["spec"]["ports"][0]["port"]
    assert args.coordinator == f"redis://{redis_service['metadata']['name']}:{port}/0"
    http = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert args.port == http
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert deployment["spec"]["replicas"] >= 2
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_service_and_disruption_budget_select_the_pods() -> None:
    labels = named("Deployment", "modelserve")["spec"]["template"]["metadata"]["labels"]
    service = named("Service", "modelserve")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    budget = named("PodDisruptionBudget", "modelserve")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["minAvailable"] < named("Deployment", "modelserve")["spec"]["replicas"]
    redis_labels = named("Deployment", "modelserve-redis")["spec"]["template"]["metadata"]["labels"]
    assert named("Service", "modelserve-redis")["spec"]["selector"].items() <= redis_labels.items()
