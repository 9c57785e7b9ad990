"""``sightline rules export``: the shipped alert and recording rules, for another ruler.

    sightline rules export --format prometheus [--name NAME] [--namespace NS]
                           [--label KEY=VALUE ...] [--out FILE|DIR]
    sightline rules export --format mimir [--name NAME] [--out FILE|DIR]

The stack's Prometheus loads ``alerts/*.rules.yml``. A cluster that runs the Prometheus
Operator (kube-prometheus-stack) or a Mimir/Cortex ruler (Grafana Cloud included) loads
rules in an envelope of its own; this writes every group of every rule file, unchanged,
in that envelope:

- ``prometheus``: one ``PrometheusRule`` manifest (``monitoring.coreos.com/v1``) named
  NAME (default ``sightline``), in namespace NS if given, with the labels given. The
  operator loads only the objects its ``ruleSelector`` matches: kube-prometheus-stack
  selects its Helm release's label, e.g. ``--label release=kube-prometheus-stack``.
- ``mimir``: a ruler namespace file as ``mimirtool rules load`` (and ``cortextool``)
  reads it, ``namespace: NAME`` and ``groups:``.

The groups come in file-name order and, within a file, in the file's order, so the
output is the same from one run to the next. The result goes to standard output, to a
file, or into a directory as ``NAME-prometheusrule.yaml`` / ``NAME-mimir.yaml``.
Errors are one line on standard error and exit code 2. ``export`` is the command;
``document`` the object it writes, for callers that want it without YAML.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import yaml
from sightline._version import __version__

from .stack.native import FILES

FORMATS = ("prometheus", "mimir")
DEFAULT_NAME = "sightline"
ALERTS = FILES / "alerts"
RULE_GLOB = "*.rules.yml"  # what the stack's Prometheus loads (compose/prometheus)

# Kubernetes object names and label syntax (apimachinery's validation): a name is a DNS
# subdomain, a namespace a DNS label, a label key an optional DNS-subdomain prefix and a
# name, a label value up to 63 characters. The API server would refuse anything else.
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


class RulesError(Exception):
    """What stops the export, said in one line."""


def rule_files(directory: Path = ALERTS) -> list[Path]:
    return sorted(directory.glob(RULE_GLOB))


def load_groups(directory: Path = ALERTS) -> list[dict[str, Any]]:
    """Every rule group of every rule file in ``directory``, in a stable order; a group
    name used twice is an error, since every target of the export refuses it."""
    files = rule_files(directory)
    if not files:
        raise RulesError(f"no {RULE_GLOB} files in {directory}")
    groups: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    for path in files:
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise RulesError(f"cannot read {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" line {where.line + 1}" if where is not None else ""
            problem = getattr(exc, "problem", None) or "not YAML"
            raise RulesError(f"{path}{line}: {problem}") from None
        if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
            raise RulesError(f"{path}: not a rule file (no list of groups)")
        for group in data["groups"]:
            name = group.get("name") if isinstance(group, dict) else None
            if not isinstance(name, str) or not isinstance(group.get("rules"), list):
                raise RulesError(f"{path}: a group without a name or a list of rules")
            if name in seen:
                raise RulesError(f"group {name!r} is in both {seen[name]} and {path}")
            seen[name] = path
            groups.append(group)
    return groups


def parse_labels(specs: Iterable[str]) -> dict[str, str]:
    """``["k=v", ...]`` (repeated ``--label``) as a dict; later keys win."""
    labels = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key:
            raise RulesError(f"--label: expected KEY=VALUE, got {spec!r}")
        labels[key] = value
    return labels


def _check_kubernetes(name: str, namespace: str | None, labels: Mapping[str, str]) -> None:
    if len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        raise RulesError(
            f"--name {name!r}: a Kubernetes name is lower-case letters, digits, '-' and '.'"
        )
    if namespace is not None and (len(namespace) > 63 or not re.fullmatch(_DNS_LABEL, namespace)):
        raise RulesError(
            f"--namespace {namespace!r}: a Kubernetes namespace is lower-case letters, "
            "digits and '-'"
        )
    for key, value in labels.items():
        prefix, _, key_name = key.rpartition("/")
        if (
            (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)))
            or len(key_name) > 63
            or not _LABEL_NAME.fullmatch(key_name)
        ):
            raise RulesError(f"--label {key}={value}: {key!r} is not a Kubernetes label key")
        if len(value) > 63 or not (value == "" or _LABEL_NAME.fullmatch(value)):
            raise RulesError(f"--label {key}={value}: {value!r} is not a Kubernetes label value")


def prometheus_rule(
    groups: list[dict[str, Any]],
    name: str = DEFAULT_NAME,
    namespace: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A Prometheus Operator ``PrometheusRule`` object holding ``groups``."""
    labels = dict(labels or {})
    _check_kubernetes(name, namespace, labels)
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    if labels:
        metadata["labels"] = labels
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": metadata,
        "spec": {"groups": groups},
    }


def mimir_namespace(groups: list[dict[str, Any]], name: str = DEFAULT_NAME) -> dict[str, Any]:
    """A Mimir/Cortex ruler namespace file (``mimirtool rules load``) holding ``groups``."""
    if not name or "/" in name or name != name.strip() or not name.isprintable():
        raise RulesError(f"--name {name!r}: a ruler namespace is printable, without '/'")
    return {"namespace": name, "groups": groups}


def document(
    fmt: str,
    name: str = DEFAULT_NAME,
    namespace: str | None = None,
    labels: Mapping[str, str] | None = None,
    directory: Path = ALERTS,
) -> dict[str, Any]:
    """The object ``export`` writes, before YAML."""
    if fmt not in FORMATS:
        raise RulesError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "mimir" and (namespace is not None or labels):
        raise RulesError(
            "--namespace and --label are for --format prometheus; a Mimir namespace is --name"
        )
    groups = load_groups(directory)
    if fmt == "prometheus":
        return prometheus_rule(groups, name, namespace, labels)
    return mimir_namespace(groups, name)


class _Dumper(yaml.SafeDumper):
    """YAML as the rule files write it: lists indented under their key, multi-line
    strings (most PromQL) as ``|`` blocks."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(fmt: str, data: Mapping[str, Any]) -> str:
    header = f"# Sightline {__version__} alert and recording rules, from alerts/{RULE_GLOB}:\n"
    header += f"# sightline rules export --format {fmt}\n"
    body = yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=10_000, allow_unicode=True)
    return header + body


def target(fmt: str, out: Path, name: str) -> Path:
    """Where ``--out`` writes: the file itself, or a file named after NAME in a directory."""
    if out.is_dir():
        return out / f"{name}-{'prometheusrule' if fmt == 'prometheus' else 'mimir'}.yaml"
    return out


def _write(path: Path, text: str) -> None:
    """Replace ``path`` whole, so a failed write leaves the old file, not half a new one."""
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise RulesError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        raise RulesError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        Path(temporary).unlink(missing_ok=True)  # replaced already, unless it failed


def export(
    fmt: str,
    out: Path | None = None,
    name: str = DEFAULT_NAME,
    namespace: str | None = None,
    labels: Mapping[str, str] | None = None,
    *,
    directory: Path = ALERTS,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Write the rules in format ``fmt`` to ``out`` (a file or a directory) or standard
    output; the exit code: 0, or 2 after one line on standard error."""
    try:
        text = render(fmt, document(fmt, name, namespace, labels, directory))
        if out is None:
            (stdout or sys.stdout).write(text)
        else:
            _write(target(fmt, out, name), text)
    except RulesError as exc:
        (stderr or sys.stderr).write(f"sightline: {exc}\n")
        return 2
    return 0
