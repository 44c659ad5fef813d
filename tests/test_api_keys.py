"""``--api-keys-file`` (and ``$LORAPLEX_API_KEYS_FILE``): keys -> frozen entries; every bad file is
a start-up error (exit 2) that names the file and the entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraplex import cli
from loraplex.api_keys import ApiKeyEntry, key_digest, load_api_keys_file
from loraplex.config import ServerConfig

HASHED = key_digest("sk-globex-1234")


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "keys.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_plain_and_hashed_keys_load_as_digests(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "keys": [
                {"key": "sk-acme-12345", "tenant": "acme", "role": "admin"},
                {"sha256": HASHED.upper(), "tenant": "globex", "role": "user"},
            ]
        },
    )
    entries = load_api_keys_file(path)
    assert entries == (
        ApiKeyEntry(key_digest("sk-acme-12345"), "acme", "admin"),
        ApiKeyEntry(HASHED, "globex", "user"),
    )
    assert "sk-acme-12345" not in repr(entries)  # only digests are kept


def test_flag_and_environment_reach_the_config(tmp_path: Path, monkeypatch) -> None:
    path = write(tmp_path, {"keys": [{"key": "sk-acme-12345", "tenant": "a", "role": "user"}]})
    parse = cli.build_parser().parse_args
    flagged = cli.build_config(parse(["serve", "--api-keys-file", str(path)]))
    assert [e.tenant for e in flagged.server.key_entries] == ["a"]
    monkeypatch.setenv(cli.KEYS_FILE_ENV, str(path))
    from_env = cli.build_config(parse(["serve", "--api-key", "sk-admin-xyz"]))
    assert [(e.tenant, e.role) for e in from_env.server.key_entries] == [
        ("a", "user"),
        ("default", "admin"),  # --api-key: one admin of tenant "default"
    ]


def test_api_key_cannot_repeat_a_file_key() -> None:
    entry = ApiKeyEntry(key_digest("sk-same-key"), "acme", "user")
    with pytest.raises(ValueError, match="--api-key is also a key of --api-keys-file"):
        ServerConfig(api_key="sk-same-key", api_keys=(entry,))


OK = {"key": "sk-acme-12345", "tenant": "acme", "role": "user"}
BAD_FILES = [
    ("missing file", None, "cannot read it"),
    ("not JSON", "{keys: [}", "not valid JSON"),
    ("no keys list", {"tokens": []}, 'needs {"keys": [...]}'),
    ("empty keys", {"keys": []}, 'needs {"keys": [...]}'),
    ("entry not an object", {"keys": ["sk-x"]}, "keys[0]: must be an object"),
    ("key and sha256", {"keys": [{**OK, "sha256": HASHED}]}, "keys[0]: needs exactly one"),
    ("neither key nor sha256", {"keys": [{"tenant": "a", "role": "user"}]}, "exactly one"),
    ("no tenant", {"keys": [{"key": "sk-12345678", "role": "user"}]}, "keys[0]: needs tenant"),
    ("unknown role", {"keys": [OK, {**OK, "key": "sk-other-1", "role": "root"}]}, "keys[1]: role"),
    ("bad tenant", {"keys": [{**OK, "tenant": "a/b"}]}, "keys[0]: tenant 'a/b'"),
    ("short key", {"keys": [{**OK, "key": "abc"}]}, "keys[0]: key must be"),
    (
        "bad digest",
        {"keys": [{"sha256": "12ab", "tenant": "a", "role": "user"}]},
        "keys[0]: sha256",
    ),
    ("unknown field", {"keys": [{**OK, "name": "x"}]}, "keys[0]: unknown fields ['name']"),
    ("same key twice", {"keys": [OK, {**OK, "tenant": "b"}]}, "keys[1]: the same key as keys[0]"),
    (
        "plain and hashed alike",
        {"keys": [OK, {"sha256": key_digest(OK["key"]), "tenant": "b", "role": "user"}]},
        "keys[1]: the same key as keys[0]",
    ),
]


@pytest.mark.parametrize(("case", "data", "message"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_key_files_are_startup_errors(
    tmp_path: Path, capsys, monkeypatch, case: str, data: object, message: str
) -> None:
    path = tmp_path / "absent.json" if data is None else write(tmp_path, data)
    served: list = []
    monkeypatch.setattr(cli, "serve", served.append)
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--api-keys-file", str(path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and served == []
    assert f"--api-keys-file '{path}'" in err and message in err, err
