"""Module-level tasks used as baselines by the benchmarks."""

from celerynb.workers.celery_app import app


@app.task(name="bench.square")
def bench_square(x):
    return x * x


@app.task(name="bench.noop")
def noop(x=None):
    return x
