"""Rules and Alertmanager configuration are code: checked, unit-tested and held to conventions."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from sightline_appliance.doctor import MARKER, MARKER_VALUE

from .servers import FLAVOURS, binary

# Checks the stack's files, binaries and processes: not run again by .ci/newest-sdk.
pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "alerts"
RULE_FILES = sorted(ALERTS.glob("*.rules.yml"))
TEST_FILES = sorted((ALERTS / "tests").glob("*.yml"))
ALERTMANAGER = ALERTS / "alertmanager.yml"
DOCS = ROOT / "docs" / "alerts.md"
RUNBOOK = "https://github.com/sightline-dev/sightline/blob/main/docs/alerts.md#"
SEVERITIES = {"critical", "warning", "info"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules() -> list[dict[str, Any]]:
    return [
        rule for path in RULE_FILES for group in load(path)["groups"] for rule in group["rules"]
    ]


def alerting_rules() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def alert_cases() -> list[dict[str, Any]]:
    return [
        case
        for path in TEST_FILES
        for test in load(path)["tests"]
        for case in test.get("alert_rule_test") or []
    ]


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the page's headings."""
    anchors = set()
    for line in markdown.splitlines():
        heading = re.match(r"#+\s+(.*)", line)
        if heading:
            text = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    """Debian's promtool/amtool and the ones compose pins: the rules and routes must hold
    on both (Prometheus 3 selects ranges left-open, among other changes)."""
    return str(request.param)


def test_there_are_rule_files_and_unit_tests() -> None:
    """The glob Prometheus loads finds rule files, and each one has a unit-test file."""
    assert RULE_FILES
    tested = {path.name.removesuffix(".test.yml") for path in TEST_FILES}
    assert {path.name.removesuffix(".rules.yml") for path in RULE_FILES} <= tested


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda path: path.name)
def test_rule_file_passes_promtool_check(path: Path, flavour: str) -> None:
    """promtool accepts the rule file, duplicate rules included as errors."""
    promtool = binary("promtool", flavour=flavour)
    result = run(promtool, "check", "rules", "--lint=duplicate-rules", "--lint-fatal", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda path: path.name)
def test_rule_unit_tests_pass(path: Path, flavour: str) -> None:
    """Every promtool unit test of the file passes."""
    result = run(binary("promtool", flavour=flavour), "test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_config_passes_amtool_check(flavour: str) -> None:
    """amtool accepts the Alertmanager configuration."""
    result = run(binary("amtool", flavour=flavour), "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr


def uncomment_examples(text: str) -> str:
    """The configuration with every commented `*_configs:` example block switched on."""
    lines, in_example = [], False
    for line in text.splitlines():
        start = re.match(r"^(\s*)# (\w+_configs:)$", line)
        more = re.match(r"^(\s*)# (\s+\S.*)$", line)
        if start:
            in_example = True
            lines.append(start.group(1) + start.group(2))
        elif in_example and more:
            lines.append(more.group(1) + more.group(2))
        else:
            in_example = False
            lines.append(line)
    return "\n".join(lines) + "\n"


def test_commented_receiver_examples_are_valid(tmp_path: Path, flavour: str) -> None:
    """Uncommented, the webhook, email and Slack examples make a configuration amtool accepts."""
    amtool = binary("amtool", flavour=flavour)
    text = uncomment_examples(ALERTMANAGER.read_text())
    for integration in ("webhook_configs", "email_configs", "slack_configs"):
        assert re.search(rf"^\s+{integration}:$", text, re.M), f"no {integration} example"
    settings = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"\b(auth_password|api_url|url):", settings), "a secret is written inline"
    version = re.search(r"version (\d+)\.(\d+)", run(amtool, "--version").stdout)
    if version and (int(version[1]), int(version[2])) < (0, 26):
        # url_file arrived in Alertmanager 0.26; the stack runs a newer one.
        text = text.replace(
            "url_file: /etc/alertmanager/secrets/hints-webhook-url", "url: http://hints/"
        )
    config = tmp_path / "alertmanager.yml"
    config.write_text(text)
    result = run(amtool, "check-config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=SightlineServiceDown", "severity=critical", "job=shop"], "page"),
        (["alertname=SightlineHighErrorRatio", "severity=warning", "job=shop"], "ticket"),
        (["alertname=SightlineCPUThrottlingHigh", "severity=info", "job=shop"], "blackhole"),
        (
            ["alertname=SightlineScaleUpRecommended", "severity=warning", "job=shop"],
            "scaling-hints",
        ),
        (["alertname=SightlineScaleDownPossible", "severity=info", "job=shop"], "scaling-hints"),
        (["alertname=SomebodyElsesAlert", "job=shop"], "default"),
    ],
    ids=["critical", "warning", "info", "scale-up-hint", "scale-down-hint", "no-severity"],
)
def test_alertmanager_routes_by_severity_and_hint(
    labels: list[str], receiver: str, flavour: str
) -> None:
    """Each kind of alert reaches its receiver: page, ticket, blackhole, scaling-hints, default."""
    amtool = binary("amtool", flavour=flavour)
    result = run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_rule_files_start_with_a_comment_and_hold_only_rule_groups() -> None:
    """Each rule file opens with a comment saying what it covers and parses as rule groups."""
    for path in RULE_FILES:
        assert path.read_text().startswith("# "), f"{path.name} does not start with a comment"
        assert set(load(path)) == {"groups"}, path.name
    for path in (ALERTS / "tests").iterdir():
        assert not path.name.endswith(".rules.yml"), f"Prometheus would load {path.name}"


def test_alerts_follow_the_naming_severity_and_annotation_conventions() -> None:
    """Every alert is Sightline CamelCase with a known severity, summary, description, runbook."""
    summaries: dict[str, set[str]] = {}
    for rule in alerting_rules():
        name = rule["alert"]
        assert re.fullmatch(r"Sightline(?:[A-Z][a-z0-9]*|[A-Z]+(?=[A-Z]|$))+", name), name
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = rule.get("annotations", {})
        summary = annotations.get("summary", "")
        assert summary.endswith("."), f"{name}: summary {summary!r}"
        assert "{{" not in summary, f"{name}: summary {summary!r}"
        description = annotations.get("description", "")
        assert "$labels." in description, f"{name}: {description!r}"
        assert "$value" in description, f"{name}: {description!r}"
        assert annotations.get("runbook_url") == RUNBOOK + name.lower(), name
        summaries.setdefault(name, set()).add(summary)
    same = {name: texts for name, texts in summaries.items() if len(texts) > 1}
    assert not same, f"rules of one alert name with different summaries: {same}"


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    """Each alert name is expected to fire in some unit test and to stay silent in another."""
    fires = {case["alertname"] for case in alert_cases() if case.get("exp_alerts")}
    silent = {case["alertname"] for case in alert_cases() if not case.get("exp_alerts")}
    names = {rule["alert"] for rule in alerting_rules()}
    assert not names - fires, f"never tested firing: {sorted(names - fires)}"
    assert not names - silent, f"never tested silent: {sorted(names - silent)}"


def test_firing_cases_give_exact_labels_and_all_annotations() -> None:
    """A firing expectation names the severity and every annotation, so templates are checked."""
    severities = {}
    for rule in alerting_rules():
        severities.setdefault(rule["alert"], set()).add(rule["labels"]["severity"])
    for case in alert_cases():
        for alert in case.get("exp_alerts") or []:
            assert alert["exp_labels"]["severity"] in severities[case["alertname"]], case
            assert {"summary", "description", "runbook_url"} <= set(alert["exp_annotations"]), case


def test_recording_rule_names_are_level_metric_operation() -> None:
    """Every recording rule is named level:metric:operation in lower case."""
    for rule in rules():
        if "record" in rule:
            assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]


def test_recording_rules_are_covered_by_expression_tests() -> None:
    """The hint rules and the SLO ratios have expected values in a promql_expr_test."""
    exprs = " ".join(
        case["expr"]
        for path in TEST_FILES
        for test in load(path)["tests"]
        for case in test.get("promql_expr_test") or []
    )
    for name in (
        "sightline:actual_replicas:count",
        "sightline:required_replicas:count",
        "sightline:recommended_replicas:count",
        "slo:objective:ratio",
        "slo:error_budget:ratio",
        "slo:sli_error:ratio_rate5m",
        "slo:sli_error:ratio_rate30m",
        "slo:sli_error:ratio_rate3d",
        "slo:current_burn_rate:ratio",
    ):
        assert name in exprs, f"{name} has no promql_expr_test"


def test_unit_tests_evaluate_every_group_in_a_fixed_order() -> None:
    """Each test file orders every rule group, so a rule reading another group's result is exact."""
    groups = [group["name"] for path in RULE_FILES for group in load(path)["groups"]]
    for path in TEST_FILES:
        order = load(path).get("group_eval_order") or []
        assert sorted(order) == sorted(groups), f"{path.name}: group_eval_order is not complete"


def test_runbook_anchors_and_recording_rules_are_in_the_docs() -> None:
    """Each runbook_url anchor is a heading of docs/alerts.md, which names every recording rule."""
    page = DOCS.read_text()
    anchors = github_anchors(page)
    for rule in alerting_rules():
        anchor = rule["annotations"]["runbook_url"].partition("#")[2]
        assert anchor in anchors, f"docs/alerts.md has no heading for #{anchor}"
    for rule in rules():
        if "record" in rule:
            assert f"`{rule['record']}`" in page, f"{rule['record']} is not in docs/alerts.md"


def test_metrics_other_exporters_serve_too_are_read_from_services_only() -> None:
    """Every selector of `up` and `process_open_fds` in the rules (metrics every exporter
    or many serve) carries the service label the stack's scrape config and the Kubernetes
    monitors set and `sightline doctor` checks, so a cluster's or the stack's own jobs
    are never taken for services; and the label is named nowhere else by another value."""
    marker = f'{MARKER}="{MARKER_VALUE}"'
    found = 0
    for rule in rules():
        expr = rule["expr"]
        for metric in ("up", "process_open_fds"):
            for selector in re.finditer(rf"\b{metric}\b(\{{[^}}]*\}})?", expr):
                if selector.start() and expr[selector.start() - 1] in ":_":
                    continue  # part of a longer name
                assert marker in (selector.group(1) or ""), (rule.get("record"), expr)
                found += 1
        values = re.findall(rf'\b{MARKER}\s*!?=~?\s*"([^"]*)"', expr)
        assert set(values) <= {MARKER_VALUE}, expr
    assert found >= 6
