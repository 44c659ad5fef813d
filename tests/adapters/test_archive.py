"""extract_archive on real zips and tar.gz files, good and hostile (made with zipfile/tarfile)."""

from __future__ import annotations

import io
import stat
import tarfile
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from loraplex.adapters.archive import _copy, extract_archive
from loraplex.adapters.errors import AdapterValidationError
from loraplex.adapters.folder_check import check_folder
from loraplex.adapters.rules import Limits

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
FILES = {CONFIG: b'{"peft_type": "LORA"}', WEIGHTS: b"\x00" * 100, "README.md": b"# hi"}
LIMITS = Limits()


def make_zip(path: Path, members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            z.writestr(name, data)
    return path


def tar_info(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, len(data) if kind == tarfile.REGTYPE else 0
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = "/etc/passwd"
    return info


def make_tgz(path: Path, members: list[tuple[str | tarfile.TarInfo, bytes]], **kw) -> Path:
    with tarfile.open(path, "w:gz", **kw) as t:
        for name, data in members:
            info = tar_info(name, data) if isinstance(name, str) else name
            t.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def files(prefix: str = "") -> list[tuple[str, bytes]]:
    return [(prefix + name, data) for name, data in FILES.items()]


def refused(archive: Path, dest: Path, message: str, limits: Limits = LIMITS) -> None:
    with pytest.raises(AdapterValidationError, match=message):
        extract_archive(archive, dest, limits)
    assert not dest.exists(), "a refused archive leaves nothing behind"


# ---- accepted layouts ----------------------------------------------------------------------


@pytest.mark.parametrize("maker", [make_zip, make_tgz])
@pytest.mark.parametrize("prefix", ["", "./", "my-adapter/", "./my-adapter/"])
def test_two_files_at_top_level_or_in_one_folder(tmp_path: Path, maker, prefix: str) -> None:
    members = [("other/notes.txt", b"x"), *files(prefix)] if prefix else files()
    archive = maker(tmp_path / "upload", members)
    extract_archive(archive, tmp_path / "out", LIMITS)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [CONFIG, WEIGHTS]
    assert (tmp_path / "out" / WEIGHTS).read_bytes() == FILES[WEIGHTS]


def test_format_is_detected_by_content_not_name(tmp_path: Path) -> None:
    extract_archive(make_zip(tmp_path / "a.tar.gz", files()), tmp_path / "z", LIMITS)
    extract_archive(make_tgz(tmp_path / "b.zip", files()), tmp_path / "t", LIMITS)
    assert (tmp_path / "z" / CONFIG).exists() and (tmp_path / "t" / CONFIG).exists()


def test_extracted_real_adapter_passes_validation(
    tmp_path: Path, tiny_model_dir: Path, tiny_adapters_dir: Path, tiny_adapter_name: str
) -> None:
    folder = tiny_adapters_dir / tiny_adapter_name
    members = [(f"x/{p.name}", p.read_bytes()) for p in folder.iterdir()]
    archive = make_tgz(tmp_path / "up.tgz", members)
    extract_archive(archive, tmp_path / "out", LIMITS)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    shapes = {
        n: (m.in_features, m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and n != "lm_head"
    }
    config = check_folder(tmp_path / "out", Limits(max_rank=8), "tiny-llama", shapes).config
    assert config.r == 4


# ---- hostile names and member types --------------------------------------------------------


@pytest.mark.parametrize("maker", [make_zip, make_tgz])
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("/etc/adapter_config.json", "absolute"),
        ("C:/adapter_config.json", "absolute"),
        ("../adapter_config.json", r"'\.\.'"),
        ("a/../../adapter_config.json", r"'\.\.'"),
        ("..\\adapter_config.json", "invalid name"),
    ],
)
def test_paths_leaving_the_destination_are_refused(tmp_path: Path, maker, name, message) -> None:
    refused(maker(tmp_path / "up", [*files(), (name, b"{}")]), tmp_path / "out", message)
    assert not (tmp_path / CONFIG).exists() and not (tmp_path.parent / CONFIG).exists()


@pytest.mark.parametrize(
    "kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE]
)
def test_tar_links_and_devices_are_refused(tmp_path: Path, kind: bytes) -> None:
    archive = make_tgz(tmp_path / "up", [(tar_info(CONFIG, kind=kind), b""), files()[1]])
    refused(archive, tmp_path / "out", "links, devices and special files")


def test_zip_symlink_is_refused(tmp_path: Path) -> None:
    link = zipfile.ZipInfo(CONFIG)
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    refused(make_zip(tmp_path / "up", [(link, b"/etc/passwd")]), tmp_path / "out", "links")


def test_encrypted_zip_member_is_refused(tmp_path: Path) -> None:
    """zipfile cannot write encrypted members: set the flag bit in both headers by hand."""
    data = bytearray(make_zip(tmp_path / "up", files()).read_bytes())
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        data[at + flag_at] |= 0x1
    (tmp_path / "up").write_bytes(data)
    refused(tmp_path / "up", tmp_path / "out", "encrypted")


@pytest.mark.parametrize("maker", [make_zip, make_tgz])
def test_more_than_16_members_are_refused(tmp_path: Path, maker) -> None:
    junk = [(f"junk{i}.txt", b"") for i in range(15)]
    refused(maker(tmp_path / "up", [*files(), *junk]), tmp_path / "out", "more than 16 members")


@pytest.mark.parametrize("maker", [make_zip, make_tgz])
def test_duplicate_members_are_refused(tmp_path: Path, maker) -> None:
    with warnings.catch_warnings():  # zipfile warns about the duplicate it writes
        warnings.simplefilter("ignore")
        archive = maker(tmp_path / "up", [*files(), (CONFIG, b"{}")])
    refused(archive, tmp_path / "out", "appears twice")


# ---- sizes (bombs) -------------------------------------------------------------------------


@pytest.mark.parametrize("maker", [make_zip, make_tgz])
def test_declared_member_size_is_limited(tmp_path: Path, maker) -> None:
    archive = maker(tmp_path / "up", [(CONFIG, b"{}"), (WEIGHTS, bytes(5000))])  # compresses well
    limits = Limits(max_file_bytes=1000)
    refused(archive, tmp_path / "out", "5000 bytes exceeds the limit of 1000", limits)


@pytest.mark.parametrize("maker", [make_zip, make_tgz])
def test_total_unpacked_size_is_limited(tmp_path: Path, maker) -> None:
    members = [(CONFIG, b"{}"), (WEIGHTS, bytes(900)), ("README.md", bytes(900))]
    limits = Limits(max_file_bytes=1000, max_body_bytes=1500)
    refused(maker(tmp_path / "up", members), tmp_path / "out", "more than 1500 bytes", limits)


def test_decompressed_tar_stream_is_bounded(tmp_path: Path) -> None:
    """A 100 kB pax header (read into memory by tarfile) counts against the limit too."""
    info = tar_info(CONFIG, b"{}")
    info.pax_headers = {"comment": "x" * 100_000}
    archive = make_tgz(tmp_path / "up", [(info, b"{}")], format=tarfile.PAX_FORMAT)
    limits = Limits(max_file_bytes=1000, max_body_bytes=10_000)
    refused(archive, tmp_path / "out", "more bytes than allowed", limits)


def test_bytes_are_counted_while_copying(tmp_path: Path) -> None:
    """A member that yields more than it declared is stopped at the declared size."""
    with pytest.raises(AdapterValidationError, match="larger than declared"):
        _copy(io.BytesIO(bytes(200)), tmp_path / "x", WEIGHTS, 100, LIMITS)


def test_archive_file_size_is_limited(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "up", files())
    refused(archive, tmp_path / "out", "archive is larger than 100", Limits(max_body_bytes=100))


# ---- layout and damage ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([*files("a/"), *files("b/")], "one top-level folder"),
        ([(CONFIG, b"{}"), (f"a/{WEIGHTS}", b"")], "has no adapter_model.safetensors"),
        ([(f"a/b/{CONFIG}", b"{}"), (f"a/b/{WEIGHTS}", b"")], "one top-level folder"),
        ([("README.md", b"")], "one top-level folder"),
    ],
)
def test_layout_rules(tmp_path: Path, members: list, message: str) -> None:
    refused(make_zip(tmp_path / "up", members), tmp_path / "out", message)


@pytest.mark.parametrize("maker", [make_zip, make_tgz])
def test_truncated_archives_are_refused(tmp_path: Path, maker) -> None:
    archive = maker(tmp_path / "up", [(CONFIG, b"{}"), (WEIGHTS, bytes(range(256)) * 40)])
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    refused(archive, tmp_path / "out", "damaged|end-of-central-directory")


def test_other_content_is_refused(tmp_path: Path) -> None:
    (tmp_path / "up").write_text("hello")
    refused(tmp_path / "up", tmp_path / "out", "neither a zip nor a tar.gz")


def test_existing_empty_destination_stays_empty_on_error(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(AdapterValidationError):
        archive = make_zip(tmp_path / "up", [*files("a/"), (f"b/{CONFIG}", b"")])
        extract_archive(archive, tmp_path / "out", LIMITS)
    assert list((tmp_path / "out").iterdir()) == []


def test_destination_must_be_empty(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    with pytest.raises(ValueError, match="must be empty"):
        extract_archive(make_zip(tmp_path / "up", files()), tmp_path / "out", LIMITS)
