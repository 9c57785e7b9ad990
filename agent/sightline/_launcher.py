"""``sightline run -- COMMAND``: instrument a program without touching its code.

The command runs with this package's ``_bootstrap`` directory first on
``PYTHONPATH``, so every Python process it starts (and their children) imports
``sitecustomize`` from there at start-up, which calls :func:`bootstrap`. Settings come
from the environment (``SIGHTLINE_*``, ``OTEL_*``), checked before the command runs.
A ``sitecustomize`` the environment already had is still run, after this one.

Where ``init()`` runs decides what it can detect, so it waits for the right moment:

- **gunicorn**: in each worker, as it starts (``Worker.init_process``), so every
  worker is known as one of the server's and gets its own exporters; the master
  itself is not instrumented.
- **uvicorn**: where the app is loaded (``Config.load``): in each worker with
  ``--workers``, in the one process otherwise; uvicorn's supervisor is not.
- **hypercorn**: in each worker, as it starts (before it loads the app); hypercorn's
  own process only with ``--workers 0``, when it serves the app itself.
- **anything else** (``python app.py``, ``flask run``, ``manage.py``, ``celery``):
  at start-up. Every Python process the command starts is instrumented the same
  way, except multiprocessing's own helpers (its resource tracker, fork server).

Every app a server loads is measured, whatever its framework: where uvicorn
(``Config.load``) and gunicorn (``Application.wsgi``, any worker class) obtain the app,
it goes through ``integrations._served`` (hypercorn's integration does the same), which
wraps an app no framework integration records in the generic middleware.

Such a program usually leaves SIGTERM and SIGHUP to their default, which ends the
process at once, without ``atexit``: its last spans and log lines would be lost. Where
the program has not set a handler of its own, Sightline sets one that flushes them
(within ``SIGHTLINE_SHUTDOWN_TIMEOUT``) and then ends the process by the same signal,
so it exits with the status the signal gives (143 for SIGTERM in a shell). A program
that sets its own handler later replaces this one; like SIGINT's default handler, it
runs once the main thread is back in Python code.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import ConfigError, _safety, _state, _stop, init
from .integrations import watcher

BOOTSTRAP = Path(__file__).resolve().parent / "_bootstrap"
#: Set by the launcher; its absence keeps a stray ``_bootstrap`` on a path inert.
ACTIVE = "SIGHTLINE_LAUNCHER"


def environment(base: dict[str, str]) -> dict[str, str]:
    """The command's environment: ``_bootstrap`` first on PYTHONPATH, the launcher mark."""
    env = dict(base)
    paths = [str(BOOTSTRAP), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env[ACTIVE] = "1"
    return env


def run(command: Sequence[str], base: dict[str, str]) -> None:
    """Replace this process with ``command``, instrumented. Returns only on failure."""
    os.execvpe(command[0], list(command), environment(base))


def _program() -> str:
    """The program this interpreter runs: a console script's name, ``-m``'s module, ''
    for ``-c`` code, or ``multiprocessing`` / ``multiprocessing-helper`` for the
    processes multiprocessing starts (spawned workers / its resource tracker)."""
    argv = [str(arg) for arg in getattr(sys, "orig_argv", sys.argv)[1:]]
    while argv and argv[0].startswith("-") and argv[0] not in ("-m", "-c"):
        option = argv.pop(0)  # interpreter options: -u, -X dev, -W error ...
        if option in ("-X", "-W") and argv:
            argv.pop(0)
    if not argv:
        return ""
    if argv[0] == "-m" and len(argv) > 1:
        return argv[1].split(".")[0]
    if argv[0] == "-c":
        if "--multiprocessing-fork" in argv:
            return "multiprocessing"
        code = argv[1] if len(argv) > 1 else ""
        return "multiprocessing-helper" if code.startswith("from multiprocessing.") else ""
    return Path(argv[0]).name


def bootstrap() -> None:
    if os.environ.get(ACTIVE) != "1":
        return
    program = _program()
    if program == "multiprocessing-helper":
        return  # a resource tracker or fork server: no app runs there
    # Before the launches below: a launch on the same method restores what it found.
    _after("uvicorn.config", "Config", "load", _uvicorn_loaded)
    _after("gunicorn.app.base", "BaseApplication", "wsgi", _gunicorn_loaded)
    servers = [name for name in ("uvicorn", "hypercorn") if importlib.util.find_spec(name)]
    if program == "gunicorn":
        _before("gunicorn.workers.base", "Worker", "init_process")
    elif program == "uvicorn":
        _before("uvicorn.config", "Config", "load")
    elif program == "hypercorn":
        _before("hypercorn.config", "Config", "create_sockets", when=_serves_in_process)
    elif program == "multiprocessing" and servers:
        # uvicorn's and hypercorn's workers are started with multiprocessing's spawn
        # method: which one this is shows in what the process runs.
        _before("multiprocessing.process", "BaseProcess", "run", when=_not_uvicorn)
        if "uvicorn" in servers:
            _before("uvicorn.config", "Config", "load")
    else:
        _init()
        _flush_on_signals()


def _serves_in_process(config: Any) -> bool:
    """hypercorn with ``--workers 0`` serves the app from its own process."""
    return getattr(config, "workers", 1) == 0


def _not_uvicorn(process: Any) -> bool:
    """A spawned process that is not a uvicorn worker (those start where they load the
    app): a hypercorn worker, or any other, starts before it runs its target."""
    target = getattr(process, "_target", None)
    return not str(getattr(target, "__module__", "")).startswith("uvicorn.")


def _uvicorn_loaded(config: Any, result: Any) -> Any:
    from .integrations import _served

    _served.uvicorn_loaded(config)
    return result


def _gunicorn_loaded(application: Any, app: Any) -> Any:
    from .integrations import _served

    return _served.measured(app)


#: Signals whose default action ends a process without running atexit handlers.
FLUSHED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _flush_on_signals() -> None:
    for signum in FLUSHED_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _flush_then_die)


def _flush_then_die(signum: int, frame: Any) -> None:
    """Flush spans and logs within the shutdown budget, then die by ``signum``."""
    # A second signal while flushing ends the process at once, as it would have.
    signal.signal(signum, signal.SIG_DFL)
    agent = _state.current
    budget = agent.settings.shutdown_timeout if agent is not None else 0.0
    # On its own thread: the main thread, interrupted here, may hold a lock the flush
    # needs; then the budget runs out and the process ends all the same.
    flush = threading.Thread(target=_stop, args=(budget,), name="sightline-signal", daemon=True)
    flush.start()
    flush.join(budget + 0.5)
    os.kill(os.getpid(), signum)


def _init() -> None:
    try:
        init()
    except ConfigError as exc:
        sys.stderr.write(f"sightline: not started: {exc}\n")


def _before(module: str, cls: str, method: str, when: Callable[[Any], bool] | None = None) -> None:
    """Run ``init()`` just before ``module.cls.method`` first runs in this process (if
    ``when(self)`` says so then)."""

    def wrap(owner: Any, original: Callable[..., Any]) -> Callable[..., Any]:
        def launch(self: Any, *args: Any, **kwargs: Any) -> Any:
            setattr(owner, method, original)  # once is enough
            if when is None or when(self):
                _init()
            return original(self, *args, **kwargs)

        return launch

    _patch(module, cls, method, "_sightline_launch", wrap)


def _after(module: str, cls: str, method: str, then: Callable[[Any, Any], Any]) -> None:
    """Make ``module.cls.method`` return ``then(self, result)`` instead of ``result``,
    from its first import on (an error in ``then`` is Sightline's: ``result`` stands)."""

    def wrap(owner: Any, original: Callable[..., Any]) -> Callable[..., Any]:
        def after(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            with _safety.internal_errors(f"launcher.{cls}.{method}"):
                return then(self, result)
            return result

        return after

    _patch(module, cls, method, "_sightline_after", wrap)


def _patch(
    module: str,
    cls: str,
    method: str,
    marker: str,
    wrap: Callable[[Any, Callable[..., Any]], Callable[..., Any]],
) -> None:
    """Replace ``module.cls.method`` by ``wrap(owner, original)`` (marked with ``marker``,
    so never twice) now if the module is imported, else right after its first import."""

    def patch() -> None:
        owner = getattr(sys.modules[module], cls)
        original: Callable[..., Any] = getattr(owner, method)
        if getattr(original, marker, False):
            return
        patched = wrap(owner, original)
        setattr(patched, marker, True)
        setattr(owner, method, patched)

    if module in sys.modules:
        patch()
    else:
        watcher.watch(module, patch)


def chain_sitecustomize(ours: str) -> None:
    """Run the ``sitecustomize`` that would have run without the launcher, if any."""
    here = str(Path(ours).resolve().parent)
    path = [p for p in sys.path if p and str(Path(p).resolve()) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)
