"""Reading Prometheus' text exposition, as the metrics tests scrape it."""

from __future__ import annotations

import re


def value(text: str, name: str, labels: str = "") -> float | None:
    """One sample of a Prometheus text exposition, by name and exact label set."""
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+-]+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else None
