"""Every display's HTML, rendered from the Jinja2 templates in ``templates/`` with autoescape.

Task names, arguments, results, exception messages and worker names are user data:
autoescaping makes them text whatever they contain, so no display escapes by hand (the
approach of dask/distributed's widgets). Line breaks in a template, with the indentation
after them, are only there for reading and are dropped on loading: the HTML comes out on one
line, as the stored notebook outputs that nbval compares have it. So never break a line where
a space matters (between attributes, inside text or a ``{{ }}``/``{% %}`` expression).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jinja2

from celerynb.rendering.theme import THEME

_LAYOUT = re.compile(r"\n[ \t]*")


class _OneLineLoader(jinja2.PackageLoader):
    """Loads ``templates/*.html.j2`` without their layout whitespace (line breaks + indentation)."""

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        source, filename, uptodate = super().get_source(environment, template)
        return _LAYOUT.sub("", source), filename, uptodate


environment = jinja2.Environment(
    loader=_OneLineLoader("celerynb.rendering", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,  # a misspelt name fails loudly instead of rendering nothing
)
environment.globals["theme"] = THEME


def render(name: str, **context: Any) -> str:
    """The HTML of ``templates/<name>.html.j2``; every value is escaped unless it is ``Markup``."""
    return environment.get_template(f"{name}.html.j2").render(**context)
