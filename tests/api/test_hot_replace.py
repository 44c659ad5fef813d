"""Hot replace through a real server (issue 25): one adapter is replaced in a loop, by an upload
with ``replace=true`` or by vLLM's ``load_lora_adapter`` with ``load_inplace``, while clients
stream from it and other clients keep the host tier churning (``--max-cpu-loras 2``). No request
may fail, and each response's text must be the text one of the versions gives alone.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

import openai
import pytest
from adapter_files import AdapterFiles, Env, post, start_env, upload
from completion_helpers import PROMPT

from loraplex.adapters.card import adapter_key
from loraplex.config import Config
from loraplex.engine.async_engine import AsyncEngine

SETTINGS = {  # name -> (--max-loras, --max-cpu-loras)
    "tight": (2, 2),
    "roomy": (8, 16),
}
VERSIONS = 3  # the replaced adapter cycles through these
CLIENTS = 4  # streaming from the replaced adapter
RACE_S = 5.0
REPLACE_EVERY_S = 0.1
GREEDY = {"temperature": 0.0, "max_tokens": 3, "extra_body": {"ignore_eos": True}}


@dataclass(frozen=True)
class Race:
    env: Env
    engine: AsyncEngine  # the server's, to check what is left once the race is over
    client: openai.OpenAI
    texts: list[str]  # version i's greedy text, asked of the reference adapter ref{i}
    folders: list[Path]  # version i's files under --adapter-roots (for load_lora_adapter)


@pytest.fixture(scope="module")
def servers(
    server_factory: Callable[..., str],
    tiny_config: Config,
    tiny_adapters_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Race]]:
    """One server per setting (started lazily), each with VERSIONS reference adapters."""
    started: dict[str, Race] = {}

    class Lazy(dict):
        def __missing__(self, name: str) -> Race:
            loras, cpu = SETTINGS[name]
            root = tmp_path_factory.mktemp(f"race-{name}")
            engines: list[AsyncEngine] = []

            def start(config: Config) -> str:
                engines.append(AsyncEngine.from_config(config))
                return server_factory(config, engines[0])

            env = start_env(
                start, tiny_config, tiny_adapters_dir, root, max_loras=loras, max_cpu_loras=cpu
            )
            started[name] = self[name] = prepare(env, engines[0])
            return self[name]

    yield Lazy()


def prepare(env: Env, engine: AsyncEngine) -> Race:
    """VERSIONS versions told apart by their text (random weights of a random model may agree
    on a short text: a seed that repeats one is skipped), each uploaded as ref{i} and written
    under --adapter-roots; then x is version 0."""
    client = openai.OpenAI(base_url=f"{env.url}/v1", api_key="x", max_retries=0, timeout=60)
    versions: list[AdapterFiles] = []
    texts: list[str] = []
    for seed in range(100, 120):
        files = env.files.perturbed(seed)
        name = f"ref{len(versions)}"
        assert upload(env.url, name, files=files, replace="true").status_code == 201
        text = stream_text(client, name)
        if text not in texts:
            versions.append(files)
            texts.append(text)
        if len(versions) == VERSIONS:
            break
    assert len(versions) == VERSIONS, texts
    folders = []
    for i, files in enumerate(versions):
        folder = env.roots / f"v{i}"
        folder.mkdir()
        for member, data in files.members().items():
            (folder / member).write_bytes(data)
        folders.append(folder)
    assert upload(env.url, "x", files=versions[0]).status_code == 201
    return Race(env, engine, client, texts, folders)


def stream_text(client: openai.OpenAI, model: str) -> str:
    stream = client.completions.create(model=model, prompt=PROMPT, stream=True, **GREEDY)
    return "".join(chunk.choices[0].text for chunk in stream if chunk.choices)


def read(folder: Path) -> AdapterFiles:
    return AdapterFiles.read(folder)


def replace(race: Race, version: int, mode: str) -> int:
    if mode == "upload":
        files = read(race.folders[version])
        return upload(race.env.url, "x", files=files, replace="true").status_code
    body = {"lora_name": "x", "lora_path": str(race.folders[version]), "load_inplace": True}
    return post(race.env.url, "/v1/load_lora_adapter", json=body).status_code


def run_race(race: Race, mode: str) -> tuple[dict[str, Counter[str]], Counter[str], list[int]]:
    """(model -> texts seen, failures by message, replace statuses) over RACE_S seconds."""
    stop = threading.Event()
    texts: dict[str, Counter[str]] = {}
    failures: Counter[str] = Counter()
    statuses: list[int] = []
    lock = threading.Lock()

    def replacer() -> None:
        version = 0
        while not stop.is_set():
            version = (version + 1) % VERSIONS
            statuses.append(replace(race, version, mode))
            # A request that arrives once the call returned runs on the new version.
            text = stream_text(race.client, "x")
            if text != race.texts[version]:
                with lock:
                    failures[f"after replace {version}: {text!r}"] += 1
            time.sleep(REPLACE_EVERY_S)

    def streamer(model: str) -> None:
        while not stop.is_set():
            try:
                text = stream_text(race.client, model)
            except Exception as exc:  # counted: the race must produce none
                with lock:
                    failures[f"{model}: {type(exc).__name__}: {exc}"[:160]] += 1
            else:
                with lock:
                    texts.setdefault(model, Counter())[text] += 1

    # The pressure: two more adapters in use than host memory holds at the tight setting.
    others = ["ref0", "ref1", "tiny-a"]
    with ThreadPoolExecutor(CLIENTS + len(others) + 1) as pool:
        jobs = [pool.submit(streamer, "x") for _ in range(CLIENTS)]
        jobs += [pool.submit(streamer, name) for name in others]
        jobs.append(pool.submit(replacer))
        time.sleep(RACE_S)
        stop.set()
        for job in jobs:
            job.result()
    return texts, failures, statuses


@pytest.mark.parametrize("mode", ["upload", "inplace"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_replaced_adapter_never_fails_a_request(
    servers: dict[str, Race], setting: str, mode: str
) -> None:
    race = servers[setting]
    texts, failures, statuses = run_race(race, mode)
    on_x = texts.get("x", Counter())
    served, failed = sum(on_x.values()), sum(failures.values())
    print(
        f"{setting} {mode}: {len(statuses)} replaces, {served} served on x, {failed} failed "
        f"{dict(failures)}"
    )
    assert set(statuses) <= {200, 201}, statuses
    assert len(statuses) >= 5 and served >= 10
    assert failed == 0, failures
    assert set(on_x) <= set(race.texts), (on_x, race.texts)  # each is one version's text
    for i in range(2):  # the pressure clients got their own text
        assert set(texts.get(f"ref{i}", ())) <= {race.texts[i]}
    assert_nothing_left(race)


def assert_nothing_left(race: Race) -> None:
    """Once every request ended, no version is held, the replaced ones are forgotten and
    only the current version of x may be in a device slot."""
    engine = race.engine
    deadline = time.monotonic() + 10
    while engine.num_in_flight:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    registry = engine.engine.registry
    current = registry.get("x").key
    keys = [adapter_key("x", sha256(f.weights).hexdigest()) for f in map(read, race.folders)]
    assert current in keys
    assert not any(registry.host.held(key) for key in keys)
    assert all(registry.is_retired(key) for key in keys if key != current)
    device = engine.engine.tiers.slots.resident()
    assert [key for key in keys if key in device] in ([], [current])
