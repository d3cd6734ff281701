"""How a widget reaches the screen: HTML with the circuitsvis JavaScript inlined, never fetched.

A :class:`Widget` holds JSON props for a circuitsvis component (or a plain HTML body) and renders
in Jupyter (``_repr_html_``, circuitsvis' ``local_src`` way: no CDN, no network probe) and in saved
pages (:func:`page` inlines the library once for all its widgets), so it shows with or without
internet and a saved page opens from disk.
"""

from __future__ import annotations

import functools
import html
import json
import uuid
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from lensprobe.errors import MissingDependencyError

__all__ = ["FONT", "Widget", "circuitsvis_js", "page", "script_json"]

FONT = "font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif;"


@functools.cache
def circuitsvis_js() -> str:
    r"""The circuitsvis browser bundle, ready to inline in a ``<script>`` element.

    ``</script`` inside the bundle is written ``<\/script`` (the same string for JavaScript,
    but no longer the end of the element), and the source-map comment is dropped so a browser
    never asks for a file next to the page.

    Raises:
        ImportError: circuitsvis is not installed.
    """
    try:
        bundle = resources.files("circuitsvis").joinpath("dist", "cdn", "iife.js")
        js = bundle.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise MissingDependencyError(
            "the widgets need circuitsvis (its bundled JavaScript): pip install 'lensprobe[viz]'"
        ) from err
    lines = [ln for ln in js.splitlines() if not ln.startswith("//# sourceMappingURL=")]
    return "\n".join(lines).replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")


def script_json(value: Any) -> str:
    """JSON for inside a ``<script>`` element: strict (no NaN) and with ``<`` escaped."""
    text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


class Widget:
    """A view with JSON props that renders in Jupyter (``_repr_html_``) and in saved pages.

    Attributes:
        kind: What the widget shows (``attention``, ``contributions``, ``top_examples``,
            ``entropy``).
        component: The circuitsvis React component, or ``None`` for a plain-HTML widget.
        props: The JSON-ready props (what the component, or the HTML, is built from).
        header: HTML shown above the view (title and the example's facts).
    """

    def __init__(
        self,
        kind: str,
        props: dict[str, Any],
        *,
        component: str | None = None,
        header: str = "",
        body: str = "",
    ) -> None:
        """Wrap props for a circuitsvis ``component``, or a plain HTML ``body``."""
        self.kind = kind
        self.component = component
        self.props = props
        self.header = header
        self._body = body

    def __repr__(self) -> str:
        what = self.component or "html"
        return f"Widget(kind={self.kind!r}, component={what!r}, props={sorted(self.props)})"

    def html(self, *, include_library: bool = True) -> str:
        """An HTML fragment; ``include_library=False`` when the page already loaded circuitsvis."""
        parts = [
            f'<div class="lensprobe-widget" data-widget="{self.kind}" style="{FONT} margin: 8px 0;">',
            self.header,
        ]
        if self.component is None:
            parts.append(self._body)
        else:
            uid = "lensprobe-" + uuid.uuid4().hex[:12]
            parts.append(
                f'<div id="{uid}" class="lensprobe-cv" data-component="{self.component}"></div>'
            )
            if include_library:
                parts.append(f"<script>{circuitsvis_js()}</script>")
            parts.append(
                f'<script>CircuitsVis.render("{uid}", CircuitsVis.{self.component}, '
                f"{script_json(self.props)});</script>"
            )
        parts.append("</div>")
        return "\n".join(parts)

    def _repr_html_(self) -> str:
        """Jupyter's HTML: the JavaScript is inlined, nothing is fetched."""
        return self.html(include_library=True)

    def __html__(self) -> str:
        """The same HTML, for tools that use the ``__html__`` protocol."""
        return self._repr_html_()

    def save(self, path: str | Path, *, title: str | None = None) -> Path:
        """Write a standalone HTML page holding this widget (opens offline)."""
        path = Path(path)
        path.write_text(page([self], title=title or f"lensprobe: {self.kind}"), encoding="utf-8")
        return path


def page(widgets: Sequence[Widget | str], *, title: str = "lensprobe", css: str = "") -> str:
    """A complete HTML page: circuitsvis inlined once, then the widgets (or raw HTML strings)."""
    body = "\n".join(w if isinstance(w, str) else w.html(include_library=False) for w in widgets)
    library = ""
    if any(isinstance(w, Widget) and w.component is not None for w in widgets):
        library = f"<script>{circuitsvis_js()}</script>"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{css}</style>\n{library}\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )
