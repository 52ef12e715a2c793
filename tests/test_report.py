"""`exq report`: the HTML timeline checked in a real headless chromium, the text timeline, and its errors."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from conftest import EXQ, MISSING, Exq
from sshhosts import SshHosts, write_hosts_config

CHROMIUM = "chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HOSTILE = "<script>alert(1)</script>"
BAD_REASON = "ValueError: bad input 'x' & <y>"
PHASE_COLOUR = (0x4E, 0x79, 0xA7)
"""The first phase's colour in exq/report/html.py: the interior of its bars in the screenshot."""


@pytest.fixture
def shared() -> Iterator[Path]:
    """A work directory every host's user can write (the SSH host's login is another user)."""
    path = Path(tempfile.mkdtemp(prefix="exq-report-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless chromium once, with a fresh profile, bounded in time."""
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{MISSING}chromium (a headless browser); run tests/setup.sh (apt-get install chromium)")
    profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp_path))
    proc = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


class Dom(HTMLParser):
    """The elements of a page: (tag, attributes) in document order, and the text inside each `<title>`."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.titles: dict[int, str] = {}
        self._open: list[int] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))
        if tag == "title":
            self._open.append(len(self.elements) - 1)

    def handle_endtag(self, tag: str) -> None:
        if tag == "title" and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open:
            index = self._open[-1]
            self.titles[index] = self.titles.get(index, "") + data

    def with_class(self, tag: str, cls: str) -> list[tuple[int, dict[str, str]]]:
        return [(i, a) for i, (t, a) in enumerate(self.elements) if t == tag and cls in a.get("class", "").split()]


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit, non-interlaced RGB or RGBA PNG (the stdlib only): width, height, the rows' raw bytes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        _unfilter(kind, line, prev, bpp)
        rows.append(bytes(line))
        prev = line
    return width, height, [_rgb(row, bpp) for row in rows]


def _unfilter(kind: int, line: bytearray, prev: bytearray, bpp: int) -> None:
    """Reverse one PNG row filter in place (0 none, 1 sub, 2 up, 3 average, 4 Paeth)."""
    if kind == 2:
        line[:] = bytes((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        return
    for i in range(len(line)) if kind else ():
        left = line[i - bpp] if i >= bpp else 0
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + (left + prev[i]) // 2) & 0xFF
        else:
            up, corner = prev[i], prev[i - bpp] if i >= bpp else 0
            p = left + up - corner
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
            line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF


def _rgb(row: bytes, bpp: int) -> bytes:
    return row if bpp == 3 else bytes(b for i, b in enumerate(row) if i % 4 != 3)


def configure(exq: Exq, hosts: SshHosts) -> None:
    exq.env["EXQ_CONFIG"] = str(write_hosts_config(exq.root / "config.yaml", hosts))
    exq.env["EXQ_SIMULATE_GPUS"] = "1x24GiB"


def mixed_manifest(exq: Exq, shared: Path) -> Path:
    """An OOM retry (on h1), a hostile param (local), a failure, a job blocked behind it, and a CPU-only job."""
    return exq.manifest(f"""
        name: mixed
        workdir: {shared}
        defaults: {{gpus: 1, retry: {{oom: {{max: 2, backoff: 0.2s}}}}}}
        phases:
          - name: train
            hosts: [h1]
            params: {{batch_size: 128}}
            on_oom: {{scale: {{param: batch_size, factor: 0.5, min: 8}}}}
            id: train
            cmd: >-
              sleep 0.5;
              if [ {{batch_size}} -gt 64 ]; then echo "RuntimeError: CUDA out of memory." >&2; exit 1; fi
          - name: probe
            hosts: [local]
            params: {{tag: "{HOSTILE}"}}
            id: probe
            cmd: sleep 1
          - name: bad
            hosts: [local]
            after: [probe]
            id: bad
            cmd: >-
              sleep 0.3; echo "{BAD_REASON}" >&2; exit 3
          - name: downstream
            after: [bad]
            id: downstream
            cmd: "true"
          - name: cpu
            gpus: 0
            hosts: [local]
            id: tally
            cmd: sleep 0.2
    """)


def expected(state: dict[str, Any]) -> tuple[int, set[tuple[str, str]]]:
    """What the report must draw: a bar per started attempt per GPU, a lane per GPU (or CPU) per host."""
    bars, lanes = 0, {(g["host"], str(g["index"])) for g in state["gpus"]}
    for job in state["jobs"]:
        for attempt in job["attempts"]:
            if attempt["started_at"] is not None:
                bars += max(1, len(attempt["gpus"]))
                lanes |= {(attempt["host"], str(g)) for g in attempt["gpus"] or ["cpu"]}
    return bars, lanes


def test_report_in_a_real_browser(exq: Exq, ssh_hosts: Any, shared: Path, tmp_path: Path) -> None:
    configure(exq, ssh_hosts([("h1", "1x24GiB")]))
    exq.start_daemon()
    exq("submit", str(mixed_manifest(exq, shared)))
    jobs = exq.wait_finished(5, timeout=120)
    assert [a["outcome"] for a in jobs["train"]["attempts"]] == ["oom", "succeeded"]
    assert (jobs["bad"]["status"], jobs["downstream"]["status"]) == ("failed", "blocked")
    state = exq.state()
    report = tmp_path / "r.html"
    proc = exq("report", "-o", str(report))
    assert proc.stdout.strip() == str(report)
    page = report.read_text()
    assert HOSTILE not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "<link" not in page

    dom = Dom(chromium(tmp_path, "--dump-dom", report.as_uri()).stdout)
    bars, lanes = expected(state)
    drawn = dom.with_class("rect", "bar")
    assert len(drawn) == bars == 5  # train x2 (h1), probe and bad (local GPU), tally (local CPU); none blocked
    assert {(a["data-host"], a["data-gpu"]) for _, a in dom.with_class("g", "lane")} == lanes
    assert {("h1", "0"), ("local", "0"), ("local", "cpu")} <= lanes
    assert len(dom.with_class("g", "lane")) == len(lanes)
    html_tag = next(a for t, a in dom.elements if t == "html")
    assert html_tag.get("data-bars") == str(bars)  # the inline script ran
    assert [t for t, _ in dom.elements].count("script") == 1

    by_job = {(a["data-job"].split("/", 1)[1], a["data-attempt"]): (i, a) for i, a in drawn}
    _, oom = by_job[("train", "1")]
    assert oom["data-outcome"] == "oom" and oom["data-retried"] == "true"
    assert "CUDA out of memory" in oom["data-tip"]
    index, bad = by_job[("bad", "1")]
    reason = jobs["bad"]["attempts"][0]["reason"]
    assert bad["data-outcome"] == "failed" and "exit code 3" in reason
    title = dom.titles[index + 1]  # the bar's <title> child
    assert title == bad["data-tip"] and f"reason: {reason}" in title
    _, probe = by_job[("probe", "1")]
    assert f"tag={HOSTILE}" in probe["data-tip"]  # the hostile param is text, not markup
    assert "(retried)" not in probe["data-tip"] and probe["data-retried"] == "false"
    assert [a["data-phase"] for _, a in dom.with_class("tr", "phase")] == ["train", "probe", "bad", "downstream",
                                                                           "cpu"]

    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,900", report.as_uri())
    width, height, rows = png_pixels(shot.read_bytes())
    assert (width, height) == (1400, 900)
    pixels = [bytes(row[i:i + 3]) for row in rows[::3] for i in range(0, len(row), 9)]
    counts = Counter(pixels)
    background, _ = counts.most_common(1)[0]
    assert len(counts) >= 20, "the screenshot has too few colours"
    assert 1 - counts[background] / len(pixels) > 0.03, "the screenshot is nearly blank"
    assert counts[bytes(PHASE_COLOUR)] > 20, "no bar of the first phase's colour"

    default = subprocess.run([*EXQ, "report"], env=exq.env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=60)
    assert default.returncode == 0 and default.stdout.strip() == "exq-report.html"
    assert (tmp_path / "exq-report.html").stat().st_size > 1000


def test_terminal_timeline_marks_failures_and_fits_the_width(exq: Exq) -> None:
    manifest = exq.manifest("""
        name: text
        defaults: {gpus: 1, retry: {oom: {max: 1, backoff: 0.1s}}}
        phases:
          - name: work
            params: {batch_size: 128}
            on_oom: {scale: {param: batch_size, factor: 0.5}}
            id: work
            cmd: >-
              sleep 0.3;
              if [ {batch_size} -gt 64 ]; then echo "RuntimeError: CUDA out of memory." >&2; exit 1; fi
          - name: broken
            id: broken
            cmd: sleep 0.3; exit 2
          - name: cpu
            gpus: 0
            id: tally
            cmd: sleep 0.2
    """)
    exq.start_daemon()
    exq("submit", str(manifest))
    exq.wait_finished(3, timeout=60)
    exq.env["COLUMNS"] = "90"
    out = exq("report", "--terminal").stdout
    lines = out.splitlines()
    lanes = {line.split(" |")[0].strip(): line for line in lines if " |" in line and line.endswith("%")}
    assert set(lanes) == {"local gpu0", "local gpu1", "local cpu"}, out
    assert all(len(line) <= 90 for line in lines if " |" in line), out
    cells = "".join(line.split("|")[1] for line in lanes.values())
    assert "X" in cells and "O" in cells and "#" in cells and "." in cells, out
    assert "\x1b[" not in out  # plain text when piped
    assert any(line.split()[:2] == ["1", "broken"] and line.split()[4] == "1" for line in lines), out
    assert any(line.split()[:2] == ["1", "work"] and line.split()[6] == "1" for line in lines), out
    assert exq("report", "--terminal", "--submission", "1").stdout.count(" |") == 3


def test_unknown_submission_and_unwritable_output(exq: Exq, tmp_path: Path) -> None:
    proc = exq("report", "--submission", "nope", check=False)
    assert proc.returncode == 5, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no submission 'nope'" in lines[0], proc.stderr
    target = tmp_path / "missing-dir" / "r.html"
    proc = exq("report", "-o", str(target), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"exq: error: cannot write the report: {target}: "
                                                "No such file or directory"], proc.stderr
    os.makedirs(tmp_path / "ok")
    assert exq("report", "-o", str(tmp_path / "ok" / "r.html")).returncode == 0
