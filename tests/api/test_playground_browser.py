"""The playground page in a real browser (Playwright driving Debian's Chromium) against a real
keyed server on a tiny model whose every token decodes to ``<script>wN</script>``.

Skipped, with the reason, only where Chromium or Playwright is missing (.ci/run installs Chromium;
the dev extra, Playwright).
"""

from __future__ import annotations

import base64
import io
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playground_world import (
    ADAPTERS,
    ADMIN_KEY,
    INFERENCE_KEY,
    MAX_TOKENS,
    MODEL,
    PROMPT,
    browser,
    greedy_text,
    playground_root,
    playground_url,
)

__all__ = ["browser", "playground_root", "playground_url"]  # fixtures, used by name

TIMEOUT_MS = 60_000  # generous: a loaded 2-core machine renders slowly


class Page:
    """A fresh browser page on the playground, with every request URL and console message."""

    def __init__(self, browser: object, url: str) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})  # type: ignore[attr-defined]
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.urls: list[str] = []
        self.console: list[str] = []
        self.page.on("request", lambda request: self.urls.append(request.url))
        self.page.on("console", lambda message: self.console.append(message.text))
        self.page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))
        self.response = self.page.goto(url + "/")

    def use_key(self, key: str) -> None:
        self.page.fill("#key", key)
        self.page.click("#key-use")
        self.page.wait_for_selector("#key-state:has-text('key in use')")

    def run_compare(
        self, picks: tuple[str, ...], mode: str = "completion", mix: dict[str, float] | None = None
    ) -> dict[str, str]:
        """PROMPT, greedy, on the base model, ``picks`` and the ``mix`` weights: column -> text."""
        page = self.page
        page.select_option("#mode", mode)
        page.fill("#max-tokens", str(MAX_TOKENS))
        page.fill("#temperature", "0")
        page.fill("#prompt", PROMPT)
        for name in picks:
            page.check(f"#model-list .model[data-model='{name}'] .pick")
        for name, weight in (mix or {}).items():
            page.fill(f"#model-list .model[data-model='{name}'] .weight", str(weight))
        page.click("#run")
        page.wait_for_selector("#columns[data-state='done']")
        columns = page.locator("#columns .column").all()
        return {c.get_attribute("data-model"): c.locator(".out").text_content() for c in columns}

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser: object, playground_url: str) -> Iterator[Page]:
    opened = Page(browser, playground_url)
    yield opened
    opened.close()
    # A CSP violation or a script error is a bug of the page (failed fetches log 4xx lines).
    problems = [m for m in opened.console if "Content Security Policy" in m or "pageerror" in m]
    assert problems == []


def test_page_is_served_with_a_strict_csp(page: Page) -> None:
    headers = page.response.headers
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert page.page.title() == "loraplex playground"


def test_compare_streams_base_and_two_adapters_as_the_api_answers(
    page: Page, playground_url: str
) -> None:
    page.use_key(ADMIN_KEY)
    texts = page.run_compare(ADAPTERS)
    assert list(texts) == [MODEL, *ADAPTERS]
    expected = {name: greedy_text(playground_url, name) for name in texts}
    assert texts == expected
    assert len(set(texts.values())) == 3  # the adapters change the answer
    for stats in page.page.locator("#columns .stats").all_text_contents():
        assert re.search(r"TTFT [\d.,]+ ms", stats), stats
        assert re.search(r"[\d.,]+ tok/s", stats), stats
        assert re.search(rf"{MAX_TOKENS} tokens", stats), stats
    # The key went in a header, never in a URL.
    assert page.urls and not any(ADMIN_KEY in url for url in page.urls)


def test_chat_mode_and_a_weighted_mix_column_match_the_api(page: Page, playground_url: str) -> None:
    page.use_key(ADMIN_KEY)
    texts = page.run_compare((), mode="chat", mix={ADAPTERS[0]: 0.5, ADAPTERS[1]: 0.5})
    mix = [{"name": name, "weight": 0.5} for name in ADAPTERS]
    assert texts == {
        MODEL: greedy_text(playground_url, MODEL, chat=True),
        "mix: alpha×0.5 + beta×0.5": greedy_text(playground_url, MODEL, chat=True, adapters=mix),
    }
    assert texts[MODEL] != texts["mix: alpha×0.5 + beta×0.5"]


def test_model_output_with_script_tags_is_shown_as_text(page: Page) -> None:
    page.use_key(ADMIN_KEY)
    texts = page.run_compare(ADAPTERS[:1])
    assert all("<script>w" in text for text in texts.values()), texts
    assert page.page.locator("#columns script").count() == 0  # no element was made of it
    # Every script on the page is one of its own modules.
    sources = page.page.eval_on_selector_all("script", "nodes => nodes.map(n => n.src)")
    assert sources and all(src.endswith("/ui/js/app.js") for src in sources)


def test_upload_by_file_input_lists_it_then_delete_removes_it(
    page: Page, playground_root: Path
) -> None:
    page.use_key(ADMIN_KEY)
    p = page.page
    p.click("#tabs button[data-view='adapters']")
    p.wait_for_selector(f"tr[data-adapter='{ADAPTERS[0]}']")
    spare = playground_root / "spare"
    files = [spare / "adapter_config.json", spare / "adapter_model.safetensors"]
    p.set_input_files("#files", files)
    p.fill("#up-name", "uploaded")
    p.fill("#up-desc", "<b>not bold</b>")
    p.click("#upload")
    row = p.locator("tr[data-adapter='uploaded']")
    row.wait_for()
    assert "uploaded uploaded" in p.text_content("#up-msg")
    assert row.locator("td.num").all_text_contents() == ["4", "8"]  # rank, alpha
    assert row.locator("td.desc").text_content() == "<b>not bold</b>"
    assert row.locator("td.desc b").count() == 0
    # The compare view's model list follows.
    p.wait_for_selector("#model-list .model[data-model='uploaded']", state="attached")

    # The server's 4xx message, as it sent it: alpha is a public adapter's name.
    p.set_input_files("#files", files)
    p.fill("#up-name", ADAPTERS[0])
    p.click("#upload")
    p.wait_for_selector("#up-msg:has-text('409')")
    assert "a public adapter is named 'alpha'; pick another name" in p.text_content("#up-msg")

    p.once("dialog", lambda dialog: dialog.accept())
    row.locator("button.delete").click()
    row.wait_for(state="detached")
    assert "uploaded: deleted" in p.text_content("#action-msg")


def test_dropping_an_archive_on_the_page_uploads_it(
    page: Page, playground_root: Path, playground_url: str
) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            zipped.write(playground_root / "spare" / name, name)
    page.use_key(ADMIN_KEY)
    p = page.page
    p.click("#tabs button[data-view='adapters']")
    # What a drag and drop from the desktop delivers: a drop event carrying the file.
    p.evaluate(
        """([name, data]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "application/zip" }));
            const drop = new DragEvent("drop", { dataTransfer: transfer, cancelable: true });
            document.getElementById("drop").dispatchEvent(drop);
        }""",
        ["dropped.zip", base64.b64encode(archive.getvalue()).decode()],
    )
    assert p.input_value("#up-name") == "dropped"  # named after the archive
    p.click("#upload")
    p.locator("tr[data-adapter='dropped']").wait_for()
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    url = f"{playground_url}/v1/adapters/dropped"
    assert httpx.delete(url, headers=headers, timeout=30).status_code == 200


def test_admin_merges_and_unmerges(page: Page) -> None:
    page.use_key(ADMIN_KEY)
    p = page.page
    p.click("#tabs button[data-view='adapters']")
    row = p.locator(f"tr[data-adapter='{ADAPTERS[1]}']")
    row.locator("button.merge").click()
    row.locator(".where .badge.merged").wait_for()
    assert row.locator("button.merge").text_content() == "unmerge"
    row.locator("button.merge").click()
    row.locator(".where .badge.merged").wait_for(state="detached")


def test_inference_key_sees_the_403_and_no_upload(page: Page, playground_url: str) -> None:
    page.use_key(INFERENCE_KEY)
    p = page.page
    p.wait_for_selector(f"#model-list .model[data-model='{ADAPTERS[0]}']")  # may generate
    p.click("#tabs button[data-view='adapters']")
    p.wait_for_selector("#adapters-msg:has-text('403')")
    assert "An API key with role 'inference' may not manage adapters." in p.text_content(
        "#adapters-msg"
    )
    assert p.locator("#drop").is_hidden()
    assert p.locator("#adapter-table tbody tr").count() == 0


def test_without_a_key_the_page_is_read_only(page: Page) -> None:
    p = page.page
    p.wait_for_selector("#compare-msg:has-text('401')")
    assert "Invalid or missing API key" in p.text_content("#compare-msg")
    assert p.locator("#run").is_disabled()
    # /ready and /metrics are open: the server panel works without a key.
    p.wait_for_selector("#ready:has-text('ready')")
    p.wait_for_selector("#stats dt:has-text('KV cache')")
