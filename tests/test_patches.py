"""The integrations' one patching mechanism: a table of patches that ``install`` applies
once and ``uninstall`` puts back, and the oldest library version each one supports."""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sightline
from prometheus_client import CollectorRegistry
from sightline import ConfigError, _state, integrations
from sightline._settings import INTEGRATION_NAMES
from sightline.integrations import _base
from sightline.integrations._base import DidNotEnable, Integration, Patch

#: What the throwaway integration's install is given: it uses no agent.
NO_AGENT: Any = None


class Target:
    def greet(self) -> str:
        return "hello"


class Child(Target):
    """Inherits ``greet``: a patch on it is deleted again, not set to the parent's."""


def exclaim(original: Any) -> Any:
    exclaim.calls += 1  # type: ignore[attr-defined]

    def greet(self: Any) -> str:
        return f"{original(self)}!"

    return greet


exclaim.calls = 0  # type: ignore[attr-defined]


class Throwaway(Integration):
    name = "throwaway"
    library = "sightline"
    patches = (
        Patch(Target, "greet", exclaim),
        Patch(lambda: None, "greet", exclaim),  # an optional part the library lacks
    )


@pytest.fixture
def target(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``Target.greet`` as it was, put back after the test whatever happened (and the
    record of patches in place kept apart from the real integrations')."""
    original = Target.__dict__["greet"]
    exclaim.calls = 0  # type: ignore[attr-defined]
    monkeypatch.setattr(_base, "_applied", {})
    yield original
    Target.greet = original  # type: ignore[method-assign]
    if "greet" in vars(Child):
        delattr(Child, "greet")


def test_install_twice_patches_once_and_uninstall_puts_the_original_back(target: Any) -> None:
    """Installing twice, by one instance or two, wraps the method once; uninstall restores
    the very function that was there."""
    first, second = Throwaway(), Throwaway()
    first.install(NO_AGENT)
    first.install(NO_AGENT)
    second.install(NO_AGENT)
    assert Target().greet() == "hello!"
    assert exclaim.calls == 1  # type: ignore[attr-defined]
    second.uninstall()  # it applied nothing: the patch stays
    assert Target().greet() == "hello!"
    first.uninstall()
    assert Target.__dict__["greet"] is target
    assert Target().greet() == "hello"


def test_uninstall_leaves_a_later_patch_in_place(target: Any) -> None:
    """A patch someone made on top of ours survives uninstall, and still reaches the
    original through our wrapper."""
    integration = Throwaway()
    integration.install(NO_AGENT)
    ours = Target.greet

    def theirs(self: Any) -> str:
        return f"<{ours(self)}>"

    Target.greet = theirs  # type: ignore[method-assign]
    integration.uninstall()
    assert Target.__dict__["greet"] is theirs
    assert Target().greet() == "<hello!>"


def test_an_owner_found_at_install_time_may_be_absent(target: Any) -> None:
    """A row whose owner function returns None is skipped; once the owner exists, installing
    again applies that row too."""
    found: list[type] = []

    class Later(Integration):
        name = "later"
        library = "sightline"
        patches = (Patch(lambda: found[0] if found else None, "greet", exclaim),)

    integration = Later()
    integration.install(NO_AGENT)
    assert Target.__dict__["greet"] is target
    assert exclaim.calls == 0  # type: ignore[attr-defined]
    found.append(Target)
    integration.install(NO_AGENT)
    assert Target().greet() == "hello!"
    integration.uninstall()
    assert Target.__dict__["greet"] is target


def test_an_inherited_method_is_patched_on_the_owner_and_removed_again(target: Any) -> None:
    """Patching a method the owner inherits sets it on the owner; uninstall deletes it, so
    the owner inherits the parent's again."""

    class OnChild(Integration):
        name = "child"
        library = "sightline"
        patches = (Patch(Child, "greet", exclaim),)

    integration = OnChild()
    integration.install(NO_AGENT)
    assert Child().greet() == "hello!"
    assert Target().greet() == "hello"
    integration.uninstall()
    assert "greet" not in vars(Child)
    assert Child.greet is target


#: Imported before the integration is installed, so that its rows for them are covered.
ALSO_IMPORTED = {"starlette": "fastapi"}


def available(name: str) -> type[Integration]:
    """The integration class, if its library is installed (and supported)."""
    if name in ALSO_IMPORTED:
        pytest.importorskip(ALSO_IMPORTED[name])
    try:
        return integrations.load(name)
    except DidNotEnable as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("name", INTEGRATION_NAMES)
def test_install_then_uninstall_leaves_the_library_as_it_was(
    name: str, registry: CollectorRegistry
) -> None:
    """After install and uninstall, every attribute an integration patches is the very
    object it was before install (and install did replace it)."""
    cls = available(name)
    sightline.init(
        service="t", registry=registry, metrics_addr="off", traces=False, logs=False,
        disabled_integrations=",".join(INTEGRATION_NAMES),
    )  # fmt: skip
    assert _state.current is not None
    assert _state.current.integrations == []
    owners = [(patch.resolve(), patch.attribute) for patch in cls.patches]
    before = {(o, attribute): vars(o).get(attribute) for o, attribute in owners if o is not None}
    integration = cls()
    integration.install(_state.current)
    for (owner, attribute), was in before.items():
        assert vars(owner).get(attribute) is not was, f"{owner.__name__}.{attribute}"
    integration.uninstall()
    for (owner, attribute), was in before.items():
        assert vars(owner).get(attribute) is was, f"{owner.__name__}.{attribute}"


def test_every_integration_names_its_library_and_oldest_version() -> None:
    """Each integration names the distribution it checks and the oldest release it
    supports, and that distribution is the one installed with its library."""
    for name in INTEGRATION_NAMES:
        module = f"sightline.integrations.{name}"
        try:
            cls = importlib.import_module(module).INTEGRATION
        except DidNotEnable:
            continue
        assert cls.minimum_version is not None, name
        assert _base.release(cls.minimum_version), name
        assert _base.installed_version(cls.library) is not None, f"{name}: {cls.library}"


def test_a_version_read_from_the_module_is_the_packages_version() -> None:
    """The version read from a loaded library's own ``__version__`` is the one its
    package metadata gives, for every integration's library that keeps one."""
    import importlib.metadata

    read = 0
    for name in INTEGRATION_NAMES:
        try:
            cls = importlib.import_module(f"sightline.integrations.{name}").INTEGRATION
        except DidNotEnable:
            continue
        module = sys.modules.get(cls.library.lower())
        if module is None or not isinstance(vars(module).get("__version__"), str):
            continue
        read += 1
        assert _base.installed_version(cls.library) == importlib.metadata.version(cls.library)
    assert read >= 5  # Django, Celery, Starlette, SQLAlchemy, redis, httpx and more keep one


@pytest.mark.parametrize(
    ("installed", "minimum", "supported"),
    [
        ("2.2.0", "2.2", True),
        ("2.2.0rc1", "2.2", True),
        ("2.10.1", "2.9", True),
        ("21.2.0", "21", True),
        ("2.1.3", "2.2", False),
        ("0.9", "0.27", False),
        ("4.1.0+local", "4.2", False),
    ],
)
def test_versions_compare_by_their_numeric_release(
    installed: str, minimum: str, supported: bool
) -> None:
    """Releases compare number by number (2.10 is after 2.9), ignoring trailing zeros and
    pre-release or local suffixes."""
    assert (_base.release(installed) >= _base.release(minimum)) is supported


def older_flask(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make the installed Flask look like 2.1.3, with the version checks not yet made."""
    flask = pytest.importorskip("flask")
    real = _base.installed_version
    monkeypatch.setattr(
        _base, "installed_version", lambda dist: "2.1.3" if dist == "Flask" else real(dist)
    )
    monkeypatch.setattr(_base, "_verdicts", {})
    return flask


TOO_OLD = (
    "sightline: the flask integration is not installed: Flask 2.1.3 is older than 2.2, "
    "the oldest version it supports"
)


def test_an_older_library_is_skipped_with_one_warning(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With an older Flask than the integration supports, init() leaves Flask unpatched and
    one WARNING names the integration, both versions and what happens; a second init()
    does not check or warn again."""
    flask = older_flask(monkeypatch)
    original = flask.Flask.__call__
    with caplog.at_level(logging.WARNING, logger="sightline"):
        for _ in range(2):
            sightline.init(
                service="t", registry=CollectorRegistry(), metrics_addr="off", traces=False,
                logs=False,
            )  # fmt: skip
            assert _state.current is not None
            assert "flask" not in [i.name for i in _state.current.integrations]
            assert flask.Flask.__call__ is original
            sightline.shutdown()
    warnings = [r for r in caplog.records if "flask integration" in r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in warnings] == [(logging.WARNING, TOO_OLD)]


def test_an_older_library_imported_after_init_is_skipped_with_one_warning() -> None:
    """An integration waiting for its library's import, when that library turns out older
    than it supports, leaves it unpatched and warns once, on that import."""
    pytest.importorskip("flask")
    code = """
        import logging, sys
        import sightline
        from sightline.integrations import _base
        real = _base.installed_version
        _base.installed_version = lambda dist: "2.1.3" if dist == "Flask" else real(dist)
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        sightline.init(service="t", metrics_addr="off", traces=False, logs=False)
        print("flask loaded at init:", "flask" in sys.modules)
        import flask
        print("patched by:", flask.Flask.__call__.__module__)
        sightline.shutdown()
        sightline.init(service="t", metrics_addr="off", traces=False, logs=False)
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["flask loaded at init: False", "patched by: flask.app"]
    assert [line for line in result.stderr.splitlines() if "flask" in line] == [
        "WARNING " + TOO_OLD
    ]


def test_a_requested_older_library_fails_init_loudly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Naming an integration whose library is older than it supports makes init() raise a
    ConfigError saying so, after the same one warning."""
    flask = older_flask(monkeypatch)
    original = flask.Flask.__call__
    with caplog.at_level(logging.WARNING, logger="sightline"), pytest.raises(ConfigError) as raised:
        sightline.init(
            service="t", registry=CollectorRegistry(), metrics_addr="off", integrations="flask"
        )
    assert str(raised.value) == "invalid SIGHTLINE_INTEGRATIONS: " + TOO_OLD.removeprefix(
        "sightline: "
    )
    assert flask.Flask.__call__ is original
    assert [r.getMessage() for r in caplog.records if "flask integration" in r.getMessage()] == [
        TOO_OLD
    ]


def test_the_oldest_versions_are_documented() -> None:
    """docs/frameworks.md lists each integration's library and oldest version as the code
    declares them."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "frameworks.md").read_text()
    rows = {}
    for line in page.split("## Writing an integration", 1)[1].splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3:
            rows[cells[0].split()[0]] = (cells[1], cells[2])
    for name in INTEGRATION_NAMES:
        try:
            cls = importlib.import_module(f"sightline.integrations.{name}").INTEGRATION
        except DidNotEnable:
            continue
        assert rows.get(name) == (cls.library, cls.minimum_version), name
