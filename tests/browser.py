"""A real headless browser for the report tests: Chromium renders a page once, and we keep its
screenshot, its DOM after load, and every request it made (Chromium's net-log).

Which requests count as the page's: Chromium itself phones home at start (component updates,
accounts, spelling dictionaries); those carry no initiator ("not an origin" in the net-log).
A request a file:// page makes carries the page's opaque origin ("null") as initiator and a
`file://` network isolation key. `page_requests` keeps those with a network URL; the negative
test in tests/test_report.py shows an injected <img src="https://..."> is caught. Host names
resolve to nothing (--host-resolver-rules), so no test run sends anything anywhere.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path
from typing import List, Optional, Tuple

INSTALL_TIMEOUT = 1200
NETWORK_SCHEMES = ("http://", "https://", "ws://", "wss://", "ftp://")
BROWSER_INITIATED = "not an origin"


def find_chromium() -> Optional[str]:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def ensure_chromium() -> Tuple[Optional[str], str]:
    """(path, "") when Chromium is there or could be installed from the Debian packages, else
    (None, why not)."""
    found = find_chromium()
    if found:
        return found, ""
    if os.geteuid() != 0:
        return None, ("Chromium is not installed and installing it needs root "
                      "(apt-get install chromium)")
    if not shutil.which("apt-get"):
        return None, "Chromium is not installed and there is no apt-get to install it"
    environment = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        try:
            result = subprocess.run(command, capture_output=True, text=True, env=environment,
                                    timeout=INSTALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            return None, f"{' '.join(command)} took over {INSTALL_TIMEOUT} s (no network?)"
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
            return None, f"{' '.join(command)} failed (no network?): {tail[0][:200]}"
    found = find_chromium()
    return (found, "") if found else (None, "apt-get installed chromium but it is not on PATH")


@dataclasses.dataclass
class Rendered:
    dom: str
    screenshot: bytes
    requests: List[dict]  # the net-log's URL requests: url, initiator, isolation key
    stderr: str

    def page_requests(self) -> List[str]:
        """Network URLs the page itself asked for (not Chromium's own background calls)."""
        return sorted({r["url"] for r in self.requests
                       if r["url"].startswith(NETWORK_SCHEMES)
                       and (r["initiator"] != BROWSER_INITIATED
                            or "file://" in r["isolation_key"])})


def render(chromium: str, page: Path, width: int = 1280, height: int = 2000,
           timeout: int = 120) -> Rendered:
    """Load `page` (file://) once: screenshot, DOM after load, net-log."""
    with tempfile.TemporaryDirectory(prefix="ctpipe-browser-") as scratch:
        shot, netlog = os.path.join(scratch, "page.png"), os.path.join(scratch, "net.json")
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
                   "--hide-scrollbars", "--no-first-run", "--no-default-browser-check",
                   f"--user-data-dir={os.path.join(scratch, 'profile')}",
                   "--host-resolver-rules=MAP * ~NOTFOUND",
                   f"--window-size={width},{height}", f"--screenshot={shot}",
                   f"--log-net-log={netlog}", "--dump-dom", Path(page).resolve().as_uri()]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0 or not os.path.exists(shot):
            raise RuntimeError(f"chromium failed ({result.returncode}): {result.stderr[-1500:]}")
        with open(shot, "rb") as handle:
            screenshot = handle.read()
        return Rendered(dom=result.stdout, screenshot=screenshot,
                        requests=read_netlog(netlog), stderr=result.stderr)


def read_netlog(path: str) -> List[dict]:
    """Every URL request in a Chromium net-log (JSON; a log cut short at exit is closed)."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        log = json.loads(text)
    except json.JSONDecodeError:
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    names = {number: name for name, number in log["constants"]["logEventTypes"].items()}
    requests = []
    for event in log.get("events", []):
        params = event.get("params") or {}
        if names.get(event.get("type")) == "URL_REQUEST_START_JOB" and "url" in params:
            requests.append({"url": params["url"], "initiator": params.get("initiator", ""),
                             "isolation_key": params.get("network_isolation_key", "")})
    return requests


def png_size_and_rows(data: bytes) -> Tuple[int, int, int, List[bytes]]:
    """Decode an 8-bit, non-interlaced PNG (what Chromium writes): width, height, channels
    per pixel and the unfiltered rows."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    position, chunks, header = 8, [], None
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        elif kind == b"IEND":
            break
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or interlace or colour not in (0, 2, 4, 6):
        raise ValueError(f"unsupported PNG (depth {depth}, colour {colour}, interlace "
                         f"{interlace})")
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    rows: List[bytes] = []
    previous = bytearray(stride)
    offset = 0
    for _ in range(height):
        kind = raw[offset]
        line = bytearray(raw[offset + 1:offset + 1 + stride])
        offset += 1 + stride
        if kind == 1:
            for i in range(channels, stride):
                line[i] = (line[i] + line[i - channels]) & 255
        elif kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, previous))
        elif kind == 3:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 255
        elif kind == 4:
            for i in range(stride):
                a = line[i - channels] if i >= channels else 0
                b = previous[i]
                c = previous[i - channels] if i >= channels else 0
                estimate = a + b - c
                pa, pb, pc = abs(estimate - a), abs(estimate - b), abs(estimate - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        previous = line
    return width, height, channels, rows


def non_white_pixels(data: bytes, threshold: int = 245) -> Tuple[int, int]:
    """(pixels darker than near-white in any colour channel, all pixels)."""
    width, height, channels, rows = png_size_and_rows(data)
    colours = 1 if channels < 3 else 3
    dark = bytes(1 if value < threshold else 0 for value in range(256))
    count = 0
    for row in rows:
        flags = row.translate(dark)  # 1 per channel byte below the threshold
        pixel = 0
        for channel in range(colours):
            pixel |= int.from_bytes(flags[channel::channels], "big")
        count += bin(pixel).count("1")
    return count, width * height
