"""Checks the compose stack's files without Docker: they parse, they point at each other
correctly, and every PromQL query on a Grafana dashboard is valid PromQL.

- docker-compose.yml has the expected services, every file it mounts exists, the gateway
  exports traces to the collector and has a health check, Prometheus gets the alert rules.
- Each dashboard in deploy/grafana/dashboards/ is JSON with unique panel ids, and each
  panel queries a datasource provisioned in deploy/grafana/provisioning/datasources/.
- The dashboards' queries, with Grafana's variables filled in, pass `promtool check rules`
  as recording rules (so promtool must be on PATH; `.ci/run` installs it).
- deploy/otel-collector.yaml's pipelines use only components it defines.

Run from the repository root. Needs PyYAML (`.ci/run` installs it when missing).
"""

import glob
import json
import os
import re
import subprocess
import sys
import tempfile

try:
    import yaml
except ImportError:
    sys.exit("check_deploy.py needs PyYAML: apt-get install python3-yaml (or pip install pyyaml)")

EXPECTED_SERVICES = {"gateway", "redis", "otel-collector", "jaeger", "prometheus", "grafana"}
# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$model": ".*",
    "$team": ".*",
}

failures = []


def fail(message):
    failures.append(message)


def load_yaml(path):
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def check_compose():
    compose = load_yaml("docker-compose.yml")
    services = compose.get("services", {})
    missing = EXPECTED_SERVICES - set(services)
    if missing:
        fail(f"docker-compose.yml: services missing: {sorted(missing)}")
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith(".") and not os.path.exists(source):
                fail(f"docker-compose.yml: {name} mounts {source}, which does not exist")
    gateway = services.get("gateway", {})
    environment = gateway.get("environment", {})
    if environment.get("OTEL_EXPORTER_OTLP_ENDPOINT") != "http://otel-collector:4318":
        fail("docker-compose.yml: the gateway does not export to http://otel-collector:4318")
    if environment.get("OTEL_TRACES_EXPORTER") != "otlp":
        fail("docker-compose.yml: the gateway's OTEL_TRACES_EXPORTER is not otlp")
    if "/healthz" not in json.dumps(gateway.get("healthcheck", {})):
        fail("docker-compose.yml: the gateway has no health check on /healthz")
    prometheus_mounts = " ".join(services.get("prometheus", {}).get("volumes", []))
    if "deploy/prometheus/alerts.yml" not in prometheus_mounts:
        fail("docker-compose.yml: Prometheus does not get deploy/prometheus/alerts.yml")


def provisioned_datasources():
    uids = set()
    for path in glob.glob("deploy/grafana/provisioning/datasources/*.yml"):
        for source in load_yaml(path).get("datasources", []):
            uids.add(source.get("uid"))
    return uids


def panels_of(dashboard):
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def dashboard_queries(datasources):
    """Every panel query of every dashboard, as (where, expr); checks the rest on the way."""
    queries = []
    paths = sorted(glob.glob("deploy/grafana/dashboards/*.json"))
    if not paths:
        fail("deploy/grafana/dashboards/ has no dashboard")
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                dashboard = json.load(handle)
        except ValueError as error:
            fail(f"{path}: not JSON: {error}")
            continue
        ids = [panel.get("id") for panel in panels_of(dashboard)]
        if len(ids) != len(set(ids)):
            fail(f"{path}: panel ids are not unique")
        for panel in panels_of(dashboard):
            where = f"{path}: panel {panel.get('id')} ({panel.get('title')!r})"
            for target in panel.get("targets", []):
                uid = (target.get("datasource") or panel.get("datasource") or {}).get("uid")
                if uid not in datasources:
                    fail(f"{where}: datasource {uid!r} is not provisioned")
                if not target.get("expr", "").strip():
                    fail(f"{where}: a target without a query")
                else:
                    queries.append((where, target["expr"]))
    return queries


def check_promql(queries):
    """Runs the queries through `promtool check rules` as recording rules."""
    rules = []
    for number, (_, expr) in enumerate(queries):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        if "$" in re.sub(r"\$\d", "", expr):
            fail(f"{queries[number][0]}: a Grafana variable this check does not know: {expr}")
        rules.append({"record": f"dashboard:query_{number}", "expr": expr})
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as handle:
        yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, handle)
    try:
        result = subprocess.run(["promtool", "check", "rules", handle.name],
                                capture_output=True, text=True, check=False)
    except FileNotFoundError:
        fail("promtool is not on PATH: apt-get install prometheus (.ci/run installs it)")
        return
    finally:
        os.unlink(handle.name)
    if result.returncode != 0:
        fail("dashboard queries are not valid PromQL (dashboard:query_N is the Nth "
             f"query in panel order):\n{result.stdout}{result.stderr}")


def check_collector():
    config = load_yaml("deploy/otel-collector.yaml")
    for name, pipeline in config.get("service", {}).get("pipelines", {}).items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                if component not in (config.get(kind) or {}):
                    fail(f"deploy/otel-collector.yaml: pipeline {name} uses undefined {kind[:-1]} {component}")
    for extension in config.get("service", {}).get("extensions", []):
        if extension not in (config.get("extensions") or {}):
            fail(f"deploy/otel-collector.yaml: undefined extension {extension}")


check_compose()
queries = dashboard_queries(provisioned_datasources())
check_promql(queries)
check_collector()

print("\n".join(failures) or f"compose file, collector config and {len(queries)} dashboard queries are consistent")
sys.exit(1 if failures else 0)
