"""Arbitrary bytes fed to every parser and decoder raise only the project's own errors."""

from __future__ import annotations

import zlib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbkfs.catalog.content import FileEntry, parse_content, parse_line
from pbkfs.catalog.headermap import HEADER2, _index_from_records, read_region
from pbkfs.catalog.keyvalue import parse_keyvalue
from pbkfs.codecs import decode_page
from pbkfs.errors import PbkfsError

W = Path("fuzz/backup_content.control")
FIELDS = ["path", "size", "mode", "is_datafile", "crc", "n_blocks", "n_headers", "hdr_off",
          "hdr_size", "segno", "compress_alg", "full_size", "external_dir_num"]


def entry(**kw: object) -> FileEntry:
    base: dict[str, object] = dict(
        path="base/1/1", size=100, mode=0o100600, is_datafile=True, is_cfs=False, crc=0,
        compress_alg="zlib", external_dir_num=0, db_oid=1, segno=0, n_blocks=1, full_size=None,
        n_headers=1, hdr_crc=0, hdr_off=0, hdr_size=10, linked=None)
    base.update(kw)
    return FileEntry(**base)  # type: ignore[arg-type]


@given(st.binary(max_size=400))
def test_content_bytes(data: bytes) -> None:
    try:
        parse_content(data, W)
    except PbkfsError:
        pass


@given(st.lists(st.tuples(st.sampled_from(FIELDS), st.text(max_size=12)), max_size=14))
def test_content_lines_of_plausible_shape(pairs: list[tuple[str, str]]) -> None:
    line = "{" + ", ".join(f'"{k}":"{v}"' for k, v in pairs) + "}"
    try:
        parse_line(line, W, 1)
    except PbkfsError:
        pass


@given(st.text(max_size=300))
def test_keyvalue_text(text: str) -> None:
    try:
        parse_keyvalue(text, "fuzz.conf")
    except PbkfsError:
        pass


@given(st.sampled_from(["none", "zlib", "pglz", "lz4", "zstd"]), st.binary(max_size=9000))
def test_page_decoders(alg: str, payload: bytes) -> None:
    try:
        page = decode_page(alg, payload, 8192)
    except PbkfsError:
        return
    assert len(page) == 8192


@given(st.binary(max_size=200), st.integers(0, 5), st.integers(-5, 3000))
def test_header_map_records(raw: bytes, n_headers: int, size: int) -> None:
    try:
        _index_from_records(raw[: (n_headers + 1) * HEADER2.size] if len(raw) >= (
            n_headers + 1) * HEADER2.size else raw + bytes((n_headers + 1) * HEADER2.size
                                                            - len(raw)),
                            entry(n_headers=n_headers, size=size), "fuzz", 8192)
    except PbkfsError:
        pass


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=50)
@given(blob=st.binary(max_size=300), compress=st.booleans())
def test_header_map_regions(tmp_path: Path, blob: bytes, compress: bool) -> None:
    data = zlib.compress(blob, 1) if compress else blob
    path = tmp_path / "page_header_map"
    path.write_bytes(data)
    try:
        read_region(path, entry(hdr_size=len(data), n_headers=max(0, len(blob) // 24 - 1)), 8192)
    except PbkfsError:
        pass
