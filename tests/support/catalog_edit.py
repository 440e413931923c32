"""Making damaged or hostile copies of real catalogs (corruption and security tests)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

from pbkfs.codecs.crc import crc32c


def copy_catalog(src: Path, dest: Path) -> Path:
    """A private, writable copy of a catalog (real copies: no hard links into the fixtures)."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


def rewrite_content(backup_dir: Path, edit: Callable[[list[str]], list[str]]) -> None:
    """Edit backup_content.control line by line and record its new CRC in backup.control,
    so the damage reaches the parser instead of stopping at the content CRC."""
    content = backup_dir / "backup_content.control"
    lines = content.read_text().split("\n")
    data = "\n".join(edit(lines)).encode()
    content.write_bytes(data)
    set_control(backup_dir, "content-crc", str(crc32c(data)))


def set_control(backup_dir: Path, key: str, value: str) -> None:
    control = backup_dir / "backup.control"
    text = control.read_text()
    text, n = re.subn(rf"(?m)^{re.escape(key)} = .*$", f"{key} = {value}", text)
    if n == 0:
        text += f"{key} = {value}\n"
    control.write_text(text)


def first_stored_datafile(backup_dir: Path, min_headers: int = 1) -> tuple[str, dict[str, str]]:
    """(path, fields) of a datafile with at least `min_headers` stored pages."""
    for line in (backup_dir / "backup_content.control").read_text().splitlines():
        fields = dict(re.findall(r'"([^"]*)":"([^"]*)"', line))
        if fields.get("is_datafile") == "1" and int(fields.get("n_headers", "0")) >= min_headers:
            return fields["path"], fields
    raise AssertionError(f"no stored datafile in {backup_dir}")


# A symlink entry of backup_content.control (mode 0120777); fill in path and target.
LINK_LINE = ('{{"path":"{path}", "size":"0", "mode":"41471", "is_datafile":"0", "is_cfs":"0", '
             '"crc":"0", "compress_alg":"none", "external_dir_num":"0", "dbOid":"0", '
             '"linked":"{target}"}}')

# Link targets that leave the data directory, at the top and below base/.
LEAVING = [
    ("evil", "/etc"),
    ("evil", "../../../../etc"),
    ("base/evil", "../../outside"),
]


def store_with_entry(fixtures_dir: Path, dest: Path, line: str) -> Path:
    """A private copy of instance nochk whose FULL backup TP2KCQ also lists `line`."""
    (dest / "backups").mkdir(parents=True)
    (dest / "wal" / "nochk").mkdir(parents=True)
    shutil.copytree(fixtures_dir / "pg15" / "catalog" / "backups" / "nochk",
                    dest / "backups" / "nochk")

    def add(lines: list[str]) -> list[str]:
        body = [x for x in lines if x.strip()]
        return [*body, line, ""]

    rewrite_content(dest / "backups" / "nochk" / "TP2KCQ", add)
    return dest
