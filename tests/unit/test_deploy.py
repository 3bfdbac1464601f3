"""The deployment files under deploy/: valid against the Kubernetes schemas and the compose spec, and saying only what the engine reads."""
from __future__ import annotations

import importlib.resources
import json
import re

import jsonschema
import kubernetes_validate
import pytest
import yaml

from streams.settings import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
KUBERNETES_VERSION = "1.33.0"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
# every variable the engine reads (streams/settings.py), and the pod's own name the manifests pass on
SETTINGS_TEXT = (REPO_ROOT / "streams" / "settings.py").read_text()
READ = set(re.findall(r'"((?:ENGAGE|KAFKA)_[A-Z_]+|SCHEMA_REGISTRY_URL)"', SETTINGS_TEXT)) | {"POD_NAME"}


def documents(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_each_kubernetes_manifest_is_valid_against_the_schemas_strictly(path):
    # Given each resource of the file, Then it is valid for Kubernetes, no unknown field anywhere
    for doc in documents(path):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def _by_kind():
    out = {}
    for path in MANIFESTS:
        for doc in documents(path):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def _containers(doc):
    spec = doc["spec"]["template"]["spec"] if "template" in doc.get("spec", {}) else {}
    return spec.get("containers", [])


def test_the_workers_keep_state_on_a_volume_each_and_are_probed_on_health_and_ready():
    res = _by_kind()
    worker = res[("StatefulSet", "engage-worker")]
    [container] = _containers(worker)
    env = {e["name"]: e.get("value") for e in container["env"]}
    # Then RocksDB lives on the pod's own volume, where ENGAGE_DATA_DIR says
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert worker["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "state"
    assert mounts["state"] == env["ENGAGE_DATA_DIR"]
    # And the probes ask /health and /ready on the port the worker listens on
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["http"] == int(env["ENGAGE_HTTP_PORT"])
    # And a disruption budget and the headless service cover the same pods
    selector = worker["spec"]["selector"]["matchLabels"]
    assert res[("PodDisruptionBudget", "engage-worker")]["spec"]["selector"]["matchLabels"] == selector
    assert res[("Service", "engage-worker")]["spec"]["selector"] == selector
    assert res[("Service", "engage-worker")]["spec"]["clusterIP"] == "None"
    # And the autoscaler scales the StatefulSet
    assert res[("HorizontalPodAutoscaler", "engage-worker")]["spec"]["scaleTargetRef"]["name"] == "engage-worker"


def test_the_manifests_configure_only_variables_the_engine_reads_and_secrets_come_from_the_secret():
    res = _by_kind()
    config = res[("ConfigMap", "engage")]["data"]
    secret = res[("Secret", "engage")]["stringData"]
    assert set(config) <= READ and set(secret) <= READ
    for doc in res.values():
        for container in _containers(doc):
            for e in container.get("env", []):
                assert e["name"] in READ, f"{doc['metadata']['name']}: {e['name']} is read by nothing"
                if "TOKEN" in e["name"] or "SECRET" in e["name"] or "PASSWORD" in e["name"]:
                    assert "secretKeyRef" in e.get("valueFrom", {}), f"{e['name']} must come from a Secret"


def compose_schema() -> dict:
    path = importlib.resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    return json.loads(path.read_text())


def test_the_compose_file_is_valid_against_the_compose_spec():
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    schema = compose_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(compose)  # the spec's draft (its $schema URL has no trailing #)


def test_the_compose_file_runs_the_engine_with_variables_it_reads_and_a_volume_per_worker():
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    services = compose["services"]
    workers = [name for name, s in services.items() if s.get("command") == ["worker"]]
    assert len(workers) >= 2
    volumes = [tuple(s["volumes"]) for name, s in services.items() if name in workers]
    assert len(set(volumes)) == len(workers), "each worker keeps its RocksDB on a volume of its own"
    for name, service in services.items():
        if service.get("image") == "engage:latest":
            assert set(service.get("environment", {})) <= READ, name
    # And Prometheus scrapes every worker, and Grafana is given the dashboard
    scraped = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    targets = {t for job in scraped["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert {f"{w}:6066" for w in workers} <= targets
    assert any(v.startswith("../grafana:") for v in services["grafana"]["volumes"])


def test_the_image_installs_the_locked_dependencies_and_runs_the_engine_as_a_user():
    text = (DEPLOY / "Dockerfile").read_text()
    assert "pip install -r requirements.lock" in text and 'ENTRYPOINT ["engage"]' in text
    assert re.search(r"^USER \d+", text, re.M), "not as root"
    for path in re.findall(r"^COPY (\S+)/ ", text, re.M):
        assert (REPO_ROOT / path).is_dir(), path
