"""The playground's test world: a tiny random Llama whose every vocabulary entry is markup
(``<script>wN</script>``), so any text it generates is a would-be script injection; two
adapters on it; a keyed live server (an admin key and an inference key); and Debian's Chromium
driven by Playwright.

A real path through the server: the engine samples token ids and the tokenizer decodes them to
that markup, which the page must show as text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
from builders import model_config, save_adapter
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from loraplex.api_keys import ApiKeyEntry, key_digest
from loraplex.config import (
    CacheConfig,
    Config,
    LoRAConfig,
    ModelConfig,
    SchedulerConfig,
    ServerConfig,
)

CHROMIUM = "/usr/bin/chromium"
MODEL = "tiny-markup"
ADAPTERS = ("alpha", "beta")
ADMIN_KEY = "sk-playground-admin-01"
INFERENCE_KEY = "sk-playground-infer-01"
PROMPT = "hello world"
MAX_TOKENS = 6
VOCAB = 96  # builders.model_config's vocabulary size
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def markup_tokenizer() -> PreTrainedTokenizerFast:
    """Whitespace words; ``<unk>`` 0, ``<eos>`` 1, every other id ``<script>wN</script>``."""
    vocab = {"<unk>": 0, "<eos>": 1} | {f"<script>w{i}</script>": i for i in range(2, VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")


def save_markup_model(folder: Path) -> Path:
    """The random Llama of builders.model_config with the markup tokenizer. The output rows of
    ``<unk>`` and ``<eos>`` are zero: their logit 0 is below the largest of 94 random logits
    (all 94 negative has odds 2^-94), so greedy decoding never picks a token that decodes to
    nothing and every answer is visible markup."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config("llama"))
    with torch.no_grad():
        model.lm_head.weight[:2] = 0
    model.save_pretrained(folder)
    tokenizer = markup_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE  # so the page's chat mode runs too
    tokenizer.save_pretrained(folder)
    return folder


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} not found (apt-get install chromium; .ci/run does it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def playground_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model folder, a store with adapters alpha and beta, and a spare adapter (``spare``)
    for the upload test, in one temp folder."""
    root = tmp_path_factory.mktemp("playground")
    model = save_markup_model(root / MODEL)
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    for seed, name in enumerate(ADAPTERS, start=1):
        save_adapter(model, root / "store" / name, seed=seed, **lora)
    save_adapter(model, root / "spare", seed=9, **lora)
    return root


@pytest.fixture(scope="module")
def playground_url(server_factory: Callable[[Config], str], playground_root: Path) -> str:
    """A live keyed server for the markup model: ``ADMIN_KEY`` (admin) and ``INFERENCE_KEY``."""
    inference = ApiKeyEntry(key_digest(INFERENCE_KEY), "default", "inference")
    config = Config(
        model=ModelConfig(
            model=str(playground_root / MODEL), served_model_name=MODEL, max_model_len=256
        ),
        cache=CacheConfig(block_size=16, num_blocks=64),
        scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=256),
        lora=LoRAConfig(max_loras=2, max_lora_rank=8, adapters_dir=str(playground_root / "store")),
        server=ServerConfig(api_key=ADMIN_KEY, api_keys=(inference,)),
    )
    return server_factory(config)


def greedy_text(url: str, model: str, chat: bool = False, **extra: object) -> str:
    """What the API answers to PROMPT, greedy, as the page asks it (a raw completion, or a
    chat with one user message); ``extra``: more body fields (e.g. ``adapters``)."""
    body = {"model": model, "max_tokens": MAX_TOKENS, "temperature": 0, **extra}
    if chat:
        body["messages"] = [{"role": "user", "content": PROMPT}]
    else:
        body["prompt"] = PROMPT
    path = "/v1/chat/completions" if chat else "/v1/completions"
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    response = httpx.post(url + path, json=body, headers=headers, timeout=60)
    response.raise_for_status()
    choice = response.json()["choices"][0]
    return choice["message"]["content"] if chat else choice["text"]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium for the module (``--no-sandbox``: the tests run as root)."""
    reason = chromium_missing()
    if reason is not None:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()
