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
    # the base is a build argument whose default stays python:3.11-slim (issue 15); every stage derives from it
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) >= 2 and stages[0] == "${BASE_IMAGE}"
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


# ---------------------------------------------------------------- the containers run for real (issue 15)
# `make deploy-test` (scripts/deploy-test.sh) builds the image and runs the compose files; these checks keep
# the Dockerfile, the compose files, the script, the Makefile and CI in agreement without a Docker engine.
REPO = DEPLOY.parent
SCRIPT = REPO / "scripts" / "deploy-test.sh"
PROVISION = REPO / "scripts" / "deploy-test-provision.sh"


def dockerfile_stages() -> list[tuple[str, str | None, str]]:
    """(base, stage name, body) for each FROM of the Dockerfile."""
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    parts = re.split(r"^FROM ", text, flags=re.M)[1:]
    stages = []
    for part in parts:
        head, _, body = part.partition("\n")
        words = head.split()
        stages.append((words[0], words[2] if len(words) == 3 and words[1].upper() == "AS" else None, body))
    return stages


def shell_value(name: str) -> str:
    match = re.search(rf"^{name}=(\S+)$", SCRIPT.read_text(), re.M)
    assert match, name
    return match.group(1).strip("\"'")


def test_dockerfile_installs_only_from_the_host_wheelhouse_on_any_base():
    stages = dockerfile_stages()
    names = [name for _, name, _ in stages]
    for base, _, _ in stages:  # every stage is the build argument or an earlier stage
        assert base == "${BASE_IMAGE}" or base in names, base
    base_body = stages[0][2]
    # a bare Debian bookworm gets python3 (3.11) and venv support from apt, only when they are missing
    assert "apt-get install -y --no-install-recommends python3 python3-venv" in base_body
    assert "import ensurepip, venv" in base_body and "rm -rf /var/lib/apt/lists/*" in base_body
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert "COPY build/wheelhouse /wheelhouse" in text
    # pip never reaches an index from inside the build: a fresh image cannot verify PyPI's certificate
    instructions = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    installs = re.findall(r"pip (?:install|wheel)[^\n]*", instructions)
    assert installs and all("--no-index" in line for line in installs), installs
    final_base, final_name, final = stages[-1]
    assert final_name is None and final_base in names  # the runtime stage is the base stage plus the venv
    assert not re.search(r"apt-get|build-essential|gcc|/wheelhouse", final)
    assert "USER 10001" in final and "ENTRYPOINT" in final


def test_dockerignore_keeps_what_the_dockerfile_copies():
    """The build context is an allowlist; each COPY source must be on it (or the build fails late)."""
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    assert "*" in ignore
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    sources = []
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        sources += line.split()[:-1]
    assert sources
    for source in sources:
        assert source.rstrip("/") in allowed, source
        assert (REPO / source).exists() or source == "build/wheelhouse", source


def load_compose() -> dict:
    base = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    job = yaml.safe_load((DEPLOY / "compose.job.yaml").read_text())
    return {"services": {**base["services"], **job["services"]}, "volumes": base["volumes"], "base": base}


def test_compose_files_work_with_debians_compose_v1_and_a_chosen_directory():
    compose = load_compose()
    # docker-compose 1.29 (Debian bookworm) rejects a top-level name; the project is named with -p
    assert set(compose["base"]) == {"x-node", "services", "volumes"}
    for name, svc in compose["services"].items():
        assert svc["image"] == "cipherfed:0.1.0", name
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"], name
        for mount in svc["volumes"]:
            source = mount.split(":/")[0]
            # host paths follow $CIPHERFED_DEPLOY_DIR (deploy-test points it at a fresh directory)
            assert source.startswith("${CIPHERFED_DEPLOY_DIR:-.}/") or source in compose["volumes"], mount
    for name in ("aggregator", "hospital-1"):
        build = compose["services"][name]["build"]
        assert build["args"]["BASE_IMAGE"] == "${CIPHERFED_BASE_IMAGE:-python:3.11-slim}"
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "docker" / "Dockerfile"
    assert "test" not in compose["services"]["aggregator"]["healthcheck"]  # the image's probe, faster


def test_compose_job_is_one_shot_submit_and_watch():
    job = load_compose()["services"]["job"]
    assert job["command"][:2] == ["job", "submit"] and "--watch" in job["command"]  # exit code = job outcome
    assert job["command"][job["command"].index("--config") + 1] == "/etc/cipherfed/admin.toml"
    assert job["restart"] == "no" and "ports" not in job
    assert job["depends_on"]["aggregator"]["condition"] == "service_healthy"
    assert job["volumes"] == ["${CIPHERFED_DEPLOY_DIR:-.}/consortium/coordinator:/etc/cipherfed:ro"]


def test_deploy_script_agrees_with_compose_dockerfile_make_and_ci():
    text = SCRIPT.read_text()
    provision = PROVISION.read_text()
    for script in (SCRIPT, PROVISION):
        assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0, script
    compose = load_compose()
    for script_text in (text, provision):  # both scripts name the same hospitals as compose
        hospitals = re.search(r"^HOSPITALS=\(([^)]*)\)", script_text, re.M).group(1).split()
        assert set(hospitals) | {"aggregator", "job"} == set(compose["services"])
    assert shell_value("IMAGE").endswith(compose["services"]["aggregator"]["image"] + "}")
    assert 'compose.yaml" -f "$REPO/deploy/compose.job.yaml"' in text
    # each volume the script audits is a compose volume, and its audit log lies where the configs put it
    assert '--filter "label=com.docker.compose.volume=$v-state"' in text
    assert {f"{v}-state" for v in ["aggregator", *hospitals]} == set(compose["volumes"])
    assert provision.count('state_dir = "/var/lib/cipherfed"') == 2  # aggregator.toml and node.toml
    # the configs name the files compose mounts: /etc/cipherfed (configs), /data (records)
    assert 'path = "/data/records.csv"' in provision and 'aggregator = "aggregator:7443"' in provision
    assert "--dns aggregator" in provision  # the name the nodes dial on the compose network
    assert "chown -R 10001:10001" in provision and "USER 10001:10001" in (DEPLOY / "docker" / "Dockerfile").read_text()
    assert "in_image provision" in text and "in_image job" in text
    # the Dockerfile's build argument and the cached Debian base
    assert '--build-arg "BASE_IMAGE=$BASE_IMAGE"' in text and "debootstrap --variant=minbase bookworm" in text
    assert "build/wheelhouse" in text and "torch==2.13.0" in text
    # teardown always: on EXIT, volumes included, logs first when the run failed
    assert "trap teardown EXIT" in text and "down -v --remove-orphans" in text and "logs --no-color" in text
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^deploy-test: .*\n\t.*scripts/deploy-test\.sh$", makefile, re.M)
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$(.|\n)*^make deploy-test$", ci, re.M)
    assert "deploy-test: SKIPPED" in ci  # one plain line when no engine can be had
