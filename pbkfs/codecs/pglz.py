"""PostgreSQL's pglz codec for page payloads (no header: the stream starts with a control byte).

`decompress`/`compress` run the C implementation in `_native`; the `*_reference` functions are
plain-Python transcriptions of the same algorithms, kept so tests can hold the fast code to an
independent, readable statement of the format (format spec §3.6; compression follows
PostgreSQL's pg_lzcompress.c so that PostgreSQL and pg_probackup decode what we write).

Strategies: "default" is PGLZ_strategy_default (what PostgreSQL uses for TOAST); "always" is
PGLZ_strategy_always, which is what pg_probackup uses for page payloads -- with it the output is
byte-identical to what pg_probackup stores for the same page.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from pbkfs.codecs import _native
from pbkfs.errors import CodecError

Strategy = Literal["default", "always"]

_INT_MAX = 2**31 - 1
_MAX_MATCH = 273  # longest match a tag can express (18 + 255)
_HISTORY_SIZE = 4096  # history entries; entry 0 is the "invalid" sentinel
_MAX_OFFSET = 0x0FFF  # a tag's offset must stay below this


class _Strategy(NamedTuple):
    min_input_size: int
    max_input_size: int
    min_comp_rate: int
    first_success_by: int
    match_size_good: int
    match_size_drop: int


_STRATEGIES: dict[str, _Strategy] = {
    "default": _Strategy(32, _INT_MAX, 25, 1024, 128, 10),
    "always": _Strategy(0, _INT_MAX, 0, _INT_MAX, 128, 6),
}


def _strategy(name: str) -> _Strategy:
    try:
        return _STRATEGIES[name]
    except KeyError:
        raise ValueError(f"pglz: unknown strategy {name!r} (use 'default' or 'always')") from None


def decompress(src: bytes | bytearray | memoryview, rawsize: int) -> bytes:
    """Decode a pglz payload to exactly `rawsize` bytes; CodecError if it is malformed."""
    try:
        return _native.pglz_decompress(src, rawsize)
    except ValueError as exc:
        raise CodecError(str(exc)) from None


def compress(
    src: bytes | bytearray | memoryview, *, strategy: Strategy = "default"
) -> bytes | None:
    """Encode like PostgreSQL's pglz_compress; None where PostgreSQL refuses (too little gain)."""
    always = _strategy(strategy) is _STRATEGIES["always"]
    return _native.pglz_compress(src, always=always)


# --------------------------------------------------------------------------------------------
# Pure-Python references.


def decompress_reference(src: bytes | bytearray | memoryview, rawsize: int) -> bytes:
    """Spec §3.6 transcribed literally (byte-at-a-time copies); same results as `decompress`."""
    if rawsize < 0:
        raise CodecError(f"pglz: rawsize must be >= 0, got {rawsize}")
    src = bytes(src)
    slen = len(src)
    out = bytearray(rawsize)
    sp = dp = 0
    while sp < slen and dp < rawsize:
        ctrl = src[sp]
        sp += 1
        for _ in range(8):
            if sp >= slen or dp >= rawsize:
                break
            if ctrl & 1:
                if sp + 2 > slen:
                    raise CodecError(f"pglz: match tag runs past the end of the input (byte {sp})")
                length = (src[sp] & 0x0F) + 3
                offset = ((src[sp] & 0xF0) << 4) | src[sp + 1]
                sp += 2
                if length == 18:
                    if sp >= slen:
                        raise CodecError(
                            f"pglz: match length byte runs past the end of the input (byte {sp})"
                        )
                    length += src[sp]
                    sp += 1
                if offset == 0:
                    raise CodecError(f"pglz: match offset is zero (input byte {sp})")
                if offset > dp:
                    raise CodecError(
                        f"pglz: match offset {offset} points before the start of the output "
                        f"(output byte {dp})"
                    )
                for _ in range(min(length, rawsize - dp)):
                    out[dp] = out[dp - offset]
                    dp += 1
            else:
                out[dp] = src[sp]
                dp += 1
                sp += 1
            ctrl >>= 1
    if dp != rawsize:
        raise CodecError(f"pglz: input ends before the output is complete ({dp} of {rawsize})")
    if sp != slen:
        raise CodecError(
            f"pglz: input has bytes left after the output is complete ({sp} of {slen})"
        )
    return bytes(out)


def _schar(b: int) -> int:
    """A byte as C `char` on x86-64 (signed): PostgreSQL's hash sees it that way."""
    return b - 256 if b >= 128 else b


def _hist_idx(src: bytes, pos: int, end: int, mask: int) -> int:
    if end - pos < 4:
        return _schar(src[pos]) & mask
    return (
        (_schar(src[pos]) << 6)
        ^ (_schar(src[pos + 1]) << 4)
        ^ (_schar(src[pos + 2]) << 2)
        ^ _schar(src[pos + 3])
    ) & mask


def _hash_size(slen: int) -> int:
    """PostgreSQL sizes the hash table by input length (small inputs: cheaper start-up)."""
    for limit, size in ((128, 512), (256, 1024), (512, 2048), (1024, 4096)):
        if slen < limit:
            return size
    return 8192


class _History:
    """PostgreSQL's history table: per-hash doubly linked lists over 4096 recycled entries."""

    def __init__(self, hashsz: int) -> None:
        self.start = [0] * hashsz  # newest entry per hash, 0 = empty
        n = _HISTORY_SIZE + 1
        self.next = [0] * n
        self.prev = [-1] * n  # -1 = no newer entry (list head)
        self.hindex = [0] * n
        self.pos = [0] * n
        self.next_free = 1
        self.recycle = False

    def add(self, hindex: int, pos: int) -> None:
        e = self.next_free
        if self.recycle:  # unlink the oldest entry from its old list
            if self.prev[e] == -1:
                self.start[self.hindex[e]] = self.next[e]
            else:
                self.next[self.prev[e]] = self.next[e]
            self.prev[self.next[e]] = self.prev[e]  # entry 0 absorbs the write at a list's end
        head = self.start[hindex]
        self.next[e] = head
        self.prev[e] = -1
        self.hindex[e] = hindex
        self.pos[e] = pos
        self.prev[head] = e
        self.start[hindex] = e
        self.next_free += 1
        if self.next_free >= _HISTORY_SIZE + 1:
            self.next_free = 1
            self.recycle = True


def _find_match(
    hist: _History, src: bytes, pos: int, end: int, good_match: int, good_drop: int, mask: int
) -> tuple[int, int]:
    """Best (length, offset) in the history, or (0, 0) if nothing of 3+ bytes was found."""
    best_len = best_off = 0
    hent = hist.start[_hist_idx(src, pos, end, mask)]
    while hent != 0:
        hp = hist.pos[hent]
        thisoff = pos - hp
        if thisoff >= _MAX_OFFSET:
            break
        thislen = 0
        while (
            pos + thislen < end and src[pos + thislen] == src[hp + thislen] and thislen < _MAX_MATCH
        ):
            thislen += 1
        if thislen > best_len:
            best_len, best_off = thislen, thisoff
        hent = hist.next[hent]
        if hent != 0:
            if best_len >= good_match:
                break
            good_match -= (good_match * good_drop) // 100
    if best_len > 2:
        return best_len, best_off
    return 0, 0


def compress_reference(
    src: bytes | bytearray | memoryview, *, strategy: Strategy = "default"
) -> bytes | None:
    """pg_lzcompress.c's pglz_compress in plain Python; byte-identical to `compress`."""
    st = _strategy(strategy)
    src = bytes(src)
    slen = len(src)
    if st.match_size_good <= 0 or slen < st.min_input_size or slen > st.max_input_size:
        return None
    good_match = min(max(st.match_size_good, 17), _MAX_MATCH)
    good_drop = min(max(st.match_size_drop, 0), 100)
    need_rate = min(max(st.min_comp_rate, 0), 99)
    if slen > _INT_MAX // 100:
        result_max = (slen // 100) * (100 - need_rate)
    else:
        result_max = (slen * (100 - need_rate)) // 100
    hashsz = _hash_size(slen)
    mask = hashsz - 1
    hist = _History(hashsz)

    out = bytearray()
    ctrlp = -1  # index of the open control byte in `out`
    ctrlb = 0
    ctrl = 0
    found_match = False
    pos = 0
    while pos < slen:
        if len(out) >= result_max:
            return None
        if not found_match and len(out) >= st.first_success_by:
            return None
        match_len, match_off = _find_match(hist, src, pos, slen, good_match, good_drop, mask)
        if ctrl & 0xFF == 0:
            if ctrlp >= 0:
                out[ctrlp] = ctrlb
            ctrlp = len(out)
            out.append(0)
            ctrlb = 0
            ctrl = 1
        if match_len:
            ctrlb |= ctrl
            ctrl <<= 1
            hi = (match_off & 0xF00) >> 4
            if match_len > 17:
                out += bytes((hi | 0x0F, match_off & 0xFF, match_len - 18))
            else:
                out += bytes((hi | (match_len - 3), match_off & 0xFF))
            for _ in range(match_len):
                hist.add(_hist_idx(src, pos, slen, mask), pos)
                pos += 1
            found_match = True
        else:
            out.append(src[pos])
            ctrl <<= 1
            hist.add(_hist_idx(src, pos, slen, mask), pos)
            pos += 1
    if ctrlp >= 0:
        out[ctrlp] = ctrlb
    if len(out) >= result_max:
        return None
    return bytes(out)
