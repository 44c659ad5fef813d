"""Every upload rule through HTTP, on a live server: each refusal is a 4xx with the OpenAI error
body and a message that names the problem, and leaves the registry, the store on disk and the
staging folder exactly as they were (nothing half-written)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import select
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
import torch
from adapter_files import (
    AdapterFiles,
    Env,
    assert_error,
    env_fixture,
    post,
    raw_safetensors,
    start_env,
    tar_bytes,
    upload,
    zip_bytes,
)

from loraplex.config import Config

F = AdapterFiles
Case = Callable[[F], F]


env = env_fixture("upload-validation", max_upload_mb=1)


def refused(env: Env, status: int, *words: str, **kwargs: object) -> dict:
    before = env.state()
    error = assert_error(upload(env.url, **kwargs), status, *words)  # type: ignore[arg-type]
    assert env.state() == before
    return error


def _dumps_with(files: F, tail: str) -> F:
    """The config's JSON text with ``tail`` spliced in before the closing brace."""
    text = json.dumps(json.loads(files.config))
    return dataclasses.replace(files, config=(text[:-1] + tail + "}").encode())


CONFIG_CASES: dict[str, tuple[Case, str]] = {
    "not-json": (lambda f: dataclasses.replace(f, config=b"{not json"), "not valid strict JSON"),
    "nan": (lambda f: _dumps_with(f, ', "lora_dropout": NaN'), "NaN is not allowed"),
    "duplicate-key": (lambda f: _dumps_with(f, ', "r": 8'), "duplicate key 'r'"),
    "peft-type": (lambda f: f.with_config(peft_type="PREFIX_TUNING"), "peft_type must be 'LORA'"),
    "r-zero": (lambda f: f.with_config(r=0), "r must be an integer in 1..8"),
    "r-over-max": (lambda f: f.with_config(r=16), "r must be an integer in 1..8"),
    "alpha-zero": (lambda f: f.with_config(lora_alpha=0), "lora_alpha must be a positive"),
    "alpha-negative": (lambda f: f.with_config(lora_alpha=-2), "lora_alpha must be a positive"),
    "bias": (lambda f: f.with_config(bias="all"), "bias='all' is not supported"),
    "dora": (lambda f: f.with_config(use_dora=True), "use_dora=True is not supported"),
    "modules-to-save": (lambda f: f.with_config(modules_to_save=["lm_head"]), "modules_to_save"),
    "target-parameters-string": (
        lambda f: f.with_config(target_parameters="mlp.experts.down_proj"),
        "target_parameters must be a list",
    ),
    "base-mismatch": (
        lambda f: f.with_config(base_model_name_or_path="meta-llama/Llama-2-7b-hf"),
        "--allow-base-mismatch",
    ),
}
WEIGHT_CASES: dict[str, tuple[Case, str]] = {
    "int-dtype": (
        lambda f: f.with_tensors(q_proj__lora_A__weight=torch.ones(4, 64, dtype=torch.int32)),
        "dtype 'I32'",
    ),
    "wrong-shape": (
        lambda f: f.with_tensors(q_proj__lora_A__weight=torch.randn(4, 32)),
        "lora_A has shape [4, 32], expected [4, 64]",
    ),
    "untargeted-module": (
        lambda f: f.with_tensors(
            k_proj__lora_A__weight=torch.randn(4, 64), k_proj__lora_B__weight=torch.randn(32, 4)
        ),
        "k_proj' is not in target_modules",
    ),
    "unknown-module": (
        lambda f: f.with_tensors(foo_proj__lora_A__weight=torch.randn(4, 64)),
        "is not a projection of the base model",
    ),
    "unserved-parameter": (  # PEFT can wrap any parameter; experts and routers are served
        lambda f: f.with_config(target_parameters=["rotary_emb.inv_freq"]).with_tensors(
            rotary_emb__lora_A__weight=torch.randn(4, 64),
            rotary_emb__lora_B__weight=torch.randn(8, 4),
        ),
        "nor a MoE expert tensor or router named by target_parameters",
    ),
    "nan-values": (
        lambda f: f.with_tensors(q_proj__lora_A__weight=torch.full((4, 64), float("nan"))),
        "NaN or infinite",
    ),
    "huge-header-length": (
        lambda f: dataclasses.replace(f, weights=raw_safetensors({}, length=1 << 40)),
        "header of 1099511627776 bytes exceeds the limit",
    ),
    "too-many-tensors": (
        lambda f: dataclasses.replace(
            f,
            weights=raw_safetensors(
                {
                    f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
                    for i in range(4097)
                },
            ),
        ),
        "holds 4097 tensors; the limit is 4096",
    ),
    "pickle-named-safetensors": (
        lambda f: dataclasses.replace(f, weights=b"PK\x03\x04" + b"\x80\x02}q\x00." * 8),
        "header of",
    ),
}


@pytest.mark.parametrize("case", CONFIG_CASES, ids=str)
def test_config_rules(env: Env, case: str) -> None:
    change, words = CONFIG_CASES[case]
    refused(env, 400, words, name=f"cfg-{case}", files=change(env.files))


@pytest.mark.parametrize("case", WEIGHT_CASES, ids=str)
def test_weights_rules(env: Env, case: str) -> None:
    change, words = WEIGHT_CASES[case]
    error = refused(env, 400, words, name=f"w-{case}", files=change(env.files))
    assert error["code"] == "invalid_adapter"


@pytest.mark.parametrize(
    "name", ["../x", "a/b/c", "a@b", "/b", "a\\b", ".hidden", "", "x" * 65, "a b", "-a"]
)
def test_names_that_could_form_paths_are_refused(env: Env, name: str) -> None:
    refused(env, 400, "invalid adapter name", name=name, files=env.files)


@pytest.mark.parametrize("filename", ["adapter_model.bin", "model.pt", "weights.pkl", "x.py"])
def test_pickled_weights_are_refused_by_name(env: Env, filename: str) -> None:
    weights = b"\x80\x02}q\x00."  # a pickle: never opened
    files = dataclasses.replace(env.files, weights=weights)
    refused(env, 400, "only safetensors", name="pickled", files=files, weights_name=filename)


@pytest.mark.parametrize(
    ("members", "words"),
    [
        (lambda f: {"../adapter_config.json": f.config, "x": f.weights}, "'..' is not allowed"),
        (lambda f: {"/abs/adapter_config.json": f.config, "x": f.weights}, "absolute paths"),
        (lambda f: {"adapter_config.json": f.config}, "no adapter_model.safetensors"),
        (lambda f: f.with_config(r=0).members(), "r must be an integer"),
        (lambda f: f.members("a") | {"b/adapter_config.json": f.config}, "one top-level"),
    ],
    ids=["dotdot", "absolute", "missing-weights", "bad-config-inside", "two-folders"],
)
@pytest.mark.parametrize("pack", [zip_bytes, tar_bytes], ids=["zip", "tar.gz"])
def test_archive_rules(env: Env, pack: Callable, members: Callable, words: str) -> None:
    refused(env, 400, words, name="bad-archive", archive=pack(members(env.files)))


@pytest.mark.parametrize("pack", [zip_bytes, tar_bytes], ids=["zip", "tar.gz"])
def test_archive_with_symlink_is_refused(env: Env, pack: Callable) -> None:
    archive = pack(env.files.members(), symlinks={"evil": "/etc/passwd"})
    refused(env, 400, "links", name="linked", archive=archive)


@pytest.mark.parametrize("extra", ["extra.bin", "model.pt", "setup.py", "sub/loader.pkl"])
@pytest.mark.parametrize("pack", [zip_bytes, tar_bytes], ids=["zip", "tar.gz"])
def test_archive_with_pickle_or_code_is_refused(env: Env, pack: Callable, extra: str) -> None:
    archive = pack(env.files.members() | {extra: b"\x80\x02}q\x00."})
    name = f"pickled-{pack.__name__}-{extra.replace('/', '-')}"
    refused(env, 400, "only safetensors", name=name, archive=archive)


def test_not_an_archive(env: Env) -> None:
    refused(env, 400, "neither a zip nor a tar.gz", name="junk", archive=b"hello world")


def test_form_shape_rules(env: Env) -> None:
    refused(env, 400, "name field", name=None, files=env.files)
    cfg_only = dataclasses.replace(env.files, weights=b"")
    before = env.state()
    response = post(env.url, "/v1/adapters", data={"name": "x"}, files={"config": ("c", b"{}")})
    assert_error(response, 400, "either two file parts")
    refused(env, 400, "either two file parts", name="both", files=cfg_only, archive=b"PK")
    refused(env, 400, "must be true or false", name="flag", files=env.files, pinned="maybe")
    response = post(env.url, "/v1/adapters", json={"name": "x"})
    assert_error(response, 400, "multipart/form-data")
    response = post(env.url, "/v1/adapters", data={"name": "x"}, files={"model.bin": ("m", b"")})
    assert_error(response, 400, "unexpected form part 'model.bin'")
    twice = [("weights", ("a.safetensors", b"")), ("weights", ("b.safetensors", b""))]
    response = post(env.url, "/v1/adapters", data={"name": "x"}, files=twice)
    assert_error(response, 400, "'weights' appears twice")
    assert env.state() == before


def test_allow_base_mismatch_accepts_another_base(
    server_factory: Callable[[Config], str], tiny_config: Config, tiny_adapters_dir, tmp_path
) -> None:
    lenient = start_env(
        server_factory, tiny_config, tiny_adapters_dir, tmp_path, allow_base_mismatch=True
    )
    files = lenient.files.with_config(base_model_name_or_path="meta-llama/Llama-2-7b-hf")
    response = upload(lenient.url, "other-base", files=files)
    assert response.status_code == 201, response.text
    assert (lenient.store / "other-base").is_dir()


# ---- size caps, enforced while the body streams ----------------------------------------------


def test_oversized_parts_are_413(env: Env) -> None:
    big_config = env.files.with_config(padding="x" * 70_000)
    error = refused(env, 413, "'config' exceeds the limit of 65536", name="big", files=big_config)
    assert error["code"] == "request_too_large"
    refused(env, 413, "'description' exceeds", name="d", files=env.files, description="x" * 5000)


def _raw_request(env: Env, headers: str) -> socket.socket:
    host = urlsplit(env.url)
    sock = socket.create_connection((host.hostname, host.port), timeout=30)
    sock.sendall(
        f"POST /v1/adapters HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: multipart/form-data; boundary=B\r\n{headers}\r\n".encode()
    )
    return sock


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_content_length_over_the_cap_is_413_before_any_byte_is_read(env: Env) -> None:
    before = env.state()
    with _raw_request(env, f"Content-Length: {10 << 30}\r\n") as sock:
        response = _read_response(sock)  # the server closes: it never waits for the body
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), response
    assert b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == "request_too_large" and "exceeds the limit" in error["message"]
    assert env.state() == before


def test_streamed_body_is_cut_off_at_the_cap(env: Env) -> None:
    """No Content-Length: the server counts bytes as they arrive and stops reading at the cap
    (1 MiB), even though this client would send 256 MiB."""
    before = env.state()
    part = b'--B\r\nContent-Disposition: form-data; name="archive"; filename="a.zip"\r\n\r\n'
    chunk = b"\0" * 65536
    sent, response = 0, b""
    with _raw_request(env, "Transfer-Encoding: chunked\r\n") as sock:
        sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        deadline = time.monotonic() + 60
        while sent < 256 << 20 and time.monotonic() < deadline:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer is in
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:  # the server closed the connection: cut off
                break
            sent += len(chunk)
        with contextlib.suppress(OSError):  # a reset may swallow the answer; the cut-off matters
            response = _read_response(sock)
    assert sent < 64 << 20, "the server kept reading past the cap"
    if response:
        assert response.startswith(b"HTTP/1.1 413 "), response[:200]
    assert env.state() == before
