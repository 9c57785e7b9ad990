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
- **anything else** (``python app.py``, ``flask run``, ``manage.py``, ``celery``):
  at start-up. Every Python process the command starts is instrumented the same
  way, except multiprocessing's own helpers (its resource tracker, fork server).

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
    if program == "gunicorn":
        _before("gunicorn.workers.base", "Worker", "init_process")
    elif program == "uvicorn" or (
        program == "multiprocessing" and importlib.util.find_spec("uvicorn") is not None
    ):
        # uvicorn's --workers are started with multiprocessing's spawn method.
        _before("uvicorn.config", "Config", "load")
    else:
        _init()
        _flush_on_signals()


#: Signals whose default action ends a process without running atexit handlers.
FLUSHED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _flush_on_signals() -> None:
    for signum in FLUSHED_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _flush_then_die)


def _flush_then_die(signum: int, frame: Any) -> None:
    """Flush spans and logs within the shutdown budget, then die by ``signum``."""
    import sightline
    from sightline import _agent

    # A second signal while flushing ends the process at once, as it would have.
    signal.signal(signum, signal.SIG_DFL)
    agent = _agent.current
    budget = agent.settings.shutdown_timeout if agent is not None else 0.0
    # On its own thread: the main thread, interrupted here, may hold a lock the flush
    # needs; then the budget runs out and the process ends all the same.
    flush = threading.Thread(
        target=sightline._stop_for_exit, args=(budget,), name="sightline-signal", daemon=True
    )
    flush.start()
    flush.join(budget + 0.5)
    os.kill(os.getpid(), signum)


def _init() -> None:
    import sightline

    try:
        sightline.init()
    except sightline.ConfigError as exc:
        sys.stderr.write(f"sightline: not started: {exc}\n")


def _before(module: str, cls: str, method: str) -> None:
    """Run ``init()`` just before ``module.cls.method`` first runs in this process."""
    from .integrations import watcher

    def patch() -> None:
        owner = getattr(sys.modules[module], cls)
        original: Callable[..., Any] = getattr(owner, method)
        if getattr(original, "_sightline_launch", False):
            return

        def launch(self: Any, *args: Any, **kwargs: Any) -> Any:
            setattr(owner, method, original)  # once is enough
            _init()
            return original(self, *args, **kwargs)

        launch._sightline_launch = True  # type: ignore[attr-defined]
        setattr(owner, method, launch)

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
