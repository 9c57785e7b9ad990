"""Serving the merged view of a multi-process server: its families written as text directly.

prometheus-client writes a page from :class:`~prometheus_client.core.Metric` objects,
escaping and checking every label of every sample: for the merged page of a 4-worker
server (3,000 samples) that was a third of a scrape's time. The merge already holds each
family's samples keyed by their sorted labels, so :func:`render_text` and
:func:`render_openmetrics` write the page from them, each ``name="value"`` pair escaped
once per page, in the formats and escapings Prometheus asks for: the text format (0.0.4
and 1.0.0) and OpenMetrics 1.0.0, with names escaped as ``underscores`` (the default) or
not at all (``allow-utf-8``, what Prometheus 3 asks for). The bytes are
prometheus-client's own for the same families
(``tests/test_exposition.py`` compares them).

Anything else (another escaping or version, ``name[]`` filters, a name outside the
classic character set) is written by prometheus-client, from the same families.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import gzip
import re
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from . import _fork

if TYPE_CHECKING:
    from prometheus_client.core import Metric
    from prometheus_client.registry import CollectorRegistry

#: One sample: ``(sample name, sorted label pairs) -> [value, exemplar, labels]``, where an
#: exemplar is ``[labels, value, timestamp]`` or None (the merge's own shape).
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], list[Any]]
#: One family: ``(name, type, help, unit, samples)``.
Family = tuple[str, str, str, str, Samples]

#: Names of the classic character set (what every escaping writes as they are).
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
#: Families' types as the text format names them (OpenMetrics keeps their own).
_TEXT_TYPES = {
    "info": "gauge",
    "stateset": "gauge",
    "gaugehistogram": "histogram",
    "unknown": "untyped",
}
#: Samples the text format moves to gauges of their own, after their family's.
_TEXT_APART = ("_created", "_gsum", "_gcount")
_INF, _MINUS_INF = float("inf"), float("-inf")


class Unrenderable(Exception):
    """A name outside the classic character set, which the escapings write differently."""


def metrics(families: Iterable[Family]) -> Iterator[Metric]:
    """The families as prometheus-client metrics (for registries and other formats)."""
    from prometheus_client.core import Metric
    from prometheus_client.samples import Exemplar

    for name, kind, help_text, unit, samples in families:
        metric = Metric(name, help_text, kind, unit)
        for (sample_name, _), (value, exemplar, labels) in samples.items():
            metric.add_sample(
                sample_name,
                labels,
                value,
                exemplar=Exemplar(exemplar[0], exemplar[1], exemplar[2]) if exemplar else None,
            )
        yield metric


def families_of(collected: Iterable[Metric]) -> list[Family]:
    """prometheus-client's metrics in the merge's shape (timestamps are not kept)."""
    found: list[Family] = []
    for metric in collected:
        samples: Samples = {}
        for sample in metric.samples:
            exemplar = sample.exemplar
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = [
                sample.value,
                [exemplar.labels, exemplar.value, exemplar.timestamp] if exemplar else None,
                sample.labels,
            ]
        found.append((metric.name, metric.type, metric.documentation, metric.unit, samples))
    return found


def go_float(d: Any) -> str:
    """``prometheus_client.utils.floatToGoString``, with the common case first."""
    d = float(d)
    if d > 0:
        if d == _INF:
            return "+Inf"
        s = repr(d)
        dot = s.find(".")
        if dot > 6:  # Go switches to exponents sooner than Python
            mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
            return f"{mantissa}e+{dot - 1:02d}"
        return s
    if d == _MINUS_INF:
        return "-Inf"
    if d != d:
        return "NaN"
    return repr(d)


def _value(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _Labels:
    """Label pairs written once per page: ``{a="x",b="y"}`` from sorted pairs."""

    def __init__(self) -> None:
        self.pairs: dict[tuple[str, str], str] = {}
        self.names: set[str] = set()

    def __call__(self, key: tuple[tuple[str, str], ...]) -> str:
        if not key:
            return ""
        pairs = self.pairs
        parts = []
        for pair in key:
            text = pairs.get(pair)
            if text is None:
                name = pair[0]
                if name not in self.names:
                    if not LABEL_NAME.fullmatch(name):
                        raise Unrenderable(name)
                    self.names.add(name)
                text = pairs[pair] = f'{name}="{_value(pair[1])}"'
            parts.append(text)
        return "{" + ",".join(parts) + "}"


def _check_name(name: str, checked: set[str]) -> None:
    if name not in checked:
        if not METRIC_NAME.fullmatch(name):
            raise Unrenderable(name)
        checked.add(name)


def render_text(families: Iterable[Family]) -> bytes:
    """The text format (0.0.4), as ``prometheus_client.generate_latest`` writes it."""
    out: list[str] = []
    append = out.append
    labels = _Labels()
    checked: set[str] = set()
    for name, kind, help_text, _unit, samples in families:
        _check_name(name, checked)
        shown = name + "_total" if kind == "counter" else name + "_info" if kind == "info" else name
        help_line = help_text.replace("\\", r"\\").replace("\n", r"\n")
        append(f"# HELP {shown} {help_line}\n# TYPE {shown} {_TEXT_TYPES.get(kind, kind)}\n")
        apart: dict[str, list[str]] = {}
        for (sample_name, key), held in samples.items():
            _check_name(sample_name, checked)
            line = f"{sample_name}{labels(key)} {go_float(held[0])}\n"
            suffix = sample_name[len(name) :]
            if suffix in _TEXT_APART and sample_name.startswith(name):
                apart.setdefault(suffix, []).append(line)
            else:
                append(line)
        for suffix, lines in sorted(apart.items()):
            append(f"# HELP {name}{suffix} {help_line}\n# TYPE {name}{suffix} gauge\n")
            out.extend(lines)
    return "".join(out).encode()


def _exemplar_allowed(kind: str, family: str, sample_name: str) -> bool:
    if kind == "counter":
        return sample_name.endswith("_total")
    if kind == "gaugehistogram":
        return sample_name.endswith("_bucket")
    if kind == "histogram":
        return sample_name.endswith("_bucket") or sample_name == family
    return False


def _exemplar(exemplar: list[Any]) -> str:
    labels = ",".join(f'{k}="{_value(v)}"' for k, v in sorted(exemplar[0].items()))
    written = f" # {{{labels}}} {go_float(exemplar[1])}"
    return written if exemplar[2] is None else f"{written} {exemplar[2]}"


def render_openmetrics(families: Iterable[Family], utf8: bool = False) -> bytes:
    """OpenMetrics 1.0.0, as prometheus-client writes it with the escaping ``underscores``
    (or ``allow-utf-8`` if ``utf8``)."""
    out: list[str] = []
    append = out.append
    labels = _Labels()
    checked: set[str] = set()
    # With "underscores", prometheus-client writes a sample's name with the label names'
    # characters: a colon becomes an underscore (family names keep theirs).
    written: dict[str, str] = {}
    for name, kind, help_text, unit, samples in families:
        _check_name(name, checked)
        append(f"# HELP {name} {_value(help_text)}\n# TYPE {name} {kind}\n")
        if unit:
            append(f"# UNIT {name} {unit}\n")
        for (sample_name, key), held in samples.items():
            shown = written.get(sample_name)
            if shown is None:
                _check_name(sample_name, checked)
                shown = written[sample_name] = (
                    sample_name if utf8 else sample_name.replace(":", "_")
                )
            exemplar = held[1]
            if exemplar:
                if not _exemplar_allowed(kind, name, sample_name):
                    raise ValueError(
                        f"Metric {name} has exemplars, but is not a histogram bucket or counter"
                    )
                append(f"{shown}{labels(key)} {go_float(held[0])}{_exemplar(exemplar)}\n")
            else:
                append(f"{shown}{labels(key)} {go_float(held[0])}\n")
    append("# EOF\n")
    return "".join(out).encode()


def _renderer(encoder: Callable[..., bytes]) -> Callable[[list[Family]], bytes] | None:
    """The renderer writing what ``encoder`` (of prometheus-client's ``choose_encoder``)
    would, or None for a format or escaping it does not write."""
    exposition = _fork.load("prometheus_client.exposition")
    openmetrics = _fork.load("prometheus_client.openmetrics.exposition")
    if encoder is exposition.generate_latest:
        return render_text
    if not isinstance(encoder, functools.partial) or encoder.args:
        return None
    keywords = encoder.keywords
    escaping = keywords.get("escaping")
    if escaping not in (openmetrics.UNDERSCORES, openmetrics.ALLOWUTF8):
        return None
    if encoder.func is exposition.generate_latest and set(keywords) == {"escaping"}:
        return render_text  # the same bytes for names of the classic character set
    if encoder.func is openmetrics.generate_latest and keywords.get("version") == "1.0.0":
        if escaping == openmetrics.ALLOWUTF8:
            return functools.partial(render_openmetrics, utf8=True)
        return render_openmetrics
    return None


@contextlib.contextmanager
def _collections_deferred() -> Iterator[None]:
    """Holds off the cyclic garbage collector while a page is merged and written.

    A merge makes tens of thousands of short-lived lists, dicts and tuples, which trip
    the collector again and again (a full collection, over every object of the app, now
    and then): a third of a 4-worker scrape's time. They are freed by their reference
    counts as the scrape ends; the collector runs at its next allocations as usual. A
    process that disabled it (``gc.disable()`` before serving) keeps it disabled.
    """
    enabled = gc.isenabled()
    if enabled:
        gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Fixed:
    """A collector of given families, for prometheus-client's encoders."""

    def __init__(self, families: list[Family]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return metrics(self.families)


def bake(
    source: Callable[[], list[Family]],
    registry: Callable[[], CollectorRegistry],
    accept: str | None,
    accept_encoding: str | None,
    query: str,
) -> tuple[str, list[tuple[str, str]], bytes]:
    """Status, headers and body of a scrape of the families ``source`` gives (of the
    registry ``registry()`` returns, for what this module does not write itself)."""
    exposition = _fork.load("prometheus_client.exposition")
    encoder, content_type = exposition.choose_encoder(accept or "")
    params = parse_qs(query)
    if "name[]" in params:
        output = encoder(registry().restricted_registry(params["name[]"]))
    else:
        renderer = _renderer(encoder)
        output = b""
        with _collections_deferred():
            families = source()
            if renderer is not None:
                try:
                    output = renderer(families)
                except Unrenderable:
                    renderer = None
            if renderer is None:
                output = encoder(_Fixed(families))
    headers = [("Content-Type", content_type)]
    if exposition.gzip_accepted(accept_encoding or ""):
        # zlib's default level: a tenth the time of level 9 on a page, for a few % more bytes
        output = gzip.compress(output, compresslevel=6)
        headers.append(("Content-Encoding", "gzip"))
    return "200 OK", headers, output


def make_wsgi_app(
    source: Callable[[], list[Family]], registry: Callable[[], CollectorRegistry]
) -> Any:
    """prometheus-client's ``make_wsgi_app(registry())``, writing ``source``'s families."""

    def metrics_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        method = environ["REQUEST_METHOD"]
        if method == "OPTIONS":
            status, headers, output = "200 OK", [("Allow", "OPTIONS,GET")], b""
        elif method != "GET":
            status = "405 Method Not Allowed"
            headers = [("Allow", "OPTIONS,GET")]
            output = f"# HTTP {status}: {method}; use OPTIONS or GET\n".encode()
        elif environ.get("PATH_INFO") == "/favicon.ico":
            status, headers, output = "200 OK", [], b""
        else:
            status, headers, output = bake(
                source,
                registry,
                environ.get("HTTP_ACCEPT"),
                environ.get("HTTP_ACCEPT_ENCODING"),
                environ.get("QUERY_STRING", ""),
            )
        start_response(status, headers)
        return [output]

    return metrics_app


def make_asgi_app(
    source: Callable[[], list[Family]], registry: Callable[[], CollectorRegistry]
) -> Any:
    """prometheus-client's ``make_asgi_app(registry())``, writing ``source``'s families."""

    async def metrics_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = scope.get("headers") or []

        def header(wanted: bytes) -> str:
            return ",".join(v.decode("latin-1") for k, v in headers if k.lower() == wanted)

        status, out_headers, output = bake(
            source,
            registry,
            header(b"accept"),
            header(b"accept-encoding"),
            scope.get("query_string", b"").decode("utf-8", "replace"),
        )
        payload = await receive()
        if payload.get("type") == "http.request":
            await send(
                {
                    "type": "http.response.start",
                    "status": int(status.split(" ")[0]),
                    "headers": [(k.encode(), v.encode()) for k, v in out_headers],
                }
            )
            await send({"type": "http.response.body", "body": output})

    return metrics_app
