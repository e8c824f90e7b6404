"""episodes.jsonl, the run folder's record of every episode: read back when the telemetry node
starts (a torn last line cut off), appended in whole lines, and the run's start time from its
first record."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from soulsai.telemetry.stats import stream_seconds

log = logging.getLogger("soulsai.telemetry.node")  # the name its log lines always had


def load_records(path: Path) -> list[dict[str, Any]]:
    """Records in episodes.jsonl. A torn last line (a crash mid-write) is cut off, so the
    next append starts on a fresh line; the stream still holds that record."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log.warning("cutting a torn last line (%d bytes) off %s", len(data) - end, path)
        with open(path, "r+b") as f:
            f.truncate(end)
    out = []
    for line in data[:end].splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "time" in rec and "client_id" in rec:
            out.append(rec)
    return out


def append_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Append `records` to `path` as JSON lines."""
    lines = "".join(json.dumps(r) + "\n" for r in records).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, lines)  # one write of whole lines: readers never see half a record
    finally:
        os.close(fd)


def start_time(first: dict[str, Any]) -> float | None:
    """When the run started, from its first record: the time Redis received it (never past
    now) less the wall_time it was given then; None when it carries no receive time."""
    received = stream_seconds(first.get("stream_id")) or first.get("time")
    if isinstance(received, (int, float)):
        received = min(received, time.time())  # as the node does for every record
    wall = first.get("wall_time")
    if isinstance(received, (int, float)):
        return float(received) - (float(wall) if isinstance(wall, (int, float)) else 0.0)
    return None
