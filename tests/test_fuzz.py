"""Bad input, generated (hypothesis): magics, payloads, displayed fields, unknown task ids.

Never a traceback of ours (only ``UsageError`` with one line, or the user's own code's error),
never a half-registered task, every displayed string escaped.
"""

from __future__ import annotations

import uuid

import pytest
from conftest import registered
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

import celerynb
from celerynb.bulk import map as bulk_map
from celerynb.tracking.monitor import TaskSnapshot, get_monitor
from celerynb.workers.base import ArgumentNotSerializable
from celerynb.workers.celery_app import app as nb_app

pytestmark = pytest.mark.reliability

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NASTY = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["<script>alert(1)</script>", "</td></tr><b>x", "'\"&amp;", "\u202e\u0000", "ünïcødé 🚀", "--", "-n", "--name"]
)


def _echo(x):
    return x


@pytest.fixture(scope="module")
def echo():
    """This module's task on celerynb's app, for its tests only (importing the module registers nothing)."""
    with registered(nb_app, _echo, "tests.fuzz.echo") as task:
        yield task


@pytest.fixture(scope="module")
def ip(tmp_path_factory):
    """A shell with the extension loaded, in eager mode; IPYTHONDIR and eager mode are put back after."""
    from IPython.terminal.interactiveshell import TerminalInteractiveShell

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IPYTHONDIR", str(tmp_path_factory.mktemp("ipython")))
        # Registering needs no server; running is not the point here.
        patch.setitem(nb_app.conf, "task_always_eager", True)
        shell = TerminalInteractiveShell.instance()
        try:
            shell.run_line_magic("load_ext", "celerynb")
            yield shell
        finally:
            try:
                shell.run_line_magic("unload_ext", "celerynb")
            finally:
                for name in [n for n in nb_app.tasks if n.startswith("notebook.")]:
                    nb_app.tasks.pop(name, None)
                TerminalInteractiveShell.clear_instance()
                celerynb.stop()


@FUZZ
@given(line=NASTY)
def test_celery_task_argument_strings_never_leak_a_traceback(ip, line):
    before = set(nb_app.tasks)
    ns_before = set(ip.user_ns)
    try:
        with capture_output() as out:
            ip.run_cell_magic("celery_task", line, "def fuzzed(x):\n    return x\n")
    except UsageError as exc:
        assert "\n" not in str(exc).strip()
        assert set(nb_app.tasks) == before and "fuzzed" not in set(ip.user_ns) - ns_before
    else:
        assert "Traceback" not in out.stdout + out.stderr
    nb_app.tasks.pop("notebook.fuzzed", None)
    ip.user_ns.pop("fuzzed", None)


@FUZZ
@given(body=NASTY | st.sampled_from(["def (:", "class A: pass", "def f(): pass\ndef g(): pass", "lambda: 1",
                                      "def f(x):\n  return x\nraise SystemExit", "import sys; sys.exit(1)"]))
def test_celery_task_cell_bodies_register_completely_or_not_at_all(ip, body):
    before = dict(nb_app.tasks)
    try:
        with capture_output():
            ip.run_cell_magic("celery_task", "", body)
    except UsageError as exc:
        assert "\n" not in str(exc).strip()
        assert dict(nb_app.tasks) == before  # nothing half-registered
    except SystemExit:
        pytest.fail("a cell's SystemExit escaped the magic")
    else:
        added = set(nb_app.tasks) - set(before)
        for name in added:  # a success registers exactly one callable task, bound in the namespace
            short = name.split(".", 1)[1]
            assert ip.user_ns[short].name == name
            nb_app.tasks.pop(name, None)


@FUZZ
@given(value=st.sampled_from([object(), 1 + 2j, _echo, Exception("x"), range(3)]))
def test_payloads_json_cannot_carry_are_named(app, echo, value):
    app.conf.task_always_eager = False
    with pytest.raises(ArgumentNotSerializable, match="argument 'x'"):
        echo.delay(value)


def test_map_payloads_json_cannot_carry_are_named_by_item(cluster, echo):
    with pytest.raises(ArgumentNotSerializable, match=r"item #2: .*argument 'x'"):
        bulk_map(echo, [1, 2, {3}])


@FUZZ
@given(name=NASTY, arg=NASTY, result=NASTY, error=NASTY, status=NASTY)
def test_every_displayed_field_is_escaped(name, arg, result, error, status):
    mon = get_monitor(nb_app)
    ids = [str(uuid.uuid4()) for _ in range(4)]
    mon.seed(TaskSnapshot(ids[0], "SUCCESS", result, name=name, args=[arg], worker=name))
    mon.seed(TaskSnapshot(ids[1], "FAILURE", {"exc_type": "ValueError", "exc_message": [error]}, name=name))
    mon.seed(TaskSnapshot(ids[2], "PROGRESS", {"progress": 50, "status": status}, name=name))
    mon.seed(TaskSnapshot(ids[3], "RETRY", {"exc_type": "IOError", "exc_message": error}, name=name, retries=1))
    display = celerynb.progress(ids, widget=False, app=nb_app)
    table = celerynb.TaskTable(ids, app=nb_app)
    try:
        for html in (display.summary_html(), table._repr_html_()):
            for raw in (name, arg, result, error, status):
                if "<" in raw or ">" in raw:  # user text never arrives as markup
                    assert raw not in html
            assert "<script>" not in html
        assert isinstance(display.text(), str) and isinstance(repr(table), str)
    finally:
        display.close()
        table.close()


def test_huge_results_are_shortened_in_every_display(cluster, echo):
    big = "x" * 2_000_000 + "<b>"
    result = echo.delay(big)
    display = celerynb.progress(result, widget=False)
    assert display.wait(timeout=60) == big
    table = celerynb.TaskTable(result)
    try:
        assert len(table._repr_html_()) < 10_000 and len(display.text()) < 1_000 and len(repr(table)) < 1_000
        assert "<b>" not in table._repr_html_()
    finally:
        table.close()


@FUZZ
@given(task_id=st.text(min_size=1, max_size=60))
def test_unknown_task_ids_are_pending_never_errors(task_id):
    display = celerynb.progress(task_id, widget=False, app=nb_app)
    table = celerynb.TaskTable([task_id], app=nb_app)
    try:
        assert "PENDING" in display.text() and "PENDING" in repr(table)
        table._repr_html_()
    finally:
        display.close()
        table.close()


def test_waiting_on_an_unknown_id_times_out_clearly(cluster):
    import asyncio

    with pytest.raises(TimeoutError, match="1 of 1 task"):
        asyncio.run(celerynb.wait(str(uuid.uuid4()), timeout=0.5))


# -- secrets: every credential form redis-py and kombu accept, with generated passwords -------------
def _printable(text: str) -> bool:
    return text.isprintable()


#: Any printable text, weighted towards what ends a URL part early: ``@ / : ? # % & ;`` and space.
PASSWORDS = st.text(
    alphabet=st.sampled_from("@/:?#%&;= +[]'\"\\") | st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")),
    min_size=4, max_size=24,
).filter(_printable)
URL_FORMS = [  # (template, how the password is written into it)
    ("redis://:{pw}@cache.example:6379/0", "raw"),
    ("redis://default:{pw}@cache.example:6379/0", "raw"),
    ("rediss://default:{pw}@cache.example:6380/0?ssl_cert_reqs=required", "raw"),
    ("amqp://guest:{pw}@rabbit.example:5672//", "raw"),
    ("sentinel://:{pw}@cache.example:26379;sentinel://:{pw}@cache2.example:26379", "raw"),
    ("redis://:{pw}@cache.example:6379/0", "escaped"),
    ("amqp://guest:{pw}@rabbit.example:5672/vhost", "escaped"),
    ("redis://cache.example:6379/0?username=me&password={pw}", "escaped"),
    ("redis://cache.example:6379/0?password={pw}&db=2", "escaped"),
    ("unix:///run/redis/redis.sock?db=2&password={pw}", "raw"),
    ("redis+socket:///run/redis/redis.sock?password={pw}", "escaped"),
]


def _url(template: str, written: str, password: str) -> tuple[str, str]:
    from urllib.parse import quote

    text = quote(password, safe="") if written == "escaped" else password
    return template.format(pw=text), text


def _visible_place(template: str) -> str:
    return "/run/redis/redis.sock" if "sock" in template else template.split("@")[-1].split("/")[0].split("?")[0]


@FUZZ
@given(password=PASSWORDS, form=st.sampled_from(URL_FORMS))
def test_mask_url_hides_generated_passwords_in_every_form(password, form):
    from hypothesis import assume

    from celerynb.config import mask_url

    template, written = form
    url, as_written = _url(template, written, password)
    rest = template.replace("{pw}", "")
    assume(password not in rest and as_written not in rest)
    masked = mask_url(url)
    assert password not in masked and as_written not in masked, masked
    assert _visible_place(template) in masked, masked  # where it points stays readable


@FUZZ
@given(password=PASSWORDS.filter(lambda p: not any(c.isspace() for c in p)), form=st.sampled_from(URL_FORMS),
       message=st.sampled_from(["Error 111 connecting to {url}. Connection refused.", "Cannot reach '{url}': timed out",
                                "consumer: Cannot connect to {url}: [Errno 104] reset.\nTrying again in 2 s...",
                                "(url={url}, retries=0)"]))
def test_mask_text_hides_generated_passwords_inside_messages(password, form, message):
    """In a text a URL ends at whitespace: passwords with raw whitespace are the next test's."""
    from hypothesis import assume

    from celerynb.config import mask_text

    template, written = form
    url, as_written = _url(template, written, password)
    rest = message.replace("{url}", template.replace("{pw}", ""))
    assume(password not in rest and as_written not in rest)
    masked = mask_text(message.format(url=url))
    assert password not in masked and as_written not in masked, masked
    assert _visible_place(template) in masked, masked


@FUZZ
@given(generated=PASSWORDS, where=st.integers(min_value=0), user=st.sampled_from(["", "default", "guest"]),
       scheme=st.sampled_from(["redis", "amqp"]))
def test_connect_errors_never_show_generated_passwords(generated, where, user, scheme):
    """The real error of a real connect: a closed port, or a URL refused before any I/O.

    A '§' somewhere in the password keeps it from being a word of the message itself.
    """
    from hypothesis import assume

    from celerynb.cluster.server import free_port
    from celerynb.config.reachability import BrokerUnreachable
    from celerynb.config.validation import InvalidURL

    where %= len(generated) + 1
    password = generated[:where] + "\u00a7" + generated[where:]
    port = free_port()
    path = "/0" if scheme == "redis" else "//"
    url = f"{scheme}://{user}:{password}@127.0.0.1:{port}{path}"
    assume(password not in url.replace(password, "", 1))
    before = celerynb.current()
    with pytest.raises((BrokerUnreachable, InvalidURL)) as info:
        celerynb.connect(url, workers=False)
    message = str(info.value)
    assert password not in message and "\n" not in message, message
    assert celerynb.current() is before
