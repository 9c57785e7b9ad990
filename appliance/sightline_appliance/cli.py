"""The appliance's commands of ``sightline``: the agent's command finds them through the
``sightline.commands`` entry point this distribution declares.

sightline stack up|down|status [--dir DIR] [--port SERVICE:PORT=HOSTPORT ...] [--port-offset N]
                               [--longterm]
sightline demo [--dir DIR] [--duration SECONDS] [--longterm]
sightline doctor [--service NAME] [--prometheus URL] [--rules URL] [--json]
sightline alerts [--prometheus URL] [--alertmanager URL] [--json]
sightline rules export --format prometheus|mimir [--out FILE|DIR] [--name NAME]
                       [--namespace NS] [--label KEY=VALUE ...]
sightline dashboards push [--url URL] [--folder TITLE] [--datasource KIND=UID ...]
                          [--dry-run] [--force]   (credentials: GRAFANA_TOKEN, or
                          GRAFANA_USER and GRAFANA_PASSWORD)
sightline hints [--prometheus URL] [--json]
sightline hints keda|hpa --service NAME [--deployment NAME] [--namespace NS]
                         [--min N] [--max N] [--prometheus URL]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import alerts, grafana, hints, rules
from .demo.run import demo
from .doctor import default_ruler, default_url
from .doctor import main as doctor_main
from .stack import BY_NAME, Stack, StackError, default_dir


def register(commands: Any) -> None:
    """Add the appliance's commands to the ``sightline`` command's subparsers."""
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument(
        "--dir",
        type=Path,
        help="state directory: ports, PIDs, logs, data (default ~/.local/state/sightline/stack)",
    )
    state.add_argument(
        "--port",
        action="append",
        default=[],
        metavar="SERVICE:PORT=HOSTPORT",
        help="listen on HOSTPORT where compose has SERVICE:PORT (e.g. prometheus:9090=19090)",
    )
    state.add_argument(
        "--port-offset",
        type=int,
        default=0,
        metavar="N",
        help="listen on every compose port + N: a second stack beside the first (e.g. 10000)",
    )
    state.add_argument(
        "--without",
        action="append",
        default=[],
        metavar="COMPONENT",
        help="do not start COMPONENT even if it is installed (e.g. grafana)",
    )
    state.add_argument(
        "--longterm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=(
            "remote-write every series to VictoriaMetrics and read dashboards and rules "
            "from it (compose's longterm.yml); kept for the state directory until "
            "--no-longterm (default: as the directory's stack last ran, else off)"
        ),
    )
    stack = commands.add_parser(
        "stack",
        parents=[state],
        help="run the bundled stack without Docker, from binaries on this machine",
        description=(
            "Start, stop or show the stack's components (Prometheus, Alertmanager, Redis, "
            "and Loki, Tempo, Grafana, the Collector when installed) on 127.0.0.1, "
            "configured from the same files as compose."
        ),
    )
    stack.add_argument("action", choices=("up", "down", "status"))
    stack.set_defaults(handler=stack_command)
    demo = commands.add_parser(
        "demo",
        parents=[state],
        help="run the native stack with the demo shop, its worker and load, and watch",
        description=(
            "Start the native stack, the demo shop (gunicorn), its Celery worker and the "
            "load generator, and show the golden signals every few seconds."
        ),
    )
    doctor = commands.add_parser(
        "doctor",
        help="check this app's settings, ports and backends, each with its fix",
        description=(
            "Run from the app's environment (its SIGHTLINE_* and OTEL_* variables): checks "
            "the settings, the metrics port, the OTLP and Loki endpoints (a test write), "
            "whether Prometheus scrapes the service and runs Sightline's rules, the workers' "
            "shared directory, the "
            "clock and the packages. Exit code 0, 1 or 2: ok, warnings, errors."
        ),
    )
    doctor.add_argument("--service", help="the service name (default SIGHTLINE_SERVICE)")
    doctor.add_argument(
        "--prometheus",
        metavar="URL",
        help="the Prometheus that should scrape the app (default: the native stack's)",
    )
    doctor.add_argument(
        "--rules",
        metavar="URL",
        help=(
            "what evaluates Sightline's rules (vmalert, a ruler; default: the Prometheus "
            "named, else the native stack's evaluator)"
        ),
    )
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    doctor.set_defaults(handler=doctor_command)
    alerts = commands.add_parser(
        "alerts",
        help="list the alerts firing and pending, grouped as Alertmanager groups them",
        description=(
            "Firing alerts as Alertmanager groups and routes them (each group's receiver; "
            "silenced or inhibited ones marked), and the alerts pending where the rules run "
            "(Prometheus, or vmalert). Exit code 1 when either did not answer."
        ),
    )
    alerts.add_argument(
        "--prometheus",
        metavar="URL",
        help="Prometheus, or vmalert, evaluating the rules (default: the native stack's; "
        "vmalert under --longterm)",
    )
    alerts.add_argument(
        "--alertmanager", metavar="URL", help="Alertmanager (default: the native stack's)"
    )
    alerts.add_argument("--json", action="store_true", help="print the groups as JSON")
    alerts.set_defaults(handler=alerts_command)
    rules = commands.add_parser(
        "rules",
        help="write the alert and recording rules for a Prometheus Operator or Mimir ruler",
        description=(
            "Write every group of the shipped rule files (alerts/*.rules.yml), unchanged, "
            "as a Kubernetes PrometheusRule (Prometheus Operator, kube-prometheus-stack) or "
            "as a Mimir/Cortex ruler namespace file (mimirtool rules load). "
            "Exit code 0, or 2 with one line saying why."
        ),
    )
    rules.add_argument("action", choices=("export",))
    rules.set_defaults(handler=rules_command)
    rules.add_argument(
        "--format",
        required=True,
        metavar="{prometheus,mimir}",
        help="prometheus: a PrometheusRule manifest; mimir: a ruler namespace file",
    )
    rules.add_argument(
        "--out",
        type=Path,
        metavar="FILE|DIR",
        help="write to FILE, or into DIR as NAME-prometheusrule.yaml or NAME-mimir.yaml "
        "(default: standard output)",
    )
    rules.add_argument(
        "--name",
        default="sightline",
        help="the PrometheusRule's metadata.name, or the Mimir namespace (default sightline)",
    )
    rules.add_argument(
        "--namespace",
        metavar="NS",
        help="the PrometheusRule's Kubernetes namespace (--format prometheus only)",
    )
    rules.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label of the PrometheusRule, repeatable; kube-prometheus-stack loads those "
        "with its release label, e.g. release=kube-prometheus-stack",
    )
    dashboards = commands.add_parser(
        "dashboards",
        help="push the dashboards into a folder of an existing Grafana",
        description=(
            "Push every dashboard into a folder of an existing Grafana (self-hosted or "
            "Grafana Cloud) through its HTTP API, with the Prometheus, Loki and Tempo "
            "data sources mapped to ones it has. A second push changes nothing; a "
            "dashboard edited in Grafana is not overwritten without --force. Exit code "
            "0, 1 (some refused) or 2 (errors). Needs: pip install 'sightline-appliance[grafana]'."
        ),
    )
    dashboards.add_argument("action", choices=("push",))
    dashboards.set_defaults(handler=dashboards_command)
    dashboards.add_argument("--url", help="Grafana's URL (default GRAFANA_URL)")
    dashboards.add_argument(
        "--token",
        help="a service account token (default GRAFANA_TOKEN; prefer the variable)",
    )
    dashboards.add_argument("--user", help="basic auth user (default GRAFANA_USER)")
    dashboards.add_argument(
        "--password", help="basic auth password (default GRAFANA_PASSWORD; prefer the variable)"
    )
    dashboards.add_argument(
        "--folder",
        default="Sightline",
        metavar="TITLE",
        help="the folder, created if missing (default Sightline)",
    )
    dashboards.add_argument(
        "--datasource",
        action="append",
        default=[],
        metavar="KIND=UID",
        help="the data source for prometheus, loki or tempo (default: the only one of that "
        "type, else the default one); repeatable",
    )
    dashboards.add_argument(
        "--dry-run", action="store_true", help="say what would change; write nothing"
    )
    dashboards.add_argument(
        "--force", action="store_true", help="overwrite dashboards edited in Grafana"
    )
    hints = commands.add_parser(
        "hints",
        help="replicas each service runs and needs, and why; KEDA or HPA manifests for them",
        description=(
            "Per service: the replicas answering scrapes, the replicas Sightline's scaling "
            "rules recommend, each reason's requirement and the numbers behind it, read "
            "from Prometheus. `hints keda` and `hints hpa` print a KEDA ScaledObject or an "
            "HPA that scales a Deployment to the same recommendation. Exit code 0, 1 when "
            "no service reports yet, 2 when Prometheus does not answer."
        ),
    )
    hints.add_argument(
        "--prometheus",
        metavar="URL",
        help="the Prometheus (or long-term store) holding Sightline's recording rules' "
        "series (default: the native stack's; its store under --longterm)",
    )
    hints.add_argument("--json", action="store_true", help="print the hints as JSON")
    hints.set_defaults(handler=hints_command)
    manifests = hints.add_subparsers(dest="manifest", metavar="{keda,hpa}")
    for kind, what in (
        ("keda", "print a KEDA ScaledObject with a Prometheus trigger on the recommendation"),
        ("hpa", "print an autoscaling/v2 HPA on the recommendation via prometheus-adapter"),
    ):
        manifest = manifests.add_parser(kind, help=what, description=what[0].upper() + what[1:])
        manifest.add_argument("--service", required=True, help="the service: its Prometheus job")
        manifest.add_argument(
            "--deployment", metavar="NAME", help="the Deployment to scale (default: the service)"
        )
        manifest.add_argument("--namespace", metavar="NS", help="the Kubernetes namespace")
        manifest.add_argument(
            "--min", type=int, default=1, dest="min_replicas", metavar="N", help="default 1"
        )
        manifest.add_argument(
            "--max", type=int, default=10, dest="max_replicas", metavar="N", help="default 10"
        )
        manifest.add_argument(
            "--prometheus",
            dest="cluster_prometheus",
            metavar="URL",
            help="Prometheus as seen from inside the cluster "
            "(default http://prometheus.monitoring.svc:9090)",
        )
    demo.add_argument("--duration", type=float, help="stop after this many seconds")
    demo.add_argument("--refresh", type=float, default=5.0, help="seconds between redraws")
    demo.set_defaults(handler=stack_command)


def doctor_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    overrides = {"service": args.service} if args.service else {}
    return doctor_main(os.environ, overrides, args.prometheus, args.json, rules=args.rules)


def hints_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.manifest:
        return hints.print_manifest(
            args.manifest,
            args.service,
            namespace=args.namespace,
            deployment=args.deployment,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            prometheus=args.cluster_prometheus,
        )
    return hints.main(args.prometheus, args.json)


def alerts_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    # The default is named by the stack; a URL given may be Prometheus, vmalert or another.
    prometheus, ruler = (args.prometheus, "the ruler") if args.prometheus else default_ruler()
    alertmanager = args.alertmanager or default_url("alertmanager", 9093)
    found = alerts.read(prometheus.rstrip("/"), alertmanager.rstrip("/"), ruler=ruler)
    if args.json:
        print(json.dumps(found.as_json(), indent=2))
    else:
        print("\n".join(alerts.render(found)))
    return 1 if found.errors else 0


def dashboards_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    return grafana.command(
        args.url,
        args.token,
        args.user,
        args.password,
        args.folder,
        args.datasource,
        args.dry_run,
        args.force,
        os.environ,
        out=print,
        err=lambda line: sys.stderr.write(line + "\n"),
    )


def rules_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        labels = rules.parse_labels(args.label)
    except rules.RulesError as exc:
        sys.stderr.write(f"sightline: {exc}\n")
        return 2
    return rules.export(args.format, args.out, args.name, args.namespace, labels)


def _ports(parser: argparse.ArgumentParser, specs: Sequence[str]) -> dict[str, int]:
    ports = {}
    for spec in specs:
        key, _, value = spec.partition("=")
        service, _, port = key.partition(":")
        if not (service and port.isdigit() and value.isdigit() and 0 < int(value) < 65536):
            parser.error(f"--port: expected SERVICE:PORT=HOSTPORT, got {spec!r}")
        ports[f"{service}:{int(port)}"] = int(value)
    return ports


def stack_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    directory = args.dir or default_dir()
    ports = _ports(parser, args.port)
    for name in args.without:
        if name not in BY_NAME:
            parser.error(f"--without: no component {name!r} (one of {', '.join(BY_NAME)})")
    if not 0 <= args.port_offset < 65535:
        parser.error(f"--port-offset: expected 0 to 65534, got {args.port_offset}")
    if args.command == "demo":
        if args.duration is not None and args.duration <= 0:
            parser.error("--duration must be positive")
        if args.refresh <= 0:
            parser.error("--refresh must be positive")
        return demo(
            directory,
            args.duration,
            ports,
            args.refresh,
            args.without,
            args.port_offset,
            longterm=args.longterm,
        )
    try:
        # Stopping needs no mode: `down --no-longterm` stops a long-term stack.
        longterm = None if args.action == "down" else args.longterm
        native = Stack(directory, ports, args.without, args.port_offset, longterm=longterm)
        if args.action == "up":
            _started, failures = native.up()
            return 1 if failures else 0
        if args.action == "down":
            native.down()
        else:
            native.status()
        return 0
    except StackError as exc:
        sys.stderr.write(f"sightline: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"sightline: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("sightline: interrupted; `sightline stack status` shows what runs\n")
        return 130
