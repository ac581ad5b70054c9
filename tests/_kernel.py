"""A real IPython kernel for tests: execute code, collect what the user would see."""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field

from jupyter_client.manager import KernelManager


@dataclass
class Reply:
    status: str
    stdout: str = ""
    stderr: str = ""
    results: list[dict] = field(default_factory=list)  # execute_result / display_data bundles
    error: dict | None = None

    @property
    def text(self) -> str:
        return "\n".join(r.get("text/plain", "") for r in self.results)


class Kernel:
    """Start with ``Kernel()``, run code with ``.run(code)``, stop with ``.shutdown()``."""

    def __init__(self, timeout: float = 60) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.shutdown_wait_time = 15.0  # a loaded machine (CI, parallel tests) needs more than the default 5 s
        self.km.start_kernel()
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=timeout)
        #: Every stream output seen while running cells, whatever cell it was sent as part of
        #: (output of a background thread may be routed to another cell than the one running).
        self.streams: list[str] = []

    @property
    def pid(self) -> int:
        return self.km.provisioner.process.pid

    def run(self, code: str, timeout: float = 60, cell_id: str | None = None) -> Reply:
        """Execute ``code``; with ``cell_id``, as JupyterLab runs a cell (the id in the metadata)."""
        if cell_id is None:
            msg_id = self.kc.execute(code)
        else:
            msg = self.kc.session.msg("execute_request", {
                "code": code, "silent": False, "store_history": True, "user_expressions": {},
                "allow_stdin": False, "stop_on_error": True}, metadata={"cellId": cell_id})
            self.kc.shell_channel.send(msg)
            msg_id = msg["header"]["msg_id"]
        reply = Reply(status="?")
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"kernel did not finish within {timeout} s: {code[:80]!r}")
            try:
                msg = self.kc.get_iopub_msg(timeout=remaining)
            except queue.Empty:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                self.streams.append(content["text"])
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if kind == "stream":
                if content["name"] == "stdout":
                    reply.stdout += content["text"]
                else:
                    reply.stderr += content["text"]
            elif kind in ("execute_result", "display_data"):
                reply.results.append(content["data"])
            elif kind == "error":
                reply.error = content
            elif kind == "status" and content["execution_state"] == "idle":
                break
        while True:  # skip replies to earlier requests (one left by a run that timed out)
            shell = self.kc.get_shell_msg(timeout=max(1.0, deadline - time.monotonic()))
            if shell["parent_header"].get("msg_id") == msg_id:
                break
        reply.status = shell["content"]["status"]
        return reply

    def shutdown(self) -> float:
        """Polite shutdown; returns seconds taken. Killing is jupyter_client's fallback."""
        start = time.monotonic()
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)
        return time.monotonic() - start
