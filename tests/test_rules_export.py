"""`sightline rules export`: the shipped rules as a PrometheusRule and a Mimir ruler namespace."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from sightline import cli
from sightline_appliance import rules as _rules

from .schemas import PROMETHEUS_OPERATOR, PROMETHEUS_RULE_CRD, crd_validator, structural
from .servers import FLAVOURS, binary

# Checks the stack's files, binaries and processes: not run again by .ci/newest-sdk.
pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parent.parent
RULE_FILES = sorted((ROOT / "alerts").glob("*.rules.yml"))

CRD = PROMETHEUS_RULE_CRD
RELEASE = {"release": "kube-prometheus-stack"}


def source_groups() -> list[dict[str, Any]]:
    """The groups of alerts/*.rules.yml, read here and not through the module."""
    return [group for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]]


def exported(fmt: str, **options: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = _rules.export(fmt, stdout=out, stderr=err, **options)
    return code, out.getvalue(), err.getvalue()


def exported_yaml(fmt: str, **options: Any) -> Any:
    code, out, err = exported(fmt, **options)
    assert (code, err) == (0, ""), err
    return yaml.safe_load(out)


def rule_ids(groups: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(group, alert or recorded metric) for every rule."""
    return [
        (group["name"], rule.get("alert") or rule["record"])
        for group in groups
        for rule in group["rules"]
    ]


@pytest.fixture(params=FLAVOURS)
def promtool(request: pytest.FixtureRequest) -> str:
    """Debian's promtool and the one compose pins (Prometheus 2 and 3)."""
    return binary("promtool", flavour=str(request.param))


@pytest.fixture(scope="module")
def prometheus_rule_validator() -> Any:
    """The PrometheusRule CRD's schema at the pinned operator release."""
    return crd_validator(PROMETHEUS_OPERATOR.file(CRD))


def promtool_check(promtool: str, groups: list[dict[str, Any]], path: Path) -> None:
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    result = subprocess.run(
        [promtool, "check", "rules", "--lint=duplicate-rules", "--lint-fatal", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_module_reads_the_rule_files_the_stack_loads() -> None:
    """The export reads the repository's alerts/*.rules.yml, through the package's stack files."""
    assert RULE_FILES
    assert [path.resolve() for path in _rules.rule_files()] == [p.resolve() for p in RULE_FILES]


def test_prometheus_rule_satisfies_the_operators_crd(prometheus_rule_validator: Any) -> None:
    """The PrometheusRule manifest validates against the operator's PrometheusRule CRD schema."""
    manifest = exported_yaml("prometheus", name="sightline", namespace="monitoring", labels=RELEASE)
    errors = [error.message for error in prometheus_rule_validator.iter_errors(manifest)]
    assert not errors, errors
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["metadata"] == {
        "name": "sightline",
        "namespace": "monitoring",
        "labels": {"release": "kube-prometheus-stack"},
    }


def first_rule(manifest: dict[str, Any]) -> dict[str, Any]:
    rule: dict[str, Any] = manifest["spec"]["groups"][0]["rules"][0]
    return rule


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda m: first_rule(m).update(severity="x"), "'severity' was"),
        (lambda m: m["spec"]["groups"].append(m["spec"]["groups"][0]), "in the list twice"),
        (lambda m: first_rule(m)["labels"].update(n=1), "is not of type"),
        (lambda m: first_rule(m).update(expr=[]), "is not valid under any"),
        (lambda m: first_rule(m).update({"for": "5 min"}), "'5 min' does not match"),
        (lambda m: m["metadata"].update(name="Sightline"), "'Sightline' does not match"),
        (lambda m: m["metadata"]["labels"].update({"a/b/c": "x"}), "does not match any"),
        (lambda m: m.update(kind="PrometheusRules"), "is not one of"),
    ],
    ids=["unknown-field", "duplicate-group", "label-not-string", "expr-type", "duration",
         "name", "label-key", "kind"],
)  # fmt: skip
def test_the_crd_check_refuses_what_the_api_server_would(
    prometheus_rule_validator: Any, change: Any, error: str
) -> None:
    """The CRD check is not vacuous: unknown fields, repeated group names, wrong types,
    bad durations and bad metadata each fail it, as the API server would refuse them."""
    manifest = exported_yaml("prometheus", labels=RELEASE)
    change(manifest)
    messages = [e.message for e in prometheus_rule_validator.iter_errors(manifest)]
    assert any(error in message for message in messages), messages


def test_prometheus_rule_groups_pass_promtool(promtool: str, tmp_path: Path) -> None:
    """spec.groups of the manifest, written as a plain rule file, passes promtool check rules."""
    groups = exported_yaml("prometheus")["spec"]["groups"]
    promtool_check(promtool, groups, tmp_path / "prometheusrule.rules.yml")


def test_mimir_namespace_groups_pass_promtool(promtool: str, tmp_path: Path) -> None:
    """The Mimir file is `namespace` and `groups`, and its groups pass promtool check rules."""
    data = exported_yaml("mimir", name="sightline-prod")
    assert list(data) == ["namespace", "groups"]
    assert data["namespace"] == "sightline-prod"
    promtool_check(promtool, data["groups"], tmp_path / "mimir.rules.yml")


@pytest.mark.parametrize("fmt", _rules.FORMATS)
def test_every_group_and_rule_appears_once_unchanged_in_order(fmt: str) -> None:
    """Every group and rule of alerts/*.rules.yml is in the output exactly once, unchanged,
    in file-name then file order."""
    data = exported_yaml(fmt)
    groups = data["spec"]["groups"] if fmt == "prometheus" else data["groups"]
    expected = source_groups()
    assert rule_ids(groups) == rule_ids(expected)
    names = [group["name"] for group in groups]
    assert len(set(names)) == len(names)
    assert groups == expected


@pytest.mark.parametrize("fmt", _rules.FORMATS)
def test_output_is_the_same_from_one_run_to_the_next(fmt: str, tmp_path: Path) -> None:
    """Two exports write the same bytes, to standard output and to a file."""
    first, second = exported(fmt), exported(fmt)
    assert first == second
    assert _rules.export(fmt, tmp_path / "rules.yaml") == 0
    assert (tmp_path / "rules.yaml").read_text() == first[1]


def test_out_directory_gets_a_file_named_after_the_object(tmp_path: Path) -> None:
    """--out DIR writes NAME-prometheusrule.yaml and NAME-mimir.yaml, side by side."""
    assert _rules.export("prometheus", tmp_path, "shop-rules") == 0
    assert _rules.export("mimir", tmp_path, "shop-rules") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "shop-rules-mimir.yaml",
        "shop-rules-prometheusrule.yaml",
    ]
    manifest = yaml.safe_load((tmp_path / "shop-rules-prometheusrule.yaml").read_text())
    assert manifest["metadata"] == {"name": "shop-rules"}


def one_error_line(code: int, out: str, err: str) -> str:
    assert code == 2
    assert out == ""
    assert err.startswith("sightline: ")
    assert err.count("\n") == 1, err
    assert err.endswith("\n"), err
    return err


def test_unknown_format_is_one_error_line() -> None:
    """An unknown --format: one line naming it and the formats there are, exit code 2."""
    err = one_error_line(*exported("thanos"))
    assert "'thanos'" in err
    assert "prometheus, mimir" in err


@pytest.mark.parametrize("where", ["missing/rules.yaml", "file/rules.yaml"])
def test_unwritable_out_is_one_error_line(tmp_path: Path, where: str) -> None:
    """An --out that cannot be written (no such directory, a file as directory): one
    line naming the path and why, exit code 2, nothing left behind."""
    (tmp_path / "file").write_text("")
    out = tmp_path / where
    err = one_error_line(*exported("prometheus", out=out))
    assert f"cannot write {out}: " in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    """A write that fails midway leaves the previous export whole (the file is replaced)."""
    out = tmp_path / "rules.yaml"
    out.write_text("previous\n")
    with pytest.raises(TypeError):
        _rules._write(out, None)  # type: ignore[arg-type]
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rules.yaml"]


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        ("groups:\n  - name: a\n    rules: [\n", "line "),
        ("groups: {}\n", "not a rule file"),
        ("groups:\n  - rules: []\n", "a group without a name"),
    ],
    ids=["not-yaml", "not-a-list", "no-name"],
)
def test_a_rule_file_that_does_not_parse_is_one_error_line(
    tmp_path: Path, text: str, cause: str
) -> None:
    """A rule file that is not YAML, or not rule groups: one line naming the file, exit 2."""
    (tmp_path / "a.rules.yml").write_text("groups: []\n")
    (tmp_path / "b.rules.yml").write_text(text)
    err = one_error_line(*exported("mimir", directory=tmp_path))
    assert str(tmp_path / "b.rules.yml") in err
    assert cause in err


def test_a_group_name_in_two_files_is_one_error_line(tmp_path: Path) -> None:
    """Two files with one group name: an error naming both files, since every ruler
    refuses a repeated group name."""
    for name in ("a", "b"):
        (tmp_path / f"{name}.rules.yml").write_text("groups:\n  - name: g\n    rules: []\n")
    err = one_error_line(*exported("prometheus", directory=tmp_path))
    assert "'g'" in err
    assert str(tmp_path / "a.rules.yml") in err
    assert str(tmp_path / "b.rules.yml") in err


@pytest.mark.parametrize(
    ("fmt", "options", "cause"),
    [
        ("prometheus", {"name": "Sightline"}, "--name"),
        ("prometheus", {"namespace": "Monitoring"}, "--namespace"),
        ("prometheus", {"labels": {"release": "kube prometheus"}}, "--label"),
        ("prometheus", {"labels": {"-release": "x"}}, "--label"),
        ("mimir", {"name": "a/b"}, "--name"),
        ("mimir", {"namespace": "monitoring"}, "--namespace"),
    ],
    ids=["k8s-name", "k8s-namespace", "label-value", "label-key", "mimir-name", "mimir-ns"],
)
def test_names_the_target_would_refuse_are_one_error_line(
    fmt: str, options: dict[str, Any], cause: str
) -> None:
    """A name, namespace or label the target refuses (or ignores) fails here, in one line."""
    err = one_error_line(*exported(fmt, **options))
    assert cause in err


def test_label_options_parse_as_key_value() -> None:
    """Repeated --label KEY=VALUE make the labels; a spec without '=' is an error."""
    assert _rules.parse_labels(["release=kps", "team=web", "empty="]) == {
        "release": "kps",
        "team": "web",
        "empty": "",
    }
    with pytest.raises(_rules.RulesError, match="expected KEY=VALUE"):
        _rules.parse_labels(["release"])


def test_cli_writes_a_prometheus_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`sightline rules export --format prometheus --label ... --out DIR` writes the manifest."""
    argv = ["rules", "export", "--format", "prometheus", "--namespace", "monitoring"]
    argv += ["--label", "release=kube-prometheus-stack", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    manifest = yaml.safe_load((tmp_path / "sightline-prometheusrule.yaml").read_text())
    assert manifest["metadata"]["labels"] == RELEASE
    assert manifest["spec"]["groups"] == source_groups()


def test_cli_bad_input_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    """The command prints one error line and exits 2 for a bad format or --label."""
    for argv in (["--format", "thanos"], ["--format", "prometheus", "--label", "release"]):
        assert cli.main(["rules", "export", *argv]) == 2
        captured = capsys.readouterr()
        one_error_line(2, captured.out, captured.err)


def test_the_crd_check_refuses_a_schema_it_cannot_check_in_full() -> None:
    """A CRD extension the check does not implement (CEL validations) raises, not passes."""
    schema = {"type": "object", "x-kubernetes-validations": [{"rule": "self.a > 0"}]}
    with pytest.raises(NotImplementedError, match="x-kubernetes-validations"):
        structural(schema)
