"""deploy/kubernetes: generated from the rules and dashboards, rendered by a real kustomize
(built from its Go module), and every object it renders valid against Kubernetes'
published OpenAPI schema or the CRD of the operator that reads it."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from sightline_appliance import rules
from sightline_appliance.doctor import MARKER, MARKER_VALUE

from .schemas import (
    APPS_V1,
    CORE_V1,
    POD_MONITOR_CRD,
    PROMETHEUS_OPERATOR,
    PROMETHEUS_RULE_CRD,
    SERVICE_MONITOR_CRD,
    crd_validator,
    keda_cel,
    keda_validator,
    kubernetes_validator,
)
from .servers import ROOT, binary

# Checks files and builds tools: not run again by .ci/newest-sdk.
pytestmark = pytest.mark.stack

DEPLOY = ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = ("app", "app-servicemonitor", "monitoring")


def build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("k8s_build", DEPLOY / "build.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kustomize(directory: Path) -> subprocess.CompletedProcess[str]:
    exe = binary("kustomize", flavour="pinned")
    return subprocess.run(
        [exe, "build", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )


def rendered(name: str) -> list[dict[str, Any]]:
    result = kustomize(DEPLOY / name)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def validators(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """kind -> validator: Kubernetes' own kinds from its OpenAPI v3, the rest from CRDs."""
    tmp = tmp_path_factory.mktemp("schemas")
    return {
        "Deployment": kubernetes_validator(tmp, APPS_V1, "io.k8s.api.apps.v1.Deployment"),
        "Service": kubernetes_validator(tmp, CORE_V1, "io.k8s.api.core.v1.Service"),
        "ConfigMap": kubernetes_validator(tmp, CORE_V1, "io.k8s.api.core.v1.ConfigMap"),
        "PodMonitor": crd_validator(PROMETHEUS_OPERATOR.file(POD_MONITOR_CRD)),
        "ServiceMonitor": crd_validator(PROMETHEUS_OPERATOR.file(SERVICE_MONITOR_CRD)),
        "PrometheusRule": crd_validator(PROMETHEUS_OPERATOR.file(PROMETHEUS_RULE_CRD)),
        "ScaledObject": keda_validator(tmp),
    }


def errors(validators: dict[str, Any], document: dict[str, Any]) -> list[str]:
    validator = validators[document["kind"]]
    return [
        f"{document['kind']}/{document['metadata']['name']} "
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


# -- generated


def test_generated_manifests_are_what_build_writes() -> None:
    """`build.py --check` passes: the PrometheusRule, the dashboards' ConfigMaps and the
    ScaledObject are exactly what the rules, the dashboards and `sightline hints keda`
    give today."""
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "build.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_check_names_a_file_edited_by_hand_and_one_left_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`build.py --check` exits 1 naming a generated file edited by hand, and, separately,
    a dashboard ConfigMap whose dashboard is gone; a plain run writes the one back and
    removes the other."""
    copy = tmp_path / "deploy" / "kubernetes"
    shutil.copytree(DEPLOY, copy)
    build = build_module()
    monkeypatch.setattr(build, "HERE", copy)
    monkeypatch.setattr(build, "ROOT", tmp_path)
    assert build.main(["--check"]) == 0
    edited = copy / "monitoring" / "prometheusrule.yaml"
    edited.write_text(edited.read_text().replace("severity: critical", "severity: info", 1))
    capsys.readouterr()
    assert build.main(["--check"]) == 1
    assert capsys.readouterr().err.split() == [
        "deploy/kubernetes/monitoring/prometheusrule.yaml",
        *["is", "not", "what", "build.py", "writes"],
    ]
    assert build.main([]) == 0
    assert build.main(["--check"]) == 0
    stale = copy / "monitoring" / "dashboards" / "gone.yaml"
    stale.write_text("{}\n")
    capsys.readouterr()
    assert build.main(["--check"]) == 1
    assert "deploy/kubernetes/monitoring/dashboards/gone.yaml is not" in capsys.readouterr().err
    assert build.main([]) == 0
    assert not stale.exists()
    assert build.main(["--check"]) == 0


def last_applied_size(document: dict[str, Any]) -> int:
    """The bytes of kubectl's last-applied-configuration annotation for ``document``: its
    JSON as Go writes it (``<``, ``>`` and ``&`` escaped)."""
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    for char in "<>&":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return len(text.encode())


def test_rules_and_dashboards_carry_what_the_operator_and_sidecar_select_on() -> None:
    """The PrometheusRule holds every group of alerts/ with kube-prometheus-stack's release
    label; each dashboard is one ConfigMap with the sidecar's label, holding the
    committed JSON under a file name no other dashboard has; each object, the rule's
    too, small enough for `kubectl apply`'s last-applied annotation (all annotations
    together at most 256 KiB)."""
    rule = yaml.safe_load((DEPLOY / "monitoring" / "prometheusrule.yaml").read_text())
    assert rule["metadata"]["labels"] == {"release": "kube-prometheus-stack"}
    assert rule["spec"]["groups"] == rules.load_groups()
    boards = sorted((ROOT / "dashboards").glob("*.json"))
    maps = [
        yaml.safe_load((DEPLOY / "monitoring" / "dashboards" / f"{board.stem}.yaml").read_text())
        for board in boards
    ]
    names = set()
    for board, config_map in zip(boards, maps, strict=True):
        assert config_map["metadata"]["labels"] == {"grafana_dashboard": "1"}
        ((name, text),) = config_map["data"].items()
        assert text == board.read_text()
        assert name == json.loads(text)["uid"] + ".json"
        names.add(name)
        assert last_applied_size(config_map) < 250 * 1024
    assert len(names) == len(boards)
    assert last_applied_size(rule) < 250 * 1024


# -- rendered and validated


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomize_renders_objects_valid_against_their_schemas(
    name: str, validators: dict[str, Any]
) -> None:
    """`kustomize build` renders the directory, and every object passes its schema:
    Kubernetes 1.35's OpenAPI for Deployment, Service and ConfigMap (fields the API server
    would drop refused), prometheus-operator 0.85's CRDs, KEDA's ScaledObject CRD."""
    documents = rendered(name)
    assert documents
    problems = [problem for document in documents for problem in errors(validators, document)]
    assert problems == []
    for document in documents:
        if document["kind"] == "ScaledObject":
            assert keda_cel(document["spec"])


def test_the_directories_render_the_objects_their_comments_promise() -> None:
    """app: the Deployment, a PodMonitor and a ScaledObject; app-servicemonitor: the same
    with a Service and a ServiceMonitor in place of the PodMonitor; monitoring: the
    PrometheusRule and one ConfigMap per dashboard, all in namespace monitoring."""
    kinds = {name: sorted(d["kind"] for d in rendered(name)) for name in KUSTOMIZATIONS}
    assert kinds["app"] == ["Deployment", "PodMonitor", "ScaledObject"]
    assert kinds["app-servicemonitor"] == [
        "Deployment",
        "ScaledObject",
        "Service",
        "ServiceMonitor",
    ]
    boards = len(list((ROOT / "dashboards").glob("*.json")))
    assert kinds["monitoring"] == ["ConfigMap"] * boards + ["PrometheusRule"]
    assert {d["metadata"]["namespace"] for d in rendered("monitoring")} == {"monitoring"}


def test_scrape_job_service_name_and_scaling_query_agree() -> None:
    """What Sightline joins on lines up: the label the PodMonitor (on the pod) and the
    ServiceMonitor (on the Service) take the `job` from equals SIGHTLINE_SERVICE and the
    ScaledObject's job; their selectors match the pod (and the Service), and under
    app-servicemonitor the PodMonitor's does not, so no target is scraped twice; the
    scraped port is the container port SIGHTLINE_METRICS_ADDR listens on, on every
    interface, a valid port with a valid name; both monitors label their targets as the
    rules' services; the ScaledObject scales this Deployment."""
    objects = {d["kind"]: d for d in rendered("app")}
    other = {d["kind"]: d for d in rendered("app-servicemonitor")}
    objects.update(Service=other["Service"], ServiceMonitor=other["ServiceMonitor"])
    deployment, pod = objects["Deployment"], objects["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    host, _, port = env["SIGHTLINE_METRICS_ADDR"].rpartition(":")
    assert host == "0.0.0.0"
    monitors = (("PodMonitor", "podMetricsEndpoints"), ("ServiceMonitor", "endpoints"))
    for monitor, endpoints in monitors:
        spec = objects[monitor]["spec"]
        assert objects[monitor]["metadata"]["labels"] == {"release": "kube-prometheus-stack"}
        assert [e["port"] for e in spec[endpoints]] == ["metrics"]
        # Their targets are services to the rules, as the stack's `apps` job's are.
        marker = {"targetLabel": MARKER, "replacement": MARKER_VALUE}
        assert [e["relabelings"] for e in spec[endpoints]] == [[marker]]
        label = spec["jobLabel"]
        owner = pod if monitor == "PodMonitor" else objects["Service"]
        assert owner["metadata"]["labels"][label] == env["SIGHTLINE_SERVICE"]
        assert spec["selector"]["matchLabels"].items() <= owner["metadata"]["labels"].items()
    # Under app-servicemonitor no PodMonitor (of this app or another) selects the pods.
    pod_labels = other["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    assert not objects["PodMonitor"]["spec"]["selector"]["matchLabels"].items() <= pod_labels
    assert ports["metrics"] == int(port)
    # What the API server checks in code, not in the schema: ports and port names.
    for number in ports.values():
        assert 0 < number < 65536
    for name in ports:
        assert len(name) <= 15
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
    service = objects["Service"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    scaled = objects["ScaledObject"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (trigger,) = scaled["triggers"]
    job = env["SIGHTLINE_SERVICE"]
    assert trigger["metadata"]["query"] == f'sightline:recommended_replicas:count{{job="{job}"}}'


def test_validation_and_rendering_fail_on_what_kubernetes_would_refuse(
    tmp_path: Path, validators: dict[str, Any]
) -> None:
    """The checks can fail: a misspelt field of a Deployment, a PodMonitor and a rule, a port
    given as a list, a ConfigMap value that is not a string, an interval that is not a
    duration and a replica count given as a string are refused, and kustomize refuses a
    kustomization naming a file that does not exist."""
    app = {d["kind"]: d for d in rendered("app")}
    deployment = app["Deployment"]
    deployment["spec"]["selecter"] = deployment["spec"].pop("selector")
    assert any("selecter" in problem for problem in errors(validators, deployment))
    monitor = app["PodMonitor"]
    monitor["spec"]["podMetricEndpoints"] = monitor["spec"].pop("podMetricsEndpoints")
    assert errors(validators, monitor)
    service = {d["kind"]: d for d in rendered("app-servicemonitor")}["Service"]
    service["spec"]["ports"][0]["port"] = [80]
    assert errors(validators, service)
    monitoring = {d["kind"]: d for d in rendered("monitoring")}
    config_map = monitoring["ConfigMap"]
    config_map["data"]["x"] = 1
    assert errors(validators, config_map)
    rule = monitoring["PrometheusRule"]
    rule["spec"]["groups"][0]["rules"][0]["fro"] = "5m"
    assert errors(validators, rule)
    service_monitor = {d["kind"]: d for d in rendered("app-servicemonitor")}["ServiceMonitor"]
    service_monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    assert errors(validators, service_monitor)
    scaled = app["ScaledObject"]
    scaled["spec"]["minReplicaCount"] = "1"
    assert errors(validators, scaled)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    result = kustomize(broken)
    assert result.returncode != 0
    assert "missing.yaml" in result.stderr


def test_what_the_schemas_alone_would_let_through_is_refused(validators: dict[str, Any]) -> None:
    """Rules the conversion writes out: a name with a trailing newline (Python's `$`
    would take it), a bad label on the pod template, a Service port given twice (the
    defaulted protocol makes them one), and a seccomp localhostProfile with another type
    are refused, while a RuntimeDefault seccomp profile passes."""
    app = {d["kind"]: d for d in rendered("app")}
    deployment = copy.deepcopy(app["Deployment"])
    assert errors(validators, deployment) == []
    deployment["metadata"]["name"] = "checkout\n"
    assert errors(validators, deployment)
    deployment = copy.deepcopy(app["Deployment"])
    deployment["spec"]["template"]["metadata"]["labels"]["team"] = "bad value!"
    assert errors(validators, deployment)
    pod = copy.deepcopy(app["Deployment"])
    pod["spec"]["template"]["spec"]["securityContext"] = {
        "seccompProfile": {"type": "RuntimeDefault"}
    }
    assert errors(validators, pod) == []
    pod["spec"]["template"]["spec"]["securityContext"]["seccompProfile"]["localhostProfile"] = "x"
    assert errors(validators, pod)
    pod["spec"]["template"]["spec"]["securityContext"]["seccompProfile"]["type"] = "Localhost"
    assert errors(validators, pod) == []
    service = {d["kind"]: d for d in rendered("app-servicemonitor")}["Service"]
    service["spec"]["ports"].append({"name": "again", "port": 80, "protocol": "TCP"})
    assert any("twice" in problem for problem in errors(validators, service))
