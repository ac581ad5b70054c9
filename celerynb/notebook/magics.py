"""IPython magics: ``%%celery_task`` and ``%celery``. Parsing only; the work is delegated."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from celerynb import config
from celerynb.cluster import apps, local, session
from celerynb.display import eager as eager_display
from celerynb.display.status import ClusterStatus, TaskList
from celerynb.notebook import cell_tasks


def _current_app():
    return apps.current_app()


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that reports mistakes as one-line UsageErrors instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}. See %celery? for help.")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        raise _HelpShown()


class _HelpShown(Exception):
    pass


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return value


#: What ``%celery start`` starts when no option says otherwise.
START_DEFAULTS = {"workers": 1, "concurrency": 4, "pool": "threads", "queues": None, "processes": 0, "beat": False}


def _start_options(parser: argparse.ArgumentParser, defaults: dict[str, Any] | None) -> None:
    """The options of ``start``; for ``restart`` (``defaults`` None) an option not given keeps its value."""
    d = defaults or {}
    parser.add_argument("--workers", type=_positive_int, default=d.get("workers"), help="in-kernel workers (default 1)")
    parser.add_argument("--concurrency", type=_positive_int, default=d.get("concurrency"),
                        help="threads per worker (default 4)")
    parser.add_argument("--pool", choices=("threads", "solo"), default=d.get("pool"))
    parser.add_argument("--queues", default=None, help="comma-separated queues (default: all the app declares)")
    parser.add_argument("--processes", type=_positive_int, default=d.get("processes"),
                        help="slots in a `celery worker` process (one prefork worker, N children)")
    parser.add_argument("--beat", action="store_true", default=d.get("beat"), help="run the app's beat_schedule in the kernel")


def _options_of(args: argparse.Namespace) -> dict[str, Any]:
    """The cluster options ``args`` gives (None where not given)."""
    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    return dict(workers=args.workers, concurrency=args.concurrency, pool=args.pool, queues=queues,
                processes=args.processes, beat=args.beat)


def _celery_parser() -> _ArgumentParser:
    parser = _ArgumentParser(prog="%celery", add_help=False)
    sub = parser.add_subparsers(dest="command", parser_class=_ArgumentParser)
    sub.add_parser("status", help="show the cluster: broker, mode, workers, queues, notebook tasks")
    _start_options(sub.add_parser("start", help="start the local cluster (embedded server + in-kernel workers)"),
                   START_DEFAULTS)
    sub.add_parser("stop", help="stop the local cluster")
    _start_options(sub.add_parser("restart", help="stop, then start with the same options but those given"), None)
    connect = sub.add_parser("connect", help="use an external broker URL, or `auto` for a running `celerynb up`")
    connect.add_argument("url", help="redis://..., amqp://... or auto")
    connect.add_argument("--backend", default=None, help="result backend URL (default: the broker for Redis)")
    connect.add_argument("--no-workers", action="store_true", help="do not start in-kernel workers on it")
    eager = sub.add_parser("eager", help="run tasks synchronously in the cell (on) or on workers (off)")
    eager.add_argument("mode", choices=("on", "off"))
    purge = sub.add_parser("purge", help="remove waiting messages from a queue (default: every queue)")
    purge.add_argument("queue", nargs="?", default=None)
    use = sub.add_parser("use", help="work with another Celery app (the lookup rules of `celery -A`)")
    use.add_argument("app", nargs="?", help="proj, proj.celery or proj.celery:app")
    use.add_argument("--local", action="store_true", help="point its broker and backend at the embedded server")
    use.add_argument("--restore", action="store_true", help="give it back its own broker and backend")
    reattach = sub.add_parser("reattach", help="show this notebook's saved displays again, with their tasks' current states")
    reattach.add_argument("notebook", nargs="?", default=None, help="the .ipynb to read (default: this kernel's notebook)")
    monitor = sub.add_parser("monitor", help="the whole cluster live: workers, queues, every task whoever sent it")
    monitor.add_argument("--rows", type=_positive_int, default=20, help="tasks shown (the latest; default 20)")
    monitor.add_argument("--max-tasks", type=_positive_int, default=10_000, help="tasks kept in memory (default 10000)")
    monitor.add_argument("--queues", default=None, help="comma-separated queues to watch besides the known ones")
    monitor.add_argument("--no-enable-events", action="store_true",
                         help="do not ask the workers to send task events (enable_events)")
    tasks = sub.add_parser("tasks", help="list registered tasks (notebook and package)")
    tasks.add_argument("--live", action="store_true", help="a live table of the tasks submitted from here")
    return parser


@magics_class
class CeleryMagics(Magics):
    """The magics of ``%load_ext celerynb``."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self._start_options: dict[str, Any] = {}
        self._saved_eager: dict[str, Any] | None = None

    # -- %%celery_task -------------------------------------------------------------------
    @magic_arguments()
    @argument("--name", default=None, help="task name (default: notebook.<function name>)")
    @argument("--bind", action="store_true", help="pass the task instance as first argument (self)")
    @argument("--queue", default=None, help="queue to route the task to")
    @argument("--max-retries", type=int, default=None, help="maximum retries for self.retry()")
    @argument("--default-retry-delay", type=float, default=None, help="seconds before a retry")
    @argument("--rate-limit", default=None, help="e.g. 10/s, 100/m, 1000/h")
    @argument("--time-limit", type=float, default=None, help="hard time limit (seconds)")
    @argument("--soft-time-limit", type=float, default=None, help="soft time limit (seconds)")
    @argument("--ignore-result", action="store_true", help="do not store the result")
    @argument("--acks-late", action="store_true", help="acknowledge after the task ran")
    @cell_magic
    def celery_task(self, line: str, cell: str) -> None:
        """Turn the function defined in this cell into a Celery task.

        The cell must define exactly one undecorated top-level function (or one decorated by a
        decorator the cell defines); it becomes a task named ``notebook.<function>`` (or
        ``--name``, outside Celery's ``celery.*``) and is bound under the function's name.
        Running the cell again replaces the task, also in running in-kernel workers.
        """
        try:
            args = parse_argstring(self.celery_task, line)
        except ValueError as exc:  # shlex: an unbalanced quote
            raise UsageError(f"%%celery_task: {exc} in the options; check the quotes.") from None
        except UsageError as exc:  # IPython's argument parser: an unknown option, a missing value
            raise UsageError(f"%%celery_task: {exc}. See %%celery_task? for the options.") from None
        options = cell_tasks.TaskOptions(
            name=args.name, bind=args.bind, queue=args.queue, max_retries=args.max_retries,
            default_retry_delay=args.default_retry_delay, rate_limit=args.rate_limit,
            time_limit=args.time_limit, soft_time_limit=args.soft_time_limit,
            ignore_result=args.ignore_result, acks_late=args.acks_late,
        )
        try:
            options.validate()
            fname = cell_tasks.find_task_function(cell)
            cell_tasks.check_name(_current_app(), options.name or f"notebook.{fname}")
        except cell_tasks.CellTaskError as exc:
            raise UsageError(f"%%celery_task: {exc}") from None
        ns = self.shell.user_ns
        missing = object()
        previous = ns.get(fname, missing)
        result = self.shell.run_cell(cell, store_history=False, silent=True)
        func = ns.get(fname)
        if not result.success or not callable(func) or func is previous:
            self._restore(ns, fname, previous, missing)
            if result.error_before_exec or result.error_in_exec:
                raise UsageError(
                    f"%%celery_task: the cell raised {type(result.error_in_exec or result.error_before_exec).__name__}"
                    f"; nothing was registered."
                )
            raise UsageError(f"%%celery_task: {fname} was not defined; nothing was registered.")
        try:
            task = cell_tasks.register(_current_app(), func, options, cell, fname)
        except Exception as exc:  # noqa: BLE001 - one line for the user, the old task stays
            self._restore(ns, fname, previous, missing)
            raise UsageError(f"%%celery_task: could not register {fname}: {config.mask_text(str(exc))}") from None
        ns[fname] = task

    @staticmethod
    def _restore(ns: dict, name: str, previous: Any, missing: object) -> None:
        if previous is missing:
            ns.pop(name, None)
        else:
            ns[name] = previous

    # -- %celery -------------------------------------------------------------------------
    @line_magic
    def celery(self, line: str) -> Any:
        """Manage the local Celery cluster.

        Usage::

          %celery status                     broker (password masked), mode, workers, queues, tasks
          %celery start [--workers N] [--concurrency N] [--pool threads|solo]
                        [--queues a,b] [--processes N] [--beat]
          %celery stop | restart
          %celery connect URL|auto [--backend URL] [--no-workers]
          %celery eager on|off               run tasks synchronously in the cell
          %celery purge [QUEUE]              drop waiting messages, reports how many
          %celery tasks [--live]             registered tasks / live table of submitted tasks
          %celery monitor [--rows N] [--max-tasks N] [--queues a,b] [--no-enable-events]
                                             the whole cluster live: workers, queues, every task
          %celery use APP [--local]          work with your own app (proj, proj.celery, proj.celery:app)
          %celery use --restore              give that app back its own broker and backend
          %celery reattach [NOTEBOOK.ipynb]  the saved displays again (after a kernel restart)

        ``%celery SUBCOMMAND --help`` prints the options of one subcommand.
        """
        parser = _celery_parser()
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%celery: {exc}.") from None
        if not words:
            raise UsageError(
                "%celery: missing subcommand: status, start, stop, restart, connect, eager, purge, tasks, monitor, use "
                "or reattach."
            )
        try:
            args = parser.parse_args(words)
        except _HelpShown:  # argparse printed the help already
            return None
        return getattr(self, f"_cmd_{args.command}")(args)

    def _cmd_reattach(self, args: argparse.Namespace) -> None:
        from celerynb.notebook import reattach

        path = Path(args.notebook) if args.notebook else reattach.notebook_path(self.shell.user_ns)
        if path is None:
            raise UsageError("%celery reattach: this kernel does not know its notebook: pass its path, "
                             "e.g. %celery reattach analysis.ipynb.")
        try:
            shown = reattach.reattach(path, _current_app())
        except reattach.ReattachError as exc:
            raise UsageError(f"%celery reattach: {exc}") from None
        if not shown:
            print(f"%celery reattach: no celerynb display is saved in {path.name} (save the notebook first: Ctrl+S).")

    def _cmd_status(self, args: argparse.Namespace) -> ClusterStatus:
        return ClusterStatus(_current_app(), local.current(), ask_workers=True)

    def _cmd_start(self, args: argparse.Namespace) -> ClusterStatus:
        options = _options_of(args)
        running = local.current()
        if running is not None:
            raise UsageError("%celery start: a cluster is already running; use %celery restart to change options.")
        try:
            local.LocalCluster(_current_app(), **options).start()
        except Exception as exc:  # noqa: BLE001
            raise UsageError(f"%celery start: {config.mask_text(str(exc))}") from None
        self._start_options = options
        return ClusterStatus(_current_app(), local.current())

    def _cmd_stop(self, args: argparse.Namespace) -> None:
        running = local.current()
        if running is None:
            print("No celerynb cluster is running in this kernel.")
            return
        running.stop()
        if running.abandoned:
            print(f"Stopped; {len(running.abandoned)} task(s) were still running: {', '.join(running.abandoned)}")
        else:
            print("Stopped the celerynb cluster.")

    def _cmd_restart(self, args: argparse.Namespace) -> ClusterStatus:
        before = dict(self._start_options)
        options = {**before, **{k: v for k, v in _options_of(args).items() if v is not None}}
        session.stop()
        try:
            local.LocalCluster(_current_app(), **options).start()
        except Exception as exc:  # noqa: BLE001 - the cluster it had comes back
            local.LocalCluster(_current_app(), **before).start()
            raise UsageError(f"%celery restart: {config.mask_text(str(exc))} The cluster runs as before.") from None
        self._start_options = options
        return ClusterStatus(_current_app(), local.current())

    def _cmd_connect(self, args: argparse.Namespace) -> ClusterStatus:
        from celerynb.cluster.connect import connect

        try:
            connect(args.url, backend=args.backend, workers=not args.no_workers, app=_current_app())
        except (ConnectionError, ValueError) as exc:  # BrokerUnreachable, InvalidURL: checked before any change
            raise UsageError(f"%celery connect: {exc} Nothing was changed.") from None
        except local.ClusterError as exc:
            raise UsageError(f"%celery connect: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - one line for the user, never a traceback
            raise UsageError(f"%celery connect: {type(exc).__name__}: {config.mask_text(str(exc), args.url)}") from None
        return ClusterStatus(_current_app(), local.current())

    def _cmd_eager(self, args: argparse.Namespace) -> None:
        conf = _current_app().conf
        keys = ("task_always_eager", "task_eager_propagates", "task_store_eager_result")
        if args.mode == "on":
            if self._saved_eager is None:
                self._saved_eager = {key: conf[key] for key in keys}
            conf.task_always_eager = True
            conf.task_eager_propagates = False
            conf.task_store_eager_result = True
            eager_display.enable()
            print("Eager mode on: tasks run synchronously in the cell; results are stored.")
        else:
            if self._saved_eager is not None:
                for key, value in self._saved_eager.items():
                    conf[key] = value
                self._saved_eager = None
            else:
                conf.task_always_eager = False
            eager_display.disable()
            print("Eager mode off: tasks run on workers.")

    def _cmd_purge(self, args: argparse.Namespace) -> None:
        from celerynb.cluster.queues import purge

        app = _current_app()
        removed = purge(app, args.queue)
        where = f"queue {args.queue!r}" if args.queue else "all queues"
        print(f"Removed {removed} message(s) from {where}.")

    def _cmd_use(self, args: argparse.Namespace) -> ClusterStatus:
        try:
            if args.restore:
                if args.app or args.local:
                    raise UsageError("%celery use --restore takes no app and no --local.")
                app = session.restore()
            elif not args.app:
                raise UsageError("%celery use: name an app, e.g. %celery use proj.celery:app [--local].")
            else:
                app = session.use(args.app, local=args.local)
        except (apps.AppNotFound, ValueError) as exc:
            raise UsageError(f"%celery use: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - e.g. the project's own import errors
            raise UsageError(f"%celery use: {type(exc).__name__}: {config.mask_text(str(exc))}") from None
        return ClusterStatus(app, local.current())

    def _cmd_tasks(self, args: argparse.Namespace) -> Any:
        if args.live:
            try:
                from celerynb.display.table import TaskTable
            except ImportError:
                raise UsageError("%celery tasks --live: live tables are not available in this install.") from None
            return TaskTable()
        return TaskList(_current_app())

    def _cmd_monitor(self, args: argparse.Namespace) -> Any:
        from celerynb.display.cluster import ClusterMonitor

        if args.rows < 1 or args.max_tasks < 1:
            raise UsageError("%celery monitor: --rows and --max-tasks must be at least 1.")
        queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
        return ClusterMonitor(_current_app(), rows=args.rows, max_tasks=args.max_tasks, queues=queues,
                              enable_events=not args.no_enable_events)
