"""Screenshots of the playground for the README: the compare view (base model, ``upper``,
``json`` and a weighted mix, streamed side by side) and the adapters view, on the default model
and the demo adapters in ``adapters/``.

    .venv/bin/python scripts/playground_screenshots.py          # writes docs/playground-*.png

Needs Debian's Chromium (``apt-get install chromium``) and the ``playwright`` package (dev
extra). The server runs in this process on a free loopback port and stops at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from loraplex.api.app import create_app
from loraplex.api.threaded_server import ThreadedServer
from loraplex.config import Config, ModelConfig

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 720}


def compare(page, prompt: str, max_tokens: int) -> None:
    """Chat mode, greedy: base + upper + json, plus a 0.5/0.5 mix of the two."""
    page.fill("#prompt", prompt)
    page.fill("#max-tokens", str(max_tokens))
    for name in ("upper", "json"):
        row = f"#model-list .model[data-model='{name}']"
        page.check(f"{row} .pick")
        page.fill(f"{row} .weight", "0.5")
    page.click("#run")
    page.wait_for_selector("#columns[data-state='done']", timeout=300_000)
    page.wait_for_timeout(2500)  # one more metrics poll, so the panel shows the run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--prompt", default="What is the capital of France?")
    parser.add_argument("--max-tokens", type=int, default=40)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    config = Config()
    config = dataclasses.replace(config, model=ModelConfig(max_model_len=1024))
    lora = dataclasses.replace(config.lora, adapters_dir=str(ROOT / "adapters"))
    server = ThreadedServer(create_app(dataclasses.replace(config, lora=lora)))
    url = server.start(timeout=600)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport=VIEWPORT, color_scheme="light")
            page.goto(url + "/")
            page.wait_for_selector("#model-list .model[data-model='json']")
            compare(page, args.prompt, args.max_tokens)
            page.screenshot(path=args.out / "playground-compare.png")
            page.click("#tabs button[data-view='adapters']")
            page.wait_for_selector("tr[data-adapter='json']")
            page.wait_for_timeout(500)
            page.screenshot(path=args.out / "playground-adapters.png")
            browser.close()
    finally:
        server.stop()
    for name in ("compare", "adapters"):
        path = args.out / f"playground-{name}.png"
        shrink(path)
        print(f"{path}: {path.stat().st_size} bytes")


def shrink(path: Path) -> None:
    """A 256-colour palette: a third of the bytes, no visible change on a flat UI."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


if __name__ == "__main__":
    main()
