"""The dashboard the query service serves at ``/``: experiments, and per experiment the
sections of its report (runs and accuracies, scores against layer and epoch, cross-seed
heatmaps, cluster galleries).

Pages are plain HTML with the figures inlined as SVG (drawn by the same code as
``stratalens report``, :func:`services.report.report_sections`), so they work
offline: no script, no CDN. A page is drawn once per version of the tables it
reads and then served from memory.
"""

from __future__ import annotations

import html
import threading
from collections import OrderedDict
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse

from services.api.deps import MAX_NAME_LENGTH, StoreDep
from services.api.settings import DASHBOARD_CACHE_ENTRIES
from services.plots import svg_image
from storage import EmbeddingStore, StoreError
from storage import queries as Q
from storage import schema as S

router = APIRouter(include_in_schema=False)

# Tables an experiment page reads: a new version of any of them draws the page again.
PAGE_TABLES = (S.RUNS, S.METRICS, S.PAIRS, S.CLUSTERINGS, S.SAMPLES)
# matplotlib's pyplot is not thread-safe, and the app answers requests in threads.
_DRAWING = threading.Lock()


class PageCache:
    """The last ``size`` pages drawn, keyed by experiment and table versions."""

    def __init__(self, size: int = DASHBOARD_CACHE_ENTRIES):
        self.size = size
        self._pages: OrderedDict[tuple, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> str | None:
        with self._lock:
            if key in self._pages:
                self._pages.move_to_end(key)
            return self._pages.get(key)

    def put(self, key: tuple, page: str) -> None:
        with self._lock:
            self._pages[key] = page
            while len(self._pages) > self.size:
                self._pages.popitem(last=False)


@router.get("/", response_class=HTMLResponse)
def home(store: StoreDep) -> HTMLResponse:
    """The experiments of the store, with links to their pages."""
    rows = []
    for experiment in Q.experiments(store):
        name = html.escape(experiment["name"])
        rows.append(
            f'<tr><td><a href="/experiments/{name}">{name}</a></td>'
            f"<td>{experiment['created_at']:%Y-%m-%d %H:%M}</td><td>{experiment['runs']}</td></tr>"
        )
    table = (
        "<table><tr><th>experiment</th><th>created</th><th>finished runs</th></tr>"
        + "".join(rows)
        + "</table>"
        if rows
        else "<p>The store holds no experiments yet: run <code>stratalens run SPEC</code>.</p>"
    )
    body = f"<h1>stratalens</h1><p>store <code>{html.escape(store.root)}</code></p>{table}"
    return HTMLResponse(_page("stratalens", body))


@router.get("/experiments/{name}", response_class=HTMLResponse)
def experiment_page(
    request: Request,
    store: StoreDep,
    name: Annotated[str, Path(max_length=MAX_NAME_LENGTH)],
) -> HTMLResponse:
    """One experiment: the sections of its report, figures inlined as SVG."""
    try:
        Q.check_experiment(store, name)
    except Q.NotFoundError as exc:
        return HTMLResponse(_page("not found", f"<p>{html.escape(str(exc))}</p>"), 404)
    cache: PageCache = _cache(request)
    key = (name, *(store.version(table) for table in PAGE_TABLES))
    page = cache.get(key)
    if page is None:
        page = _page(name, _experiment_body(store, name))
        cache.put(key, page)
    return HTMLResponse(page)


def _experiment_body(store: EmbeddingStore, name: str) -> str:
    from services.report import report_sections

    with _DRAWING:
        import matplotlib

        matplotlib.use("Agg")
        try:
            sections = report_sections(store, name, svg_image)
        except StoreError as exc:  # e.g. no finished runs yet
            sections = [f"<h1>{html.escape(name)}</h1><p>{html.escape(str(exc))}</p>"]
    api = f"/v1/experiments/{html.escape(name)}"
    links = (
        f'<p class="api">the rows behind this page: <a href="{api}/runs">runs</a>, '
        f'<a href="{api}/layers">layers</a>, <a href="{api}/metrics">metrics</a>, '
        f'<a href="{api}/pairs">pairs</a> (<a href="/docs">API</a>)</p>'
    )
    title = sections[0].replace("<h1>stratalens report: ", "<h1>stratalens: ", 1)
    return "\n".join([title, links, *sections[1:]])


def _cache(request: Request) -> PageCache:
    state = request.app.state
    if not hasattr(state, "dashboard_pages"):
        state.dashboard_pages = PageCache()
    return state.dashboard_pages


def _page(title: str, body: str) -> str:
    return _PAGE.format(title=html.escape(title), body=body)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>stratalens: {title}</title>
<link rel="icon" href="data:,">
<style>body{{font-family:sans-serif;margin:2em;max-width:1500px}}
nav{{margin-bottom:1em}} nav a{{margin-right:1em}}
img{{max-width:100%;margin:4px;vertical-align:top}}
img.thumb{{width:36px;height:36px;margin:1px;image-rendering:pixelated}}
div.cluster{{margin:2px 0}} div.cluster span{{display:inline-block;width:30em;font-size:90%}}
table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:2px 8px}} p.api{{font-size:90%;color:#555}}</style>
</head><body>
<nav><a href="/">experiments</a><a href="/docs">API</a></nav>
{body}
</body></html>
"""
