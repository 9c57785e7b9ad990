"""One table of thresholds (sightline_appliance.thresholds): every rule holds the numbers the table
gives it and compares with no other, and each panel it names is coloured at its number.

The rule files stay hand-written: these tests parse them with yaml and read the numbers
in each rule's expression and annotations. The dashboards take their numbers from the
table when ``dashboards/build.py`` renders them; the committed JSON is read here.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pytest
import yaml
from sightline import metrics
from sightline_appliance.thresholds import SLOW_REQUEST, THRESHOLDS, Threshold

from .servers import ROOT

# Checks the stack's files: not run again by .ci/newest-sdk.
pytestmark = pytest.mark.stack

Json = dict[str, Any]
Rule = dict[str, Any]

RULE_FILES = sorted((ROOT / "alerts").glob("*.rules.yml"))
BOARDS = ROOT / "dashboards"
UNITS = {"ratio", "s", "requests/s", "calls/s", "runs/s", "messages", "x"}

NUMBER = r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?"
# Any number of an expression: not a duration (5m), nor part of a name (p95_5m, rate5m).
LITERAL = re.compile(rf"(?<![\w.:$])({NUMBER})(?![\w.:])")
# A number on either side of an ordering comparison (x > 0.8, x >= bool 2, 0.3 < x).
# == and != test a state (up == 0), not a threshold.
COMPARED = re.compile(
    rf"(?:>=|<=|>|<)\s*(?:bool\s+)?({NUMBER})(?![\w.])"
    rf"|(?<![\w.:$])({NUMBER})\s*(?:>=|<=|>|<)"
)
# A number an annotation quotes with its unit: 5%, 1s, 100ms, 14.4x, "threshold 10m".
QUOTED = re.compile(rf"(?<![\w.])({NUMBER})(%|ms|s|x)(?!\w)|\bthreshold ({NUMBER})m\b")
SCALE = {"%": 0.01, "ms": 0.001, "s": 1.0, "x": 1.0}
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
REF = re.compile(r'([\w:]+)(?:\{(\w+)="([^"]*)"\})?')


# -- reading the rules


def load_rules() -> list[Rule]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def name_of(rule: Rule) -> str:
    return str(rule.get("alert") or rule["record"])


def label(rule: Rule) -> str:
    labels = ", ".join(f'{key}="{value}"' for key, value in sorted(rule.get("labels", {}).items()))
    return f"{name_of(rule)}{{{labels}}}" if labels else name_of(rule)


def literals(expr: str) -> list[float]:
    """Every number written in a PromQL expression, label values (le="0.5") included."""
    return [float(found) for found in LITERAL.findall(expr)]


def compared(text: str) -> list[float]:
    """The numbers a text compares something with (>, >=, <, <=), zero included."""
    return [float(right or left) for right, left in COMPARED.findall(text)]


def quoted(text: str) -> list[float]:
    """The numbers a description quotes with a unit, in the rules' units (5% is 0.05)."""
    found = []
    for number, unit, minutes in QUOTED.findall(text):
        found.append(float(minutes) * 60 if minutes else float(number) * SCALE[unit])
    return found


def annotations(rule: Rule) -> str:
    return "\n".join(str(value) for value in rule.get("annotations", {}).values())


def numbers_in(rule: Rule) -> list[float]:
    """Every number of the rule: its expression's, and those its annotations compare or quote."""
    text = annotations(rule)
    return literals(rule["expr"]) + compared(text) + quoted(text)


def thresholds_in(rule: Rule) -> list[float]:
    """The numbers the rule compares with or quotes, but 0 ("any at all" is no threshold)."""
    text = annotations(rule)
    found = compared(STRING.sub('""', rule["expr"])) + compared(text) + quoted(text)
    return sorted({value for value in found if value != 0})


def resolve(ref: str, rules: Iterable[Rule]) -> list[Rule]:
    """The rules a table reference names: ``Name``, or ``Name{label="value"}``."""
    match = REF.fullmatch(ref)
    if match is None:
        raise ValueError(f"{ref!r} is not a rule name with at most one label")
    name, key, value = match.groups()
    return [
        rule
        for rule in rules
        if name_of(rule) == name and (key is None or rule.get("labels", {}).get(key) == value)
    ]


# -- reading the dashboards


def load_boards() -> dict[str, Json]:
    """Each dashboard's JSON by its file name without .json."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(BOARDS.glob("*.json"))}


def panels_titled(board: Json, title: str) -> list[Json]:
    found = []
    for panel in board["panels"]:
        found.extend(p for p in (panel, *panel.get("panels", [])) if p.get("title") == title)
    return found


def steps(node: Any) -> Iterator[float]:
    """The value of every threshold step anywhere in a panel: defaults and overrides."""
    if isinstance(node, dict):
        for step in node.get("steps") or []:
            if isinstance(step, dict) and step.get("value") is not None:
                yield float(step["value"])
        for child in node.values():
            yield from steps(child)
    elif isinstance(node, list):
        for child in node:
            yield from steps(child)


# -- the comparison


def holds(values: Iterable[float], value: float) -> bool:
    return any(math.isclose(found, value, rel_tol=1e-9) for found in values)


def problems(
    table: Mapping[str, Threshold], rules: list[Rule], boards: Mapping[str, Json]
) -> list[str]:
    """What differs between the table, the rules and the dashboards, one line each."""
    found = []
    given: dict[int, list[float]] = {}  # id(rule) -> the values the table gives it
    for name, threshold in table.items():
        for ref in threshold.rules:
            matches = resolve(ref, rules)
            if len(matches) != 1:
                found.append(f"{name}: {ref} names {len(matches)} rules, not one")
                continue
            rule = matches[0]
            given.setdefault(id(rule), []).append(threshold.value)
            if not holds(numbers_in(rule), threshold.value):
                found.append(
                    f"{name} is {threshold.value:g}, but {ref} does not hold that number "
                    f"(it holds {sorted(set(numbers_in(rule)))})"
                )
    for rule in rules:
        for value in thresholds_in(rule):
            if not holds(given.get(id(rule), []), value):
                found.append(
                    f"{label(rule)} compares with or quotes {value:g}, which no threshold of "
                    "sightline_appliance/thresholds.py that names it holds"
                )
    for name, threshold in table.items():
        for ref in threshold.panels:
            board, _, title = ref.partition(": ")
            matches = panels_titled(boards.get(board, {"panels": []}), title)
            if not matches:
                found.append(f"{name}: dashboard {board!r} has no panel {title!r}")
            for panel in matches:
                if not holds(steps(panel), threshold.value):
                    found.append(
                        f"{name} is {threshold.value:g}, but {ref} is coloured at "
                        f"{sorted(set(steps(panel)))}"
                    )
    return found


# -- the tests


def test_rules_and_dashboards_agree_with_the_table() -> None:
    """Each rule holds every number the table gives it and compares with no other, and each
    panel the table names is coloured at its number."""
    assert problems(THRESHOLDS, load_rules(), load_boards()) == []


def test_every_threshold_names_a_rule_a_unit_and_a_meaning() -> None:
    """Every entry is used by some rule, in a known unit, and says what it means in a sentence."""
    for name, threshold in THRESHOLDS.items():
        assert name.isupper(), name
        assert threshold.rules, f"{name} names no rule"
        assert threshold.unit in UNITS, f"{name}: unit {threshold.unit!r}"
        assert threshold.meaning.endswith("."), f"{name}: {threshold.meaning!r}"
        assert "\n" not in threshold.meaning, name
        assert len(set(threshold.rules)) == len(threshold.rules), name
        assert len(set(threshold.panels)) == len(threshold.panels), name


def new_problems(
    table: Mapping[str, Threshold] = THRESHOLDS,
    rules: list[Rule] | None = None,
    boards: Mapping[str, Json] | None = None,
) -> list[str]:
    """The problems of a changed table, rules or dashboards that the committed ones lack."""
    known = set(problems(THRESHOLDS, load_rules(), load_boards()))
    found = problems(table, load_rules() if rules is None else rules, boards or load_boards())
    return [line for line in found if line not in known]


def test_a_number_changed_in_a_rule_alone_is_caught() -> None:
    """An alert whose number is changed in its rule file but not in the table fails: the
    rule compares with a number the table does not give it."""
    rules = copy.deepcopy(load_rules())
    (rule,) = resolve("SightlineHighErrorRatio", rules)
    rule["expr"] = rule["expr"].replace("> 0.05", "> 0.06")
    assert new_problems(rules=rules) == [
        'SightlineHighErrorRatio{severity="warning"} compares with or quotes 0.06, which no '
        "threshold of sightline_appliance/thresholds.py that names it holds"
    ]


def test_a_number_changed_in_the_table_alone_is_caught() -> None:
    """A table entry changed without its rule fails twice: the rule does not hold the new
    number, and still compares with (and its description quotes) the old one."""
    table = {
        **THRESHOLDS,
        "ERROR_RATIO": dataclasses.replace(THRESHOLDS["ERROR_RATIO"], value=0.06),
    }
    found = new_problems(table)
    assert found[0].startswith("ERROR_RATIO is 0.06, but SightlineHighErrorRatio does not hold")
    assert found[1] == (
        'SightlineHighErrorRatio{severity="warning"} compares with or quotes 0.05, which no '
        "threshold of sightline_appliance/thresholds.py that names it holds"
    )
    assert [line.partition(" is coloured at ")[0] for line in found[2:]] == [
        f"ERROR_RATIO is 0.06, but {panel}" for panel in THRESHOLDS["ERROR_RATIO"].panels
    ]


def test_a_new_hard_coded_comparison_is_caught() -> None:
    """A rule that compares with a number the table does not give it fails, an alert's or a
    recording rule's, and so does a description quoting a number the rule does not use."""
    rules = copy.deepcopy(load_rules())
    rules.append({"alert": "SightlineNew", "expr": "job:x:ratio > 0.42", "labels": {}})
    rules.append({"record": "job:y:ratio", "expr": "0.3 < bool job:x:ratio"})
    (rule,) = resolve("SightlineCPUNearLimit", rules)
    rule["annotations"]["description"] += " (threshold 95%)"
    found = new_problems(rules=rules)
    assert [line.split(" compares")[0] for line in found] == [
        'SightlineCPUNearLimit{severity="warning"}',
        "SightlineNew",
        "job:y:ratio",
    ], found
    assert "quotes 0.95," in found[0]


def test_a_panel_coloured_elsewhere_is_caught() -> None:
    """A panel the table names whose colours no longer change at the table's number fails."""
    boards = copy.deepcopy(load_boards())
    (panel,) = panels_titled(boards["saturation"], "CPU ÷ limit")
    panel["fieldConfig"]["defaults"]["thresholds"]["steps"][-1]["value"] = 0.85
    assert new_problems(boards=boards) == [
        "CPU_NEAR_LIMIT is 0.9, but saturation: CPU ÷ limit is coloured at [0.7, 0.85]"
    ]


def test_a_reference_to_no_rule_or_several_is_caught() -> None:
    """A table entry naming a rule that does not exist, or a name several rules share
    without the label that tells them apart, fails."""
    table = {
        "GONE": Threshold(1, "x", "Gone.", ("SightlineGone",)),
        "VAGUE": Threshold(0.9, "ratio", "Vague.", ("SightlineMemoryNearLimit",)),
    }
    found = problems(table, load_rules(), {})
    assert found[:2] == [
        "GONE: SightlineGone names 0 rules, not one",
        "VAGUE: SightlineMemoryNearLimit names 2 rules, not one",
    ]


def test_readers_find_thresholds_not_durations_names_or_states() -> None:
    """The readers take compared numbers on either side, skip durations, names and
    equality, and read a description's units."""
    expr = "rate(x_5m[5m]) > 0.8 and 0.3 < b:p95_5m and up == 1 and c >= bool 2 and d > 0"
    assert compared(expr) == [0.8, 0.3, 2.0, 0.0]
    assert literals('histogram_quantile(0.95, x{le="0.5", code=~"5.."}[1h] offset 10m) / 300') == [
        0.95,
        0.5,
        300.0,
    ]
    assert quoted("5xx at 5% (threshold 10m), 100ms, 1s, 14.4x, for 15 minutes") == [
        0.05,
        600.0,
        0.1,
        1.0,
        14.4,
    ]


def test_slow_requests_are_a_bucket_boundary_and_the_traces_the_collector_keeps() -> None:
    """The latency objective's threshold is a bucket boundary of the request histogram (the
    rule counts the le bucket), and the collector keeps every trace that slow, which the
    overview's slow-traces panel asks Tempo for."""
    assert SLOW_REQUEST.value in metrics.HTTP_DURATION_BUCKETS
    collector = yaml.safe_load((ROOT / "collector" / "config.yml").read_text())
    policies = collector["processors"]["tail_sampling"]["policies"]
    (slow,) = (policy for policy in policies if policy["name"] == "slow")
    assert slow["latency"]["threshold_ms"] == SLOW_REQUEST.value * 1000
    (panel,) = panels_titled(load_boards()["overview"], "Slow or failed traces")
    (target,) = panel["targets"]
    assert f"duration>{SLOW_REQUEST.value * 1000:g}ms" in target["query"]
