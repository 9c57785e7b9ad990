"""Schemas published in Go modules, and Kubernetes CRD schemas made checkable by jsonschema.

A file of a Go module at a pinned version comes from the module proxy through
``go mod download`` (Go verifies it against the checksum database and keeps it in its
module cache, so only the first run downloads). A CustomResourceDefinition's
``openAPIV3Schema`` is a *structural* schema the API server applies with rules plain JSON
Schema does not have; :func:`crd_validator` writes those rules out as JSON Schema.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import jsonschema
import pytest
import yaml
from jsonschema.protocols import Validator


@dataclass(frozen=True)
class GoModule:
    path: str
    version: str
    sum: str  # the go.sum hash ("h1:..."): a proxy serving other content fails the test

    def file(self, name: str) -> Path:
        """The file ``name`` inside the module; a failure under CI, else a skip when Go or
        the module proxy is unavailable."""
        go = shutil.which("go")
        if go is None:
            _unavailable("Go is not installed", "install Go")
        result = subprocess.run(
            [go, "mod", "download", "-json", f"{self.path}@{self.version}"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            cwd=Path(__file__).parent,  # not inside any Go module
        )
        try:
            info = json.loads(result.stdout)
        except ValueError:
            info = {}
        if result.returncode != 0 or "Dir" not in info:
            reason = info.get("Error") or result.stderr.strip() or f"exit code {result.returncode}"
            _unavailable(f"go mod download {self.path}@{self.version}: {reason}", "check GOPROXY")
        assert info["Sum"] == self.sum, f"{self.path}@{self.version} is not the pinned content"
        found = Path(info["Dir"]) / name
        assert found.is_file(), f"{self.path}@{self.version} has no {name}"
        return found


def _unavailable(missing: str, fix: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{missing} (.ci/run needs Go and the module proxy)")
    pytest.skip(f"{missing}: {fix}")


#: The KEDA release whose ScaledObject CRD the manifest must satisfy. It and the Kubernetes
#: release below need Go 1.25, as the Prometheus that compose pins does to build (their
#: next releases need 1.26, which a machine building that Prometheus may not have).
KEDA = GoModule(
    "github.com/kedacore/keda/v2", "v2.19.0", "h1:IP3iMTwr9HkaAwPtLnhngPv74LghMf7ubLrsGLQo52M="
)
KEDA_CRD = "config/crd/bases/keda.sh_scaledobjects.yaml"
#: The Kubernetes release whose published OpenAPI v3 schema the HPA must satisfy.
KUBERNETES = GoModule(
    "k8s.io/kubernetes", "v1.35.4", "h1:o/8dBC/pHVpYoGV4OAIytAlNPZbdYVTXJHoYvXC4qzM="
)
AUTOSCALING_V2 = "api/openapi-spec/v3/apis__autoscaling__v2_openapi.json"
#: The Prometheus Operator release whose CRDs (PrometheusRule, PodMonitor, ServiceMonitor)
#: the manifests must satisfy.
PROMETHEUS_OPERATOR = GoModule(
    "github.com/prometheus-operator/prometheus-operator",
    "v0.85.0",
    "h1:M5xLCLEoaW2IJfnuCwFzzpL+jSVQu3KGT84Pye+fW8s=",
)
PROMETHEUS_RULE_CRD = "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml"
POD_MONITOR_CRD = "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml"
SERVICE_MONITOR_CRD = "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"
#: Kubernetes' published OpenAPI v3 of the core group (Service, ConfigMap) and of apps.
CORE_V1 = "api/openapi-spec/v3/api__v1_openapi.json"
APPS_V1 = "api/openapi-spec/v3/apis__apps__v1_openapi.json"


#: ObjectMeta as the API server checks the fields a manifest sets (apimachinery's
#: validation: a name is a DNS subdomain, a namespace a DNS label, label keys qualified
#: names, label values up to 63 characters). A CRD's schema leaves metadata to the server.
#: Fields beyond these are refused here: stricter than the server, for manifests we write.
_DNS_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_NAME = "([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]"
OBJECT_META: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {
            "type": "string",
            "maxLength": 253,
            "pattern": f"^{_DNS_LABEL}(\\.{_DNS_LABEL})*\\Z",
        },
        "namespace": {"type": "string", "maxLength": 63, "pattern": f"^{_DNS_LABEL}\\Z"},
        "labels": {
            "type": "object",
            "patternProperties": {
                f"^({_DNS_LABEL}(\\.{_DNS_LABEL})*/)?{_NAME}\\Z": {
                    "type": "string",
                    "pattern": f"^({_NAME})?\\Z",
                }
            },
            "additionalProperties": False,
        },
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}


OBJECT_META_NAME = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
#: A pod template's metadata: as :data:`OBJECT_META`, without a name.
TEMPLATE_META: dict[str, Any] = {k: v for k, v in OBJECT_META.items() if k != "required"}
#: Union members' Go names -> the discriminator value that selects them.
UNION_VALUES = {"LocalhostProfile": "Localhost"}


def _python_pattern(pattern: str) -> str:
    """A Go (RE2) regular expression as Python reads it. RE2 takes a flag group anywhere
    and applies it to the rest (the CRD's ``^(?i)(abort|warn)?$``); Python only at the
    start, so the rest becomes a scoped group, which means the same. RE2's ``$`` is the
    end of the text; Python's also matches before a final newline, so it becomes ``\\Z``
    (no CRD here has a ``$`` inside a character class)."""
    pattern = re.sub(r"(?<!\\)\$", r"\\Z", pattern)
    head, flag, tail = pattern.partition("(?i)")
    return f"{head}(?i:{tail})" if flag and head else pattern


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD schema node as JSON Schema with the API server's rules written out:

    - an object keeps only the fields its ``properties`` name (the server prunes or, with
      strict field validation, refuses the others), unless it has
      ``additionalProperties`` or ``x-kubernetes-preserve-unknown-fields``;
    - ``x-kubernetes-int-or-string`` takes an integer or a string;
    - ``x-kubernetes-list-type: map`` lists have unique ``x-kubernetes-list-map-keys``,
      ``set`` lists unique items (the ``listMapKeys`` keyword of :func:`crd_validator`).

    An extension this does not know (CEL ``x-kubernetes-validations``, embedded
    resources) raises: a schema checked only in part must not pass as checked."""
    node = dict(schema)
    for key in [k for k in node if k.startswith("x-kubernetes-")]:
        value = node.pop(key)
        if key == "x-kubernetes-int-or-string" and value:
            node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
        elif key == "x-kubernetes-list-type":
            if value == "map":
                node["listMapKeys"] = schema["x-kubernetes-list-map-keys"]
            elif value == "set":
                node["uniqueItems"] = True
        elif key == "x-kubernetes-preserve-unknown-fields" and value:
            node["additionalProperties"] = node.get("additionalProperties", True)
        elif key not in ("x-kubernetes-list-map-keys", "x-kubernetes-map-type"):
            # (A map type says how server-side apply merges a map: not what is valid.)
            raise NotImplementedError(f"CRD schema extension {key} is not checked here")
    if "pattern" in node:
        node["pattern"] = _python_pattern(node["pattern"])
    if node.get("type") == "object" and "additionalProperties" not in node:
        node["additionalProperties"] = False
    for key in ("properties", "patternProperties"):
        if key in node:
            node[key] = {name: structural(sub) for name, sub in node[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict):
            node[key] = structural(node[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            node[key] = [structural(sub) for sub in node[key]]
    return node


def _item_defaults(items: Any) -> dict[str, Any]:
    """The defaults the API server fills in for a list item's fields (``protocol: TCP``)."""
    found: dict[str, Any] = {}
    if isinstance(items, dict):
        for name, field in items.get("properties", {}).items():
            if isinstance(field, dict) and "default" in field:
                found[name] = field["default"]
        for sub in items.get("allOf", []):
            found.update(_item_defaults(sub))
    return found


def _list_map_keys(
    validator: Validator, keys: list[str], instance: Any, schema: dict[str, Any]
) -> Any:
    if not validator.is_type(instance, "array"):
        return
    defaults = _item_defaults(schema.get("items"))
    seen = set()
    for item in instance:
        if not isinstance(item, dict):
            continue
        key = tuple(json.dumps(item.get(k, defaults.get(k)), sort_keys=True) for k in keys)
        if key in seen:
            yield jsonschema.ValidationError(
                f"{dict(zip(keys, key, strict=True))} is in the list twice"
            )
        seen.add(key)


def crd_validator(crd_path: Path, version: str = "v1") -> Validator:
    """A validator of objects of the CRD in ``crd_path`` at API ``version``."""
    crd = yaml.safe_load(crd_path.read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = structural(served["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = OBJECT_META
    group = crd["spec"]["group"]  # "" for the core group: apiVersion "v1"
    schema["properties"]["apiVersion"]["enum"] = [f"{group}/{version}" if group else version]
    schema["properties"]["kind"]["enum"] = [crd["spec"]["names"]["kind"]]
    schema["required"] = sorted({*schema.get("required", ()), "apiVersion", "kind", "metadata"})
    # OpenAPI v3.0 schemas, which CRDs use, are JSON Schema draft 4 with extensions.
    cls = jsonschema.validators.extend(jsonschema.Draft4Validator, {"listMapKeys": _list_map_keys})
    cls.check_schema(schema)
    validator: Validator = cls(schema)
    return validator


#: The CEL rule of newer KEDA CRDs (2.21's), as written there.
KEDA_CEL = {
    "message": "minReplicaCount must be less than or equal to maxReplicaCount",
    "rule": "!has(self.minReplicaCount) || self.minReplicaCount <= "
    "(has(self.maxReplicaCount) ? self.maxReplicaCount : 100)",
}


def keda_validator(tmp_path: Path) -> Any:
    """KEDA's ScaledObject schema; the CEL rule newer CRDs have is :func:`keda_cel`."""
    crd = yaml.safe_load(KEDA.file(KEDA_CRD).read_text())
    (version,) = crd["spec"]["versions"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    # Any other rule (a newer CRD) fails here until it is checked too.
    for rule in spec.pop("x-kubernetes-validations", []):
        assert rule == KEDA_CEL, f"a CEL rule not checked here: {rule}"
    path = tmp_path / "scaledobjects.yaml"
    path.write_text(yaml.safe_dump(crd))
    return crd_validator(path, "v1alpha1")


def keda_cel(spec: dict[str, Any]) -> bool:
    """:data:`KEDA_CEL` in Python: minReplicaCount <= maxReplicaCount (default 100)."""
    return "minReplicaCount" not in spec or spec["minReplicaCount"] <= spec.get(
        "maxReplicaCount", 100
    )


def kubernetes_validator(tmp_path: Path, spec_file: str, name: str) -> Any:
    """The object ``name`` (``io.k8s.api.apps.v1.Deployment``) from Kubernetes' published
    OpenAPI v3 file ``spec_file``, with the references inlined and the API server's
    pruning of unknown fields written out (by :func:`crd_validator`, given the schema as
    if it were a CRD's)."""
    document = json.loads(KUBERNETES.file(spec_file).read_text())
    components = document["components"]["schemas"]

    def inline(node: Any, seen: tuple[str, ...] = ()) -> Any:
        if isinstance(node, list):
            return [inline(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            name = node["$ref"].removeprefix("#/components/schemas/")
            assert name not in seen, f"recursive schema {name}"
            if name == OBJECT_META_NAME:
                return TEMPLATE_META  # a pod template's: labels checked as the top's are
            return inline(components[name], (*seen, name))
        unions = node.get("x-kubernetes-unions")
        if unions is not None:
            # A discriminated union (AppArmor's and seccomp's profiles): each member
            # field only with the discriminator naming it.
            # The discriminator's value names the member by its Go field; the value that
            # selects it is the API's own, known here for the unions Kubernetes has.
            rules = [
                {
                    "anyOf": [
                        {"properties": {union["discriminator"]: {"enum": [UNION_VALUES[value]]}}},
                        {"not": {"required": [field]}},
                    ]
                }
                for union in unions
                for field, value in union["fields-to-discriminateBy"].items()
            ]
            node = {k: v for k, v in node.items() if k != "x-kubernetes-unions"}
            return {"allOf": [inline(node, seen), *rules]}
        # How clients merge and patch, not what is valid.
        docs = {"x-kubernetes-group-version-kind", "x-kubernetes-map-type"}
        docs |= {"x-kubernetes-patch-strategy", "x-kubernetes-patch-merge-key"}
        return {k: inline(v, seen) for k, v in node.items() if k not in docs}

    schema = inline(components[name])
    ((group, version, kind),) = {
        (gvk["group"], gvk["version"], gvk["kind"])
        for gvk in components[name]["x-kubernetes-group-version-kind"]
    }
    crd = {
        "spec": {
            "group": group,
            "names": {"kind": kind},
            "versions": [{"name": version, "schema": {"openAPIV3Schema": schema}}],
        }
    }
    path = tmp_path / f"{kind.lower()}.json"
    path.write_text(json.dumps(crd))
    return crd_validator(path, version)
