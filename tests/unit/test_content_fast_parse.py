"""backup_content.control is parsed at JSON speed when it can be: for any input, the
result (entries, or the error and its message) is the line-by-line reference parse's."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pbkfs.catalog.content import FileEntry, parse_by_line, parse_content
from pbkfs.errors import PbkfsError

W = Path("fuzz/backup_content.control")
KEYS = ["path", "size", "mode", "is_datafile", "is_cfs", "crc", "compress_alg",
        "external_dir_num", "dbOid", "segno", "n_blocks", "full_size", "n_headers",
        "hdr_crc", "hdr_off", "hdr_size", "linked"]
VALUES = st.one_of(
    st.sampled_from(["0", "1", "33152", "16877", "41471", "8192", "-1", "zlib", "none",
                     "base/1/1", "base/1/2", "global/pg_control", "pg_tblspc/16384",
                     "12.0", "1e3", " 5", "+5", "1_0", "007", "", "a\\b", "x\ty"]),
    st.text(alphabet=st.characters(blacklist_characters='"\n', codec="utf-8"),
            max_size=8),
)
PAIR = st.tuples(st.sampled_from(KEYS), VALUES)
SEPARATORS = st.sampled_from([":", ":", ":", " :", ": "])


@st.composite
def lines(draw: st.DrawFn) -> str:
    pairs = draw(st.lists(PAIR, max_size=10))
    if draw(st.booleans()):  # mostly lines that parse: a path and a regular file
        pairs = [("path", draw(st.sampled_from(["base/1/1", "base/1/2", "PG_VERSION"]))),
                 ("size", "10"), ("mode", "33152")] + pairs[:3]
    sep = draw(SEPARATORS)
    body = ", ".join(f'"{k}"{sep}"{v}"' for k, v in pairs)
    return draw(st.sampled_from(["{%s}", "{ %s }", "{%s},", "%s", "{%s}{}", "  {%s}"])) % body


def outcome(parse: object, data: bytes) -> tuple[str, object]:
    try:
        return "ok", parse(data, W)  # type: ignore[operator]
    except PbkfsError as exc:
        return type(exc).__name__, str(exc)


@settings(max_examples=400)
@given(st.lists(lines(), max_size=6), st.sampled_from(["\n", "\n\n", "\r\n"]))
def test_fast_parse_is_the_reference_parse(rows: list[str], newline: str) -> None:
    data = newline.join(rows).encode()
    assert outcome(parse_content, data) == outcome(parse_by_line, data)


@given(st.binary(max_size=300))
def test_fast_parse_of_any_bytes(data: bytes) -> None:
    assert outcome(parse_content, data) == outcome(parse_by_line, data)


def test_a_real_line_parses_and_a_duplicate_is_named() -> None:
    line = ('{"path":"base/1/1", "size":"8192", "mode":"33152", "is_datafile":"1", '
            '"is_cfs":"0", "crc":"4294967295", "compress_alg":"zlib", '
            '"external_dir_num":"0", "dbOid":"1","segno":"0", "n_blocks":"1"}')
    (got,) = parse_content(line.encode(), W)
    assert isinstance(got, FileEntry) and got.crc == 0xFFFFFFFF and got.n_blocks == 1
    assert got.compress_alg == "zlib" and got.db_oid == 1 and got.is_datafile
    twice = (line + "\n" + line).encode()
    assert outcome(parse_content, twice) == (
        "ParseError", outcome(parse_by_line, twice)[1])
    assert "listed twice" in str(outcome(parse_content, twice)[1])
