"""compose.yaml, the Dockerfile and the dashboard, checked against the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[1]
METRIC = re.compile(r"\b((?:eventbot|bot)_[a-z0-9_]+)\b")


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def exported_metric_names() -> set[str]:
    """Every sample name the services can expose, from their metric classes."""
    from eventbot.appender import AppendMetrics
    from eventbot.metrics import ConsumerMetrics
    from eventbot.redisprobe import RedisProbe
    from services.agent.metrics import AgentMetrics
    from services.ingest.metrics import IngestMetrics

    registry = CollectorRegistry()
    ConsumerMetrics(registry)
    AppendMetrics(registry)
    RedisProbe(None, registry)  # type: ignore[arg-type]
    AgentMetrics(registry)
    IngestMetrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def test_every_long_running_service_has_a_healthcheck() -> None:
    for name, service in compose()["services"].items():
        if service.get("restart") == "no":
            continue  # one-shot (migrate): others wait for it to complete, not to be healthy
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"


def test_redis_keeps_an_aof_and_never_evicts() -> None:
    command = compose()["services"]["redis"]["command"]
    args = dict(zip(command[1::2], command[2::2]))
    assert args["--appendonly"] == "yes"
    assert args["--appendfsync"] in ("everysec", "always")
    assert args["--maxmemory-policy"] == "noeviction"


def test_services_depend_on_healthy_or_completed_dependencies() -> None:
    services = compose()["services"]
    for name in ("ingest", "agent", "projector"):
        deps = services[name]["depends_on"]
        assert deps["redis"]["condition"] == "service_healthy"
        assert "container_name" not in services[name], "a fixed name would stop --scale"
    assert services["projector"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_prometheus_scrapes_the_three_services() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    assert {job["job_name"] for job in config["scrape_configs"]} == {"ingest", "agent", "projector"}


def test_every_metric_on_the_dashboard_is_exported_by_the_code() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/eventbot.json").read_text())
    queried = {m for panel in dashboard["panels"] for target in panel["targets"] for m in METRIC.findall(target["expr"])}
    assert len(queried) >= 10
    missing = queried - exported_metric_names()
    assert not missing, f"the dashboard queries metrics nobody exports: {sorted(missing)}"


def test_the_dashboard_covers_what_operators_watch() -> None:
    titles = " | ".join(p["title"].lower() for p in json.loads(
        (ROOT / "deploy/grafana/dashboards/eventbot.json").read_text())["panels"])
    for topic in ("first token", "answer latency", "lag", "pending", "dead letters", "events/s", "balance", "redis memory"):
        assert topic in titles, topic


def test_the_image_runs_as_a_non_root_user_with_pinned_versions() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root)\S+", dockerfile, re.M)
    assert "requirements.lock" in dockerfile
    pinned = [line for line in (ROOT / "requirements.lock").read_text().splitlines() if line and not line.startswith("#")]
    assert pinned and all("==" in line for line in pinned)
