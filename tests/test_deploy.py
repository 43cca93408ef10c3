"""deploy/: example configs load with the real loaders; compose, Helm and systemd files are well formed."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aggregator.config import load_aggregator_config
from policies.schema import ConsortiumPolicy, SitePolicy, load_policy
from protocol.clientconfig import ClientConfig
from protocol.jobspec import parse_job_spec
from protocol.tomlconfig import load_toml
from silo_node.config import load_node_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_example_configs_are_valid():
    ex = DEPLOY / "examples"
    agg = load_aggregator_config(ex / "aggregator.toml")
    assert agg.consortium_policy == ex / "consortium-policy.toml" and agg.tls.crl is not None
    node = load_node_config(ex / "node.toml")
    assert node.data.features and node.site_policy is not None
    job = parse_job_spec((ex / "job.toml").read_text(), "job.toml")
    assert job.he_profile == "sum" and job.total_rounds == job.rounds + 1
    assert isinstance(load_policy(ex / "site-policy.toml"), SitePolicy)
    assert isinstance(load_policy(ex / "consortium-policy.toml"), ConsortiumPolicy)
    assert load_toml(ClientConfig, ex / "admin.toml").aggregator.endswith(":7443")
    # the example job passes the example site's column rules
    site = load_policy(ex / "site-policy.toml")
    from policies.evaluate import evaluate_site

    decision = evaluate_site(site, job, aggregator_fingerprint=None, consortium="Demo Health Consortium")
    assert next(r for r in decision.rules if r.rule == "denied columns").passed


def test_compose_runs_aggregator_and_three_silos_with_volumes():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"aggregator", "hospital-1", "hospital-2", "hospital-3"}
    assert services["aggregator"]["ports"] == ["7443:7443"]
    for name in ("hospital-1", "hospital-2", "hospital-3"):
        svc = services[name]
        assert "ports" not in svc  # nodes open no port
        mounts = " ".join(svc["volumes"])
        assert "/etc/cipherfed:ro" in mounts and "/data:ro" in mounts and f"{name}-state:/var/lib/cipherfed" in mounts
        assert svc["depends_on"]["aggregator"]["condition"] == "service_healthy"
    assert set(compose["volumes"]) == {"aggregator-state", "hospital-1-state", "hospital-2-state", "hospital-3-state"}


def test_dockerfile_is_multi_stage_non_root_with_healthcheck():
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) == 2 and all(s.startswith("python:3.11-slim") for s in stages)
    final = text[text.rindex("\nFROM ") :]
    assert "USER 10001" in final and "HEALTHCHECK" in final
    assert not re.search(r"apt-get|build-essential|gcc", final)
    assert "torch==2.13.0" in text


def render_chart(values_override=None):
    """Render the chart's templates (they only substitute values) without helm."""
    chart = DEPLOY / "helm" / "cipherfed"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    context = {"Values": values, "Release": {"Name": "demo", "Namespace": "default"}}

    def lookup(match):
        node = context
        for part in match.group(1).split("."):
            node = node[part]
        return str(node)

    docs = []
    for template in sorted((chart / "templates").glob("*.yaml")):
        rendered = re.sub(r"\{\{\s*\.([A-Za-z.]+)\s*\}\}", lookup, template.read_text())
        assert "{{" not in rendered, template
        docs.append(yaml.safe_load(rendered))
    return yaml.safe_load((chart / "Chart.yaml").read_text()), docs


def test_helm_chart_renders_to_valid_kubernetes_objects():
    chart, docs = render_chart()
    assert chart["apiVersion"] == "v2" and chart["name"] == "cipherfed"
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ConfigMap", "Deployment", "PersistentVolumeClaim", "Service"}
    for doc in docs:
        assert doc["apiVersion"] and doc["metadata"]["name"].startswith("demo-")
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["readinessProbe"]["exec"]["command"][:3] == ["cipherfed", "aggregator", "health"]
    assert container["resources"]["limits"]["memory"] == "8Gi"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "cipherfed-aggregator-tls"
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == "demo-state"
    assert kinds["Service"]["spec"]["ports"][0]["port"] == 7443
    assert 'listen = "0.0.0.0:7443"' in kinds["ConfigMap"]["data"]["aggregator.toml"]


@pytest.mark.parametrize("unit", ["cipherfed-node.service", "cipherfed-aggregator.service"])
def test_systemd_units_are_hardened(unit):
    text = (DEPLOY / "systemd" / unit).read_text()
    for directive in (
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "PrivateTmp=true",
        "ReadWritePaths=/var/lib/cipherfed",
        "Restart=on-failure",
        "User=cipherfed",
    ):
        assert directive in text, directive


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", ["cipherfed-node.service", "cipherfed-aggregator.service"])
def test_systemd_analyze_verify(unit, tmp_path):
    # verify checks that ExecStart exists: point it at this checkout's cipherfed for the check
    executable = Path(sys.executable).parent / "cipherfed"
    text = (DEPLOY / "systemd" / unit).read_text().replace("/opt/cipherfed/bin/cipherfed", str(executable))
    text = text.replace("User=cipherfed", "User=root").replace("Group=cipherfed", "Group=root")
    (tmp_path / unit).write_text(text)
    out = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / unit)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line
        for line in (out.stdout + out.stderr).splitlines()
        if unit in line and "Unknown" in line or "Failed" in line or "bad-setting" in line.lower()
    ]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr
