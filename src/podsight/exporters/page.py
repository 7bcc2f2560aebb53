"""A /metrics page as pieces that can be kept between scrapes, and its gzip
encoding assembled from each piece's own deflate stream.

A piece is deflated once, by a fresh compressor ending in a sync flush, so
its bytes stand alone and any run of pieces concatenates into one valid
deflate stream; the page is one gzip member (header, the pieces, an empty
final block, CRC-32 and length).  A piece kept from the last scrape costs
nothing to compress again, and its CRC is combined, not recomputed.

A piece keeps only its deflate stream (about 1/25 of the text), made when
the piece is: every Prometheus asks for gzip, and at a thousand pods the
text is 8 MB an agent would otherwise hold between scrapes (and, all of it
at once, its memory high-water mark).  A plain scrape inflates the pieces
one at a time as it writes them.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import struct
import zlib
from typing import Iterable

__all__ = ["Body", "Piece", "gzip_chunks", "LEVEL"]

# Fast over small: on a busy node every piece changes every scrape, and the
# page still compresses about 20x (bench/README.md).
LEVEL = 1

_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # gzip, deflate, no name, mtime 0, OS unknown
_FINAL = b"\x03\x00"                                     # an empty final block (fixed Huffman)


def _crc32_combine():
    """zlib's crc32_combine: the CRC of a concatenation from its parts' CRCs."""
    try:
        libz = ctypes.CDLL(ctypes.util.find_library("z") or "libz.so.1")
        fn = libz.crc32_combine64
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_ulong
    fn.argtypes = (ctypes.c_ulong, ctypes.c_ulong, ctypes.c_int64)
    return fn


_combine = _crc32_combine()


class Piece:
    __slots__ = ("deflated", "crc", "size")

    def __init__(self, raw: bytes):
        c = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)
        self.deflated = c.compress(raw) + c.flush(zlib.Z_SYNC_FLUSH) if raw else b""
        self.crc = zlib.crc32(raw)
        self.size = len(raw)

    @property
    def raw(self) -> bytes:
        return zlib.decompressobj(-15).decompress(self.deflated)


def gzip_chunks(pieces: Iterable[Piece]) -> list[bytes]:
    """The pieces as one gzip member (RFC 1952), in chunks to write as they are."""
    out, crc, size = [_HEADER], 0, 0
    for p in pieces:
        if not p.size:
            continue
        out.append(p.deflated)
        crc = _combine(crc, p.crc, p.size) if _combine is not None else zlib.crc32(p.raw, crc)
        size += p.size
    out.append(_FINAL)
    out.append(struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))
    return out


class Body:
    """A response body of known length whose bytes are made as they are
    written: a plain page of deflated pieces is inflated one piece at a
    time, never 8 MB at once."""

    def __init__(self, pieces: list[Piece] | None = None, chunks: list[bytes] | None = None):
        self._pieces = [p for p in pieces or () if p.size]
        self._chunks = chunks
        self.size = sum(map(len, chunks)) if chunks is not None else sum(p.size for p in self._pieces)

    @classmethod
    def gzip(cls, pieces: Iterable[Piece]) -> "Body":
        return cls(chunks=gzip_chunks(pieces))

    def __iter__(self):
        if self._chunks is not None:
            yield from self._chunks
        else:
            for p in self._pieces:
                yield p.raw

    def bytes(self) -> bytes:
        return b"".join(self)
