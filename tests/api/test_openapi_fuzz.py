"""schemathesis over ``/openapi.json`` against a real server on the tiny model: every input the
schema calls valid is accepted (no 400 for it: the schema documents the real ranges, enums,
patterns and required fields, and the model's vocabulary and context) and nothing answers 5xx.
Bounded: a few examples per operation.

JSON Schema cannot state a rule across fields; those the schema's descriptions state instead
(:data:`CROSS_FIELD`) may answer 400, and nothing else may."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402  (from schemathesis)
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402
from transformers import AutoConfig  # noqa: E402

from loraplex.config import Config  # noqa: E402

EXAMPLES = 20  # per operation: about 40 s in all on a laptop CPU
CROSS_FIELD = (  # (message fragment of the 400, the rule its field descriptions state)
    ("exceeds the model's context length", "prompt tokens + max_tokens within the context"),
    ("sequences one request may queue", "prompts x n within --max-seqs-per-request"),
    ("model must be the base model", "adapters only with the base model as model"),
    ("top_logprobs requires logprobs=true", "top_logprobs needs logprobs"),
    ("give adapter_id or merged_adapters, not both", "one adapter choice"),
    ("weights; give one per id", "merged_adapters: one weight per id"),
    ("send either two file parts", "an upload: config and weights, or one archive"),
    ("a tool message needs tool_call_id", "role tool with its tool_call_id"),
    ("tool_choice needs tools", "tool_choice needs tools"),
    ("not among tools", "a named tool_choice names one of tools"),
    ("two tools are named", "tool names are unique"),
    ("--enable-auto-tool-choice", 'tools without tool_choice are "auto", which needs the option'),
    ("cannot be combined", "required/named tool_choice without another constraint"),
)


def cross_field_rule(response) -> str | None:
    """The documented rule a 400 enforces, if it is one of :data:`CROSS_FIELD`, or an upload's
    files that are not a PEFT LoRA of this model (the form's description says they must be)."""
    if response.status_code != 400:
        return None
    error = response.json()["error"]
    if error["code"] == "invalid_adapter":
        return "uploaded files are a PEFT LoRA of this base model"
    if error["code"] == "invalid_constraint":  # the constraint fields' descriptions say so
        return "a schema, regex or grammar that compiles, one per request, within the caps"
    return next((rule for fragment, rule in CROSS_FIELD if fragment in error["message"]), None)


def valid_data_accepted(ctx, response, case):
    """schemathesis's ``positive_data_acceptance``, except for the documented cross-field 400s."""
    if cross_field_rule(response) is not None:
        return None
    return positive_data_acceptance(ctx, response, case)


@pytest.fixture(scope="module")
def api_schema(
    server_factory: Callable[..., str],
    tiny_config: Config,
    tiny_adapters_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
):
    """The schema of a server with its own copy of the adapter store (fuzzed deletes and
    uploads must not touch the store other modules use)."""
    store = tmp_path_factory.mktemp("fuzz-store") / "adapters"
    shutil.copytree(tiny_adapters_dir, store)
    lora = dataclasses.replace(tiny_config.lora, adapters_dir=str(store))
    url = server_factory(dataclasses.replace(tiny_config, lora=lora))
    return schemathesis.openapi.from_url(f"{url}/openapi.json")


def test_schema_states_the_models_limits(api_schema, tiny_config: Config) -> None:
    components = api_schema.raw_schema["components"]["schemas"]
    prompt = json.dumps(components["CompletionRequest"]["properties"]["prompt"])
    vocab = AutoConfig.from_pretrained(tiny_config.model.model).vocab_size
    assert f'"maximum": {vocab - 1}' in prompt  # token ids: below the model's vocabulary
    context = tiny_config.model.max_model_len
    for component, prop in (
        ("CompletionRequest", "max_tokens"),
        ("ChatCompletionRequest", "max_completion_tokens"),
        ("GenerateParameters", "max_new_tokens"),
    ):
        assert components[component]["properties"][prop]["maximum"] == context - 1
    temperature = components["CompletionRequest"]["properties"]["temperature"]
    assert (temperature["minimum"], temperature["maximum"]) == (0, 2)


def operations() -> list[tuple[str, str]]:
    """(method, path) of every operation, read from an app's schema (building one is cheap)."""
    from loraplex.api.app import create_app

    paths = create_app(Config()).openapi()["paths"]
    return [(method.upper(), path) for path, item in paths.items() for method in item]


@pytest.mark.parametrize(("method", "path"), operations())
def test_valid_inputs_are_accepted_and_nothing_fails(api_schema, method: str, path: str) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
    )
    def check(case) -> None:
        case.call_and_validate(checks=[not_a_server_error, valid_data_accepted], timeout=60)

    check()
