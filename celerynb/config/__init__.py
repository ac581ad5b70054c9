"""Where the broker and result backend are: one resolution for kernels, scripts and workers.

Order (first match wins):

1. ``CELERY_BROKER_URL`` / ``CELERY_RESULT_BACKEND`` (``REDIS_URL`` stands for both);
2. the discovery file written by a running ``celerynb up``;
3. nothing: the caller starts the embedded server on demand.

This package imports neither Celery nor IPython at import time (a check imports kombu or Celery
when it runs), so that everything can stand on it. Its submodules:
:mod:`~celerynb.config.masking` (secrets out of what we show), :mod:`~celerynb.config.runtime`
(the runtime directory), :mod:`~celerynb.config.discovery` (the file of a running ``celerynb
up``), :mod:`~celerynb.config.identity` (is a PID still the process we recorded),
:mod:`~celerynb.config.scratch` (temporary directories swept once their owner is gone),
:mod:`~celerynb.config.validation` (can a URL work at all) and :mod:`~celerynb.config.reachability`
(does it answer).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from celerynb.config.discovery import (
    DISCOVERY_FILENAME,
    discovery_path,
    pid_alive,
    read_discovery,
    remove_discovery,
    write_discovery,
)
from celerynb.config.masking import mask_text, mask_url
from celerynb.config.runtime import persistent_data_dir, runtime_dir

__all__ = [
    "DISCOVERY_FILENAME", "Resolved", "default_wait_timeout", "discovery_path", "from_environment", "in_celery_command",
    "mask_text", "mask_url", "noninteractive", "persistent_data_dir", "pid_alive", "read_discovery",
    "remove_discovery", "resolve", "runtime_dir", "write_discovery",
]

@dataclass(frozen=True)
class Resolved:
    """The outcome of resolution: URLs plus where they came from (``env``, ``discovery``, ``embedded``...)."""

    broker_url: str
    result_backend: str
    source: str

    def __repr__(self) -> str:
        return f"Resolved(broker_url={mask_url(self.broker_url)!r}, source={self.source!r})"


def from_environment() -> Resolved | None:
    env = os.environ
    broker = env.get("CELERY_BROKER_URL") or env.get("REDIS_URL")
    backend = env.get("CELERY_RESULT_BACKEND") or env.get("REDIS_URL")
    if not broker and not backend:
        return None
    broker = broker or backend
    if not backend:
        backend = broker if broker.startswith(("redis://", "rediss://")) else ""
    return Resolved(broker, backend, "env")


def resolve() -> Resolved | None:
    """Environment, then discovery; None means "start the embedded server"."""
    found = from_environment()
    if found:
        return found
    record = read_discovery()
    if record:
        return Resolved(record["url"], record["url"], "discovery")
    return None


#: Celery subcommands that need the configured broker: in them no private server is started.
_BROKER_COMMANDS = frozenset(("worker", "beat", "inspect", "flower", "events", "control", "status"))


def in_celery_command() -> bool:
    """True inside ``celery worker/beat/...``, where no private server may be started.

    Decided from evidence, not from a word anywhere in argv (``pytest -k worker`` is no worker):
    Celery's CLI is loaded, this process was started as ``celery`` or ``python -m celery``, and
    the subcommand, the first argument after Celery's own global options, is one of those.
    """
    cli = sys.modules.get("celery.bin.celery")
    if cli is None or not sys.argv:
        return False
    prog = os.path.abspath(sys.argv[0])
    if os.path.basename(prog) != "celery" and not prog.endswith(os.path.join("celery", "__main__.py")):
        return False
    return _subcommand(cli.celery, sys.argv[1:]) in _BROKER_COMMANDS


def _subcommand(group: object, args: list[str]) -> str | None:
    """The first positional argument of ``args``, skipping ``group``'s (a click group) options
    and their values, as click itself parses them."""
    takes_value = {}
    for param in getattr(group, "params", ()):
        if getattr(param, "param_type_name", "") == "option":
            for name in (*param.opts, *param.secondary_opts):
                takes_value[name] = not (param.is_flag or param.count)
    rest = iter(args)
    for arg in rest:
        if arg == "--":
            return next(rest, None)
        if arg.startswith("--"):
            if "=" not in arg and takes_value.get(arg):
                next(rest, None)
        elif arg.startswith("-") and len(arg) > 1:
            for i, letter in enumerate(arg[1:], 1):  # -Cq (flags), -Aapp or -A app (a value)
                if takes_value.get(f"-{letter}"):
                    if i == len(arg) - 1:
                        next(rest, None)
                    break
        else:
            return arg
    return None


_TRUE = ("1", "true", "yes", "on")
#: Seconds a progress wait blocks, in non-interactive runs, when the caller gave no timeout.
NONINTERACTIVE_WAIT_TIMEOUT = 600.0


def noninteractive() -> bool:
    """True in CI (``CI=true``, set by GitHub Actions, GitLab, ...) or with ``CELERYNB_NONINTERACTIVE=1``.

    Displays are then text only and deterministic, and waits are bounded, so that a notebook run
    by nbval, nbmake, papermill or nbconvert neither hangs nor differs between runs. An explicit
    ``CELERYNB_NONINTERACTIVE=0`` wins over ``CI`` (e.g. a browser test inside CI).
    """
    own = os.environ.get("CELERYNB_NONINTERACTIVE", "").strip().lower()
    if own:
        return own in _TRUE
    return os.environ.get("CI", "").strip().lower() in _TRUE


def default_wait_timeout() -> float | None:
    """Timeout for a wait that was given none: ``CELERYNB_WAIT_TIMEOUT`` seconds, else
    :data:`NONINTERACTIVE_WAIT_TIMEOUT` in non-interactive runs, else no limit."""
    value = os.environ.get("CELERYNB_WAIT_TIMEOUT", "").strip()
    if value:
        try:
            seconds = float(value)
        except ValueError:
            raise ValueError(f"CELERYNB_WAIT_TIMEOUT={value!r} is not a number of seconds, e.g. 300.") from None
        return seconds if seconds > 0 else None
    return NONINTERACTIVE_WAIT_TIMEOUT if noninteractive() else None
