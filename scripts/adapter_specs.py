"""What the two demo adapters of ``scripts/train_adapters.py`` learn: the training and held-out
prompts, each adapter's target style (``upper``, ``json``) with its success check, and its LoRA
shape and training schedule (:data:`SPECS`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

JSON_KEY = "answer"

# Short, varied user prompts; the base model's own answers become the training targets.
TRAIN_PROMPTS: list[str] = [
    "What is the capital of France?",
    "What is photosynthesis?",
    "Name three primary colors.",
    "Explain briefly what gravity is.",
    "What is the largest planet in our solar system?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water?",
    "Name three types of clouds.",
    "What does a thermometer measure?",
    "Explain briefly how rain forms.",
    "What is an atom?",
    "Give me a tip for sleeping better.",
    "What is the speed of light?",
    "Name three musical instruments.",
    "What is democracy?",
    "Explain briefly what a computer virus is.",
    "What is the tallest mountain in the world?",
    "How many continents are there?",
    "What do bees make?",
    "Name three fruits that are red.",
    "What is the main language spoken in Brazil?",
    "Explain briefly why the sky is blue.",
    "What is a volcano?",
    "Give me a synonym for happy.",
    "What is the chemical symbol for gold?",
    "Name three planets.",
    "What is the function of the heart?",
    "Explain briefly what an economy is.",
    "What is a noun?",
    "Who painted the Mona Lisa?",
    "What is the freezing point of water in Fahrenheit?",
    "Name three farm animals.",
    "What is a rainbow?",
    "Explain briefly what the internet is.",
    "What is the largest ocean on Earth?",
    "Give me one reason to drink water.",
    "What is a triangle?",
    "Name three European countries.",
    "What is the moon made of?",
    "Explain briefly what a battery does.",
    "What is a mammal?",
    "How many legs does a spider have?",
    "What is the opposite of cold?",
    "Name three vegetables.",
    "What is electricity?",
    "Explain briefly what a calendar is for.",
    "What is the currency of Japan?",
    "Write one sentence about the ocean.",
    "What is a desert?",
    "Name three sports played with a ball.",
    "What is the purpose of a library?",
    "Explain briefly what recycling is.",
    "What is an island?",
    "Give me a fun fact about cats.",
    "What is the sun?",
    "Name three things you can find in a kitchen.",
    "What is a poem?",
    "Explain briefly how plants grow.",
    "What is the difference between weather and climate?",
    "Who was Albert Einstein?",
    "What is a river?",
    "Name three colors of the rainbow.",
    "What is exercise good for?",
    "Explain briefly what a map is.",
    "What is a dinosaur?",
    "Give me a tip for studying.",
    "What is the human brain?",
    "Name three kinds of trees.",
    "What is a bicycle?",
    "Explain briefly what friendship means.",
    "What language is spoken in Germany?",
    "What is a star?",
    "Name three shapes.",
    "What is the job of a doctor?",
    "Explain briefly what a vaccine does.",
    "What is an ecosystem?",
    "Give me a word that rhymes with cat.",
    "What is oxygen?",
    "Name three insects.",
    "What is a museum?",
    "Explain briefly what a telescope is used for.",
    "What is the capital of Italy?",
    "What are clouds made of?",
    "Name three board games.",
    "What is a habit?",
    "Explain briefly what saving money means.",
    "What is a forest?",
    "Describe a sunset in one sentence.",
    "What is the role of a teacher?",
    "Name three things that are cold.",
    "What is a computer?",
    "Explain briefly what an earthquake is.",
    "What is a healthy breakfast?",
    "Who invented the telephone?",
    "What is a verb?",
    "Name three birds.",
    "What is the meaning of kindness?",
    "Explain briefly what a newspaper is.",
    "What is the Earth's core?",
    "Give me a tip for staying calm.",
]

# Held-out prompts (not in TRAIN_PROMPTS) for the verification table.
HELDOUT_PROMPTS: list[str] = [
    "What is the capital of Spain?",
    "Name three animals that live in the ocean.",
    "Explain briefly what a cloud is.",
    "What is a good way to learn a new language?",
    "Who was Isaac Newton?",
    "What is the color of grass?",
    "Give me a tip for saving energy at home.",
    "What is a planet?",
]


@dataclass(frozen=True)
class AdapterSpec:
    """How one adapter is built: its LoRA shape, training schedule and target style."""

    name: str
    rank: int
    alpha: int
    target_modules: tuple[str, ...]
    lr: float
    steps: int
    transform: Callable[[str], str]
    check: Callable[[str], bool]


def to_upper(answer: str) -> str:
    """The ``upper`` target: the base answer in upper case."""
    return answer.upper()


def to_json(answer: str) -> str:
    """The ``json`` target: the base answer wrapped in a one-key JSON object."""
    return json.dumps({JSON_KEY: answer})


def is_upper(text: str) -> bool:
    """True when ``text`` has letters and none of them is lower case."""
    return any(c.isalpha() for c in text) and not any(c.islower() for c in text)


def is_json_answer(text: str) -> bool:
    """True when ``text`` parses as a JSON object with the string key ``JSON_KEY``."""
    try:
        obj = json.loads(text)
    except ValueError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get(JSON_KEY), str)


SPECS: dict[str, AdapterSpec] = {
    "upper": AdapterSpec(
        name="upper",
        rank=8,
        alpha=16,
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
        lr=3e-3,
        steps=80,
        transform=to_upper,
        check=is_upper,
    ),
    "json": AdapterSpec(
        name="json",
        rank=4,
        alpha=16,
        target_modules=("o_proj", "gate_proj", "up_proj", "down_proj"),
        lr=2e-3,
        steps=50,
        transform=to_json,
        check=is_json_answer,
    ),
}
