"""Module-level tasks used as baselines by the benchmarks."""

from celerynb.workers.celery_app import app


@app.task(name="bench.square")
def bench_square(x):
    return x * x


@app.task(name="bench.noop")
def noop(x=None):
    return x


@app.task(name="bench.big_string")
def big_string(mb):
    """A result of ``mb`` MiB (bench_scaling: is it still resident after ``del``?)."""
    return "x" * (mb * 2**20)


@app.task(name="bench.spin")
def spin():
    """Loops in Python without ever checking for a cancel (bench_cancel)."""
    while True:
        pass


@app.task(name="bench.steps")
def steps(step):
    """Sleeps in steps of ``step`` seconds, never checking for a cancel (bench_cancel)."""
    import time

    while True:
        time.sleep(step)
