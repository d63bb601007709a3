"""Headless Chromium for the page tests: load a page or URL, read its console, decode its screenshots."""

from __future__ import annotations

import re
import struct
import subprocess
import zlib
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
RSS_BLUE = (0x1F, 0x5F, 0xBF)


def chromium(page: Path | str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Load ``page`` (a file, or a URL) in headless Chromium with networking extras off and console logging to
    stderr."""
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--user-data-dir=%s" % profile, "--enable-logging=stderr", "--v=0", *args,
               page.as_uri() if isinstance(page, Path) else page]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def console_problems(stderr: str) -> list[str]:
    """Lines where the page logged to the console, threw, or tried to fetch something."""
    return [line for line in stderr.splitlines() if re.search(r":CONSOLE|Uncaught|net::ERR_", line)]


def png_pixels(path: Path) -> tuple[int, int, list[bytes], int]:
    """(width, height, unfiltered rows, bytes per pixel) of an 8-bit RGB or RGBA PNG, stdlib only."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert depth == 8 and colour in (2, 6), "unexpected PNG format %d/%d" % (depth, colour)
    bpp = 3 if colour == 2 else 4
    chunks, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            chunks.append(data[pos + 8:pos + 8 + length])
        pos += 12 + length
    raw, stride, rows = zlib.decompress(b"".join(chunks)), width * bpp, []
    previous = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, corner = previous[i], previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, rows, bpp


def count_colour(rows: list[bytes], bpp: int, colour: tuple[int, int, int], tolerance: int = 12) -> int:
    """How many pixels are within ``tolerance`` of ``colour`` on every channel."""
    found = 0
    for row in rows:
        for i in range(0, len(row), bpp):
            if all(abs(row[i + c] - colour[c]) <= tolerance for c in range(3)):
                found += 1
    return found
