"""Blocking waits in a real kernel: a kernel interrupt returns at once and says the tasks keep
running (or cancels them with ``cancel_on_interrupt``); widget clicks reach their handler while a
cell blocks when they come on a kernel subshell, as JupyterLab 4.6 sends them; and a button
clicked through the widget protocol retries what failed."""

from __future__ import annotations

import queue
import time

import pytest

SETUP = """
import celerynb
from celerynb.workers.celery_app import app
from celerynb.workers.tasks import long_process
cluster = celerynb.start()
"""


class Cell:
    """A cell sent to the kernel without waiting for it: its iopub messages read as they come."""

    def __init__(self, kernel, code: str) -> None:
        self.kc = kernel.kc
        self.msg_id = self.kc.execute(code)
        self.messages: list[dict] = []

    def until(self, predicate, timeout: float = 30) -> dict:
        """Read this cell's iopub messages until one satisfies ``predicate``; returns it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                continue
            self.messages.append(msg)
            if msg["parent_header"].get("msg_id") == self.msg_id and predicate(msg):
                return msg
            if msg["msg_type"] == "comm_open" and predicate(msg):  # widgets are opened by the cell too
                return msg
        raise AssertionError(f"timed out after {timeout} s; saw {[m['msg_type'] for m in self.messages][-20:]}")

    def reply(self, timeout: float = 30) -> dict:
        """The cell's execute_reply (the kernel is done with it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
            if msg["parent_header"].get("msg_id") == self.msg_id:
                return msg["content"]
        raise AssertionError(f"no reply within {timeout} s")


def is_display(msg: dict) -> bool:
    return msg["msg_type"] == "display_data"


def is_redraw(msg: dict) -> bool:
    """A widget state update (the display's clock or bars): the cell is inside its wait."""
    return msg["msg_type"] == "comm_msg" and msg["content"]["data"].get("method") == "update"


def drain(kc) -> None:
    while True:
        try:
            kc.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            return


def test_interrupt_in_a_blocking_wait_returns_at_once(kernel):
    assert kernel.run(SETUP, timeout=90).status == "ok"
    cell = Cell(kernel, "r = long_process.delay(list(range(300)), 0.1)\n"
                        "celerynb.progress(r, wait=True, widget=True)")
    cell.until(is_display)
    cell.until(is_redraw)
    sent = time.monotonic()
    kernel.km.interrupt_kernel()
    reply = cell.reply()
    took = time.monotonic() - sent
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    assert reply["evalue"] == "1 task keeps running; cancel them with celerynb.cancel(results) or the Cancel button"
    assert took < 3, took  # the task alone would take 30 s
    drain(kernel.kc)
    still = kernel.run("print(r.state)")
    assert still.stdout.strip() in ("STARTED", "PROGRESS"), still.stdout  # interrupting did not cancel it
    print(f"\ninterrupt -> reply: {took:.2f} s")

    # .get() says the same of its one task, as a note under the KeyboardInterrupt.
    # A line printed just before, then a redraw of a display (from the monitor's thread, at most
    # a second later): by then the main thread is inside .get().
    cell = Cell(kernel, "d = celerynb.progress(r, widget=True); print('waiting', flush=True); r.get()")
    cell.until(lambda m: m["msg_type"] == "stream" and "waiting" in m["content"]["text"])
    cell.until(is_redraw)
    kernel.km.interrupt_kernel()
    reply = cell.reply()
    assert reply["ename"] == "KeyboardInterrupt"
    import re
    tb = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(reply["traceback"]))
    assert "1 task keeps running; cancel it with celerynb.cancel(result)" in tb, tb
    drain(kernel.kc)

    cancelled = kernel.run("print(celerynb.cancel(r)); celerynb.progress(r, wait=True, timeout=20, widget=False)")
    assert cancelled.stdout.splitlines()[0] == "1", cancelled.stdout
    assert "REVOKED (cancelled)" in cancelled.text, cancelled


def test_cancel_on_interrupt_cancels_the_tasks(kernel):
    assert kernel.run(SETUP, timeout=90).status == "ok"
    cell = Cell(kernel, "rs = [long_process.delay(list(range(300)), 0.1) for _ in range(2)]\n"
                        "celerynb.progress(rs, wait=True, widget=True, cancel_on_interrupt=True)")
    cell.until(is_display)
    cell.until(is_redraw)
    kernel.km.interrupt_kernel()
    reply = cell.reply(timeout=10)
    assert reply["ename"] == "KeyboardInterrupt"
    assert reply["evalue"] == "cancelled 2 unfinished task(s) (cancel_on_interrupt=True)"
    drain(kernel.kc)
    out = kernel.run("celerynb.progress(rs, wait=True, timeout=20, widget=False)\nprint([r.state for r in rs])")
    assert out.stdout.strip() == "['REVOKED', 'REVOKED']", (out.stdout, out.error)


def is_cancel_button(msg: dict) -> bool:
    state = (msg["content"].get("data") or {}).get("state") or {}
    return (msg["msg_type"] == "comm_open" and state.get("_model_name") == "ButtonModel"
            and state.get("description") == "Cancel")


def click(kc, comm_id: str, subshell_id: str | None = None) -> None:
    """What the widget manager sends for a button click (ipywidgets 8: a custom ``click`` event)."""
    msg = kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {"method": "custom", "content": {"event": "click"}}})
    if subshell_id is not None:
        msg["header"]["subshell_id"] = subshell_id
    kc.shell_channel.send(msg)


def create_subshell(kc) -> str:
    request = kc.session.msg("create_subshell_request", {})
    kc.control_channel.send(request)
    while True:
        reply = kc.get_control_msg(timeout=10)
        if reply["parent_header"].get("msg_id") == request["header"]["msg_id"]:
            return reply["content"]["subshell_id"]


def test_a_click_sent_on_a_subshell_cancels_a_blocking_cell_at_once(kernel):
    """What JupyterLab 4.6 does (``commsOverSubshells``: ``perCommTarget``, one subshell for
    ``jupyter.widget``): the click comes with a subshell id. ipykernel 7.4 would route it to the
    shell that last published on the button's comm, the main one, blocked in the cell; celerynb's
    buttons are handled on the subshell they are clicked from (``_compat.act_on_clicks_at_once``),
    so the Cancel acts while ``progress(wait=True)`` blocks and the cell returns at once."""
    info = kernel.kc.kernel_info(reply=True)["content"]
    if "kernel subshells" not in info.get("supported_features", []):
        pytest.skip("this ipykernel has no subshells")
    assert kernel.run(SETUP, timeout=90).status == "ok"
    subshell_id = create_subshell(kernel.kc)
    cell = Cell(kernel, "r = long_process.delay(list(range(300)), 0.1)\n"
                        "celerynb.progress(r, wait=True, widget=True)")
    button = cell.until(is_cancel_button)["content"]["comm_id"]
    cell.until(is_display)
    cell.until(is_redraw)
    click(kernel.kc, button, subshell_id)
    reply = cell.reply(timeout=20)  # 30 s of work: it only returns this soon if cancelled
    assert reply["status"] == "ok", reply
    drain(kernel.kc)
    out = kernel.run("print(r.state)")
    assert out.stdout.strip() == "REVOKED", out


def test_a_click_during_an_awaiting_cell_cancels_at_once(kernel):
    """While a cell awaits (``await celerynb.wait(r)``), ipykernel 7.4 handles comm messages
    beside it: the Cancel button acts at once, with or without subshells."""
    version = kernel.run("import ipykernel\nprint(ipykernel.__version__)").stdout.strip()
    if tuple(int(x) for x in version.split(".")[:2]) < (7, 4):
        pytest.skip(f"ipykernel {version} handles comm messages only after an awaiting cell (README: 7.4 does)")
    assert kernel.run(SETUP, timeout=90).status == "ok"
    cell = Cell(kernel, "r = long_process.delay(list(range(300)), 0.1)\n"
                        "d = celerynb.progress(r, widget=True)\n"
                        "print(repr(await celerynb.wait(r, propagate=False)))")
    button = cell.until(is_cancel_button)["content"]["comm_id"]
    cell.until(is_display)
    cell.until(is_redraw)
    sent = time.monotonic()
    click(kernel.kc, button)
    reply = cell.reply(timeout=20)
    took = time.monotonic() - sent
    assert reply["status"] == "ok", reply
    assert took < 5, took  # cancelled at its next item, not after 30 s
    out = "".join(m["content"].get("text", "") for m in cell.messages + _rest(kernel.kc, cell.msg_id)
                  if m["msg_type"] == "stream")
    assert "TaskRevokedError" in out, out
    print(f"\nclick during await -> reply: {took:.2f} s")


def _rest(kc, msg_id: str) -> list[dict]:
    found = []
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=0.5)
        except queue.Empty:
            return found
        if msg["parent_header"].get("msg_id") == msg_id:
            found.append(msg)


def test_retry_button_clicked_through_the_widget_protocol(kernel):
    code = SETUP + """
import uuid
key = "celerynb-test-kretry:" + uuid.uuid4().hex

@app.task(name="kt.flaky", bind=True)
def flaky(self, i):
    if i == 1 and not self.app.backend.client.get(key):
        raise ValueError("not ready")
    return i

res = [flaky.delay(i) for i in range(3)]
d = celerynb.progress(res, widget=True)
d.wait(30)
print(d.retry_button.model_id, d.retry_button.layout.display)
"""
    out = kernel.run(code, timeout=90)
    assert out.status == "ok", out.error
    model_id, shown = out.stdout.split()
    assert shown == "None"  # visible: one task failed
    assert kernel.run("app.backend.client.set(key, '1')").status == "ok"
    click(kernel.kc, model_id)  # on the main shell: handled before the next cell
    after = kernel.run("print(d.wait(30)); print(d.text()); print(d.retry_button.layout.display);"
                       "app.backend.client.delete(key)")
    lines = after.stdout.splitlines()
    assert lines[0] == "[0, 1, 2]", after.stdout
    assert "kt.flaky(1): 100% |####################| SUCCESS (attempt 2)" in lines, after.stdout
    assert lines[-1] == "none"


def test_a_cancelled_gather_says_the_tasks_keep_running(cluster):
    """ipykernel 7.4 interrupts an awaiting cell by cancelling its asyncio task, and only once the
    awaited thing completes (``await asyncio.sleep(20)`` interrupted after 0.5 s returned after
    19.8 s): so the Cancel button is the way out of an awaiting cell. A cancelled ``gather`` still
    says what became of the tasks."""
    import asyncio

    import celerynb
    from celerynb.workers.tasks import long_process

    r = long_process.delay(list(range(300)), 0.1)

    async def main():
        waiting = asyncio.ensure_future(celerynb.gather(r))
        await asyncio.sleep(0)  # let it subscribe: one turn of the loop, not a timing guess
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError) as raised:
            await waiting
        return raised.value

    err = asyncio.run(main())
    assert str(err) == "1 task keeps running; cancel them with celerynb.cancel(results) or the Cancel button"
    assert celerynb.cancel(r) == 1
    assert celerynb.progress(r, wait=True, timeout=20, widget=False).__class__.__name__ == "TaskRevokedError"


def test_table_buttons_under_a_live_table(kernel):
    code = SETUP + """
import os, time, uuid
os.environ["CELERYNB_NONINTERACTIVE"] = "0"  # a live table, as in JupyterLab (the tests run with it on)
from celerynb.tracking.monitor import get_monitor
key = "celerynb-test-ktable:" + uuid.uuid4().hex

@app.task(name="kt.flaky_table", bind=True)
def flaky(self, i):
    if i != 0 and not self.app.backend.client.get(key):
        raise ValueError("not ready")
    return i

res = [flaky.delay(i) for i in range(3)]
get_monitor(app).wait([r.id for r in res], 30)
t = celerynb.TaskTable(res)
t
"""
    out = kernel.run(code, timeout=90)
    assert out.status == "ok", out.error
    assert "celerynb-task-table" in out.results[0]["text/html"]
    assert "application/vnd.jupyter.widget-view+json" in out.results[1]  # the buttons, under the table
    ids = kernel.run("print(t._actions.retry_button.model_id, t._actions.retry_button.description,"
                     " t._actions.cancel_button.layout.display); app.backend.client.set(key, '1')")
    model_id, *label, cancel_display = ids.stdout.split()
    assert " ".join(label) == "Retry failed (2)" and cancel_display == "none"
    click(kernel.kc, model_id)
    after = kernel.run("""
t.monitor.wait(t.ids, 30)
deadline = time.monotonic() + 10
while t._actions.shown and time.monotonic() < deadline:  # the next redraw puts the placeholder back
    time.sleep(0.05)
print(repr(t)); print(t._actions.shown); app.backend.client.delete(key)
""")
    assert after.stdout.splitlines() == ["<TaskTable 3 tasks: SUCCESS 3; 2 sent again (attempt 2)>", "False"], after
