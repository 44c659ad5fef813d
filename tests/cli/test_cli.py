"""``loraplex serve`` parsing: flags -> frozen Config; bad values exit 2 with a message."""

from __future__ import annotations

import pytest

from loraplex import cli
from loraplex.config import BATCH_DEFAULTS, Config, LoRAConfig, StructuredConfig, batch_defaults

SERVE_OPTIONS = [
    "--model",
    "--served-model-name",
    "--dtype",
    "--device",
    "--max-model-len",
    "--quantization",
    "--block-size",
    "--kv-cache-memory-mb",
    "--num-blocks",
    "--max-num-seqs",
    "--max-num-batched-tokens",
    "--adapter-affinity",
    "--adapter-affinity-max-skips",
    "--max-loras",
    "--max-lora-rank",
    "--lora-dtype",
    "--max-cpu-loras",
    "--max-pinned-loras",
    "--adapters-dir",
    "--adapter-store",
    "--lora-modules",
    "--adapter-roots",
    "--merged-adapters",
    "--max-merged-adapters",
    "--allow-base-mismatch",
    "--max-upload-mb",
    "--max-adapters-per-tenant",
    "--max-adapter-mb-per-tenant",
    "--metrics-require-key",
    "--host",
    "--port",
    "--api-key",
    "--api-keys-file",
    "--log-level",
    "--timeout-keep-alive",
    "--header-timeout",
    "--body-timeout",
    "--body-min-rate",
    "--no-ui",
]


def _config(*argv: str) -> Config:
    return cli.build_config(cli.build_parser().parse_args(["serve", *argv]))


def test_defaults_match_config_defaults() -> None:
    assert _config() == Config()


def test_every_option_reaches_the_config(tmp_path) -> None:
    config = _config(
        "--model", str(tmp_path),
        "--served-model-name", "tiny",
        "--dtype", "bfloat16",
        "--device", "cuda",
        "--max-model-len", "1024",
        "--attention-backend", "triton",
        "--load-format", "dummy",
        "--enforce-eager",
        "--quantization", "bitsandbytes",
        "--lora-kernel", "triton",
        "--lora-dtype", "float16",
        "--block-size", "32",
        "--kv-cache-memory-mb", "64",
        "--num-blocks", "100",
        "--gpu-memory-utilization", "0.8",
        "--max-num-seqs", "8",
        "--max-num-batched-tokens", "256",
        "--adapter-affinity",
        "--adapter-affinity-max-skips", "3",
        "--max-loras", "4",
        "--max-lora-rank", "16",
        "--max-cpu-loras", "32",
        "--max-pinned-loras", "3",
        "--adapters-dir", "/srv/adapters",
        "--adapter-store", "s3://bucket/prefix",
        "--lora-modules", "a=/x/a", "b=/x/b",
        "--adapter-roots", "/srv/a", "/srv/b",
        "--merged-adapters", "a", "b",
        "--max-merged-adapters", "2",
        "--allow-base-mismatch",
        "--max-upload-mb", "64",
        "--max-adapters-per-tenant", "7",
        "--max-adapter-mb-per-tenant", "10",
        "--metrics-require-key",
        "--host", "0.0.0.0",
        "--port", "9000",
        "--api-key", "sekret",
        "--log-level", "debug",
        "--timeout-keep-alive", "2.5",
        "--header-timeout", "3",
        "--body-timeout", "4",
        "--body-min-rate", "1000",
        "--no-ui",
        "--structured-outputs-threads", "3",
        "--structured-outputs-timeout", "1.5",
        "--structured-outputs-max-bytes", "1000",
        "--structured-outputs-max-depth", "5",
        "--structured-outputs-cache-size", "7",
        "--structured-outputs-max-whitespace", "0",
        "--enable-auto-tool-choice",
        "--tool-call-parser", "mistral",
    )  # fmt: skip
    assert config.model.model == str(tmp_path)
    assert config.model.served_model_name == "tiny"
    assert config.model.dtype == "bfloat16"
    assert config.model.device == "cuda"
    assert config.model.max_model_len == 1024
    assert (config.model.attention_backend, config.model.load_format) == ("triton", "dummy")
    assert config.model.enforce_eager
    assert config.model.quantization == "bitsandbytes"
    assert config.lora.kernel == "triton"
    assert config.lora.lora_dtype == config.lora.table_dtype("bfloat16") == "float16"
    assert (config.cache.block_size, config.cache.kv_cache_memory_mb) == (32, 64)
    assert config.cache.num_blocks == 100
    assert config.cache.gpu_memory_utilization == 0.8
    assert config.scheduler.max_num_seqs == 8
    assert config.scheduler.max_num_batched_tokens == 256
    assert config.scheduler.adapter_affinity is True
    assert config.scheduler.adapter_affinity_max_skips == 3
    assert (config.lora.max_loras, config.lora.max_lora_rank) == (4, 16)
    assert config.lora.adapters_dir == "/srv/adapters"
    assert config.lora.lora_modules == (("a", "/x/a"), ("b", "/x/b"))
    assert config.lora.max_cpu_loras == 32
    assert config.lora.max_pinned_loras == config.lora.pinned_limit == 3
    assert config.lora.adapter_store == "s3://bucket/prefix"
    assert config.lora.store_location == "s3://bucket/prefix"
    assert config.lora.adapter_roots == ("/srv/a", "/srv/b")
    assert config.lora.merged_adapters == ("a", "b")
    assert config.lora.max_merged_adapters == 2
    assert config.lora.allow_base_mismatch is True
    assert config.lora.max_upload_mb == 64
    assert config.lora.max_adapters_per_tenant == 7
    assert config.lora.max_adapter_bytes_per_tenant == 10 * 2**20
    assert config.server.metrics_require_key is True
    assert (config.server.host, config.server.port) == ("0.0.0.0", 9000)
    assert config.server.api_key == "sekret"
    assert config.server.log_level == "debug"
    assert (config.server.timeout_keep_alive, config.server.header_timeout) == (2.5, 3.0)
    assert (config.server.body_timeout, config.server.body_min_rate) == (4.0, 1000)
    assert config.server.ui is False
    assert config.structured == StructuredConfig(3, 1.5, 1000, 5, 7, 0, True, "mistral")


def test_lora_dtype_auto_is_the_models() -> None:
    assert _config("--dtype", "bfloat16").lora.table_dtype("bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="--lora-dtype must be one of"):
        LoRAConfig(lora_dtype="int8")


def test_step_limits_default_to_the_devices() -> None:
    """--device cuda alone gets a GPU's batch sizes; a given flag wins on every device."""
    cpu, gpu = _config().scheduler, _config("--device", "cuda").scheduler
    assert (cpu.max_num_seqs, cpu.max_num_batched_tokens) == BATCH_DEFAULTS["cpu"] == (64, 512)
    assert (gpu.max_num_seqs, gpu.max_num_batched_tokens) == BATCH_DEFAULTS["cuda"]
    assert gpu.max_num_seqs > cpu.max_num_seqs and gpu.max_num_batched_tokens > 512
    second_gpu = _config("--device", "cuda:1").scheduler
    assert (second_gpu.max_num_seqs, second_gpu.max_num_batched_tokens) == (256, 8192)
    assert _config("--device", "mps").scheduler.max_num_seqs == 64
    given = _config("--device", "cuda", "--max-num-seqs", "32").scheduler
    assert (given.max_num_seqs, given.max_num_batched_tokens) == (32, 8192)
    given = _config("--max-num-batched-tokens", "2048").scheduler
    assert (given.max_num_seqs, given.max_num_batched_tokens) == (64, 2048)
    assert batch_defaults("cuda") == (256, 8192)


def test_help_and_start_log_show_the_step_limits(capsys, caplog) -> None:
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default: 256 on CUDA, 64 elsewhere" in help_text
    assert "default: 8192 on CUDA, 512 elsewhere" in help_text
    with caplog.at_level("INFO", logger="loraplex"):
        cli._log_step_limits(_config("--device", "cuda", "--max-num-seqs", "100"))
    message = caplog.records[-1].getMessage()
    assert message == "step limits on cuda: --max-num-seqs 100, --max-num-batched-tokens 8192"


def test_the_playground_is_on_unless_no_ui() -> None:
    assert _config().server.ui is True
    assert _config("--ui").server.ui is True
    assert _config("--no-ui").server.ui is False


def test_pins_default_to_half_the_slots() -> None:
    assert _config("--max-loras", "16").lora.pinned_limit == 8
    assert _config("--max-loras", "1").lora.pinned_limit == 0


def test_empty_adapters_dir_disables_the_store() -> None:
    assert _config("--adapters-dir", "").lora.adapters_dir is None


def test_help_documents_every_option(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in SERVE_OPTIONS:
        assert option in out, option
    # Every action has a help string (argparse prints none for a missing one).
    serve = cli.build_parser()._subparsers._group_actions[0].choices["serve"]
    assert all(action.help for action in serve._actions), "an option lacks help"


def test_top_level_help_lists_serve(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    assert "serve" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-model-len", "0"], "--max-model-len must be positive"),
        (["--block-size", "-1"], "--block-size must be positive"),
        (["--num-blocks", "0"], "--num-blocks must be positive"),
        (["--max-loras", "0"], "--max-loras must be positive"),
        (["--max-cpu-loras", "0"], "--max-cpu-loras must be positive"),
        (["--max-upload-mb", "0"], "--max-upload-mb must be positive"),
        (["--max-loras", "4", "--max-pinned-loras", "4"], "--max-pinned-loras must be in 0..3"),
        (["--max-pinned-loras", "-1"], "--max-pinned-loras must be in"),
        (["--header-timeout", "0"], "--header-timeout must be positive"),
        (["--body-timeout", "-1"], "--body-timeout must be positive"),
        (["--timeout-keep-alive", "0"], "--timeout-keep-alive must be positive"),
        (["--body-min-rate", "-5"], "--body-min-rate must be >= 0"),
        (["--max-merged-adapters", "-1"], "--max-merged-adapters must be >= 0"),
        (["--store-poll-s", "-1"], "--store-poll-s must be >= 0"),
        (["--adapter-affinity-max-skips", "-1"], "--adapter-affinity-max-skips must be >= 0"),
        (["--merged-adapters", "a", "b"], "--max-merged-adapters is 1"),
        (["--port", "70000"], "--port must be in 0..65535"),
        (["--model", "/definitely/not/here"], "is not a folder"),
        (["--dtype", "int8"], "invalid choice"),
        (["--lora-dtype", "float8"], "invalid choice"),
        (["--quantization", "awq"], "invalid choice"),
        (["--max-num-seqs", "lots"], "invalid int value"),
        (["--device", "cuda", "--max-num-seqs", "0"], "--max-num-seqs must be positive"),
        (["--max-num-batched-tokens", "-1"], "--max-num-batched-tokens must be positive"),
        (["--lora-modules", "no-equals-sign"], "expected name=path"),
        (["--lora-modules", "=path"], "expected name=path"),
        (["--log-level", "loud"], "invalid choice"),
        (["--enable-auto-tool-choice"], "--enable-auto-tool-choice needs --tool-call-parser"),
        (["--tool-call-parser", "xml"], "invalid choice"),
        (["--structured-outputs-timeout", "0"], "--structured-outputs-timeout must be positive"),
        (["--structured-outputs-max-whitespace", "-2"], "must be >= -1"),
        (["--no-such-flag"], "unrecognized arguments"),
    ],
)
def test_bad_values_exit_2_with_a_message(capsys, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "usage: loraplex" in err


def test_no_command_exits_2(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2
    assert "usage: loraplex" in capsys.readouterr().err


def test_main_serves_the_built_config(monkeypatch) -> None:
    served: list[Config] = []
    monkeypatch.setattr(cli, "serve", served.append)
    cli.main(["serve", "--port", "8123", "--api-key", "k"])
    assert [c.server.port for c in served] == [8123]
    assert served[0].server.api_key == "k"


def test_start_log_says_who_may_call(caplog) -> None:
    """Without keys the start-up log says every caller is an admin, and where it listens."""
    from loraplex.api_keys import ApiKeyEntry, key_digest
    from loraplex.config import ServerConfig

    with caplog.at_level("INFO", logger="loraplex"):
        cli._log_access(ServerConfig())
        cli._log_access(ServerConfig(host="0.0.0.0"))
        entries = (ApiKeyEntry(key_digest("sk-acme-0001"), "acme", "user"),)
        cli._log_access(ServerConfig(api_key="sk-ops-00001", api_keys=entries))
    open_loopback, open_wide, keyed = (r.getMessage() for r in caplog.records)
    assert "no API keys" in open_loopback and "loopback only" in open_loopback
    assert "0.0.0.0, reachable from other hosts" in open_wide
    assert keyed == "API keys: 2 keys of 2 tenants; all but /health, /ready, /metrics need one"
