"""The playground's routes over HTTP (no browser): the page and its files with a strict CSP on a
keyed server, revalidation, unknown and traversal paths, ``--no-ui``, the page's weight and
packaging, and a scan of its scripts for any way of turning text into HTML."""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from loraplex.api.routes import ui
from loraplex.config import Config

ROOT = Path(__file__).resolve().parents[2]
WEIGHT_BUDGET = 64 * 1024  # bytes; the whole page is hand-written HTML, CSS and JS modules


@pytest.fixture(scope="module")
def keyed_url(server_factory: Callable[[Config], str], tiny_config: Config) -> str:
    server = dataclasses.replace(tiny_config.server, api_key="sk-route-admin")
    return server_factory(dataclasses.replace(tiny_config, server=server))


def get(url: str, **headers: str) -> httpx.Response:
    return httpx.get(url, headers=headers, timeout=30)


def referenced(url: str) -> list[str]:
    """Every file the page loads: index.html's ui/ links, then each module's relative imports."""
    html = get(url + "/").text
    found = re.findall(r'(?:src|href)="(ui/[^"]+)"', html)
    queue = [p for p in found if p.endswith(".js")]
    while queue:
        path = queue.pop()
        folder = path.rsplit("/", 1)[0]
        for name in re.findall(r'from "\./([\w.]+\.js)"', get(f"{url}/{path}").text):
            if f"{folder}/{name}" not in found:
                found.append(f"{folder}/{name}")
                queue.append(f"{folder}/{name}")
    return found


def test_page_and_every_file_it_loads_carry_a_strict_csp(keyed_url: str) -> None:
    page = get(keyed_url + "/")  # no key: the page itself is open, the API behind it is not
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    files = referenced(keyed_url)
    assert {"ui/style.css", "ui/js/app.js", "ui/js/api.js", "ui/js/compare.js"} <= set(files)
    for response in [page, *(get(f"{keyed_url}/{path}") for path in files)]:
        assert response.status_code == 200, response.url
        assert response.headers["content-security-policy"] == ui.CSP
        assert response.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in ui.CSP and "unsafe" not in ui.CSP
    assert "<script>" not in page.text  # no inline script: the policy would block it anyway
    assert get(f"{keyed_url}/v1/models").status_code == 401


def test_an_unchanged_file_revalidates_as_304(keyed_url: str) -> None:
    first = get(keyed_url + "/ui/js/app.js")
    again = get(keyed_url + "/ui/js/app.js", **{"If-None-Match": first.headers["etag"]})
    assert (again.status_code, again.content) == (304, b"")
    assert again.headers["content-security-policy"] == ui.CSP


@pytest.mark.parametrize(
    "path",
    ["/ui/nope.js", "/ui/index.html", "/ui/../routes/ui.py", "/ui/%2e%2e/app.py", "/ui/js"],
)
def test_other_paths_are_a_404_in_openai_shape(keyed_url: str, path: str) -> None:
    response = get(keyed_url + path)
    assert response.status_code == 404
    assert response.json()["error"]["message"]


def test_the_page_is_not_part_of_the_api_schema(keyed_url: str) -> None:
    paths = get(keyed_url + "/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/ui") for p in paths)


def test_no_ui_serves_the_api_alone(
    server_factory: Callable[[Config], str], tiny_config: Config
) -> None:
    server = dataclasses.replace(tiny_config.server, ui=False)
    url = server_factory(dataclasses.replace(tiny_config, server=server))
    assert get(url + "/").status_code == 404
    assert get(url + "/ui/js/app.js").status_code == 404
    assert get(url + "/v1/models").status_code == 200


def test_the_page_weighs_under_its_budget() -> None:
    assets = ui.read_assets()
    weight = ui.page_weight(assets)
    assert 10_000 < weight < WEIGHT_BUDGET, weight
    assert ui.PAGE in assets


def test_every_static_file_ships_in_the_wheel() -> None:
    """pyproject's package-data globs for loraplex.api match every file the router serves."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["loraplex.api"]
    for name in ui.read_assets():
        assert any(fnmatch.fnmatch(f"static/{name}", g) for g in globs), name


def test_scripts_never_turn_text_into_html() -> None:
    """Model output and adapter descriptions are set as text: no HTML parser or code
    evaluation is reachable from the page's scripts."""
    forbidden = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|DOMParser|createContextualFragment"
        r"|\beval\(|new Function|setTimeout\(\s*[\"'`]|srcdoc|javascript:"
    )
    for path in sorted((ui.STATIC / "js").glob("*.js")):
        hits = forbidden.findall(path.read_text())
        assert hits == [], f"{path.name}: {hits}"
