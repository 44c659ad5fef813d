"""copy_from_root: regular files copied, sub-folders kept by name, links refused, a size cap."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraplex.adapters.errors import AdapterPathError, AdapterValidationError
from loraplex.adapters.roots import check_path, copy_from_root


def test_copies_regular_files_and_refuses_the_rest(tmp_path: Path) -> None:
    root, dest = tmp_path / "root", tmp_path / "dest"
    folder = root / "a"
    (folder / "sub.bin").mkdir(parents=True)  # its name still reaches the folder check
    (folder / "adapter_config.json").write_text("{}")
    dest.mkdir()
    copy = copy_from_root(check_path(str(folder), [str(root)]), dest, max_bytes=10)
    assert sorted(p.name for p in copy.iterdir()) == ["adapter_config.json", "sub.bin"]
    assert (copy / "adapter_config.json").read_text() == "{}"

    (folder / "link").symlink_to(folder / "adapter_config.json")
    dest2 = tmp_path / "dest2"
    dest2.mkdir()
    with pytest.raises(AdapterPathError, match="symbolic link"):
        copy_from_root(folder, dest2, 10)
    (folder / "link").unlink()
    (folder / "big").write_bytes(b"x" * 11)
    (tmp_path / "dest3").mkdir()
    with pytest.raises(AdapterValidationError, match="--max-upload-mb"):
        copy_from_root(folder, tmp_path / "dest3", max_bytes=12)
    with pytest.raises(AdapterPathError, match="--adapter-roots"):
        check_path(str(tmp_path / "elsewhere"), [str(root)])
