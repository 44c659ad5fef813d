"""The least a chat template renders per message (``api/chat_template.py``), measured on the
tiny model's template and on one that refuses a role."""

from __future__ import annotations

from pathlib import Path

from loraplex.api.chat_template import message_overheads

REFUSES_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('no system messages') }}{% endif %}"
    "<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
)


def test_overheads_are_what_one_more_empty_message_adds(chat_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chat_model_dir)  # "{role}: {content}\n" each
    assert message_overheads(tokenizer) == {"user": 7, "assistant": 12, "system": 9}


def test_a_role_the_template_refuses_counts_nothing(chat_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chat_model_dir)
    tokenizer.chat_template = REFUSES_SYSTEM
    assert message_overheads(tokenizer) == {"user": 8, "assistant": 13, "system": 0}
