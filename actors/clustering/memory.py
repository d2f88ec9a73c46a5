"""How much memory a fit can count on: what the machine has free, capped by the container.

A Kubernetes pod reads the node's ``/proc/meminfo``, not its own limit, so the cgroup's
limit less its usage caps the figure where one is set.
"""

from __future__ import annotations

from pathlib import Path

MEMINFO = "/proc/meminfo"
# (limit, usage) files of the process's cgroup: v2, then v1.
CGROUP_MEMORY_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def available_memory_bytes(
    meminfo: str = MEMINFO, cgroup_files: tuple[tuple[str, str], ...] = CGROUP_MEMORY_FILES
) -> int | None:
    """Bytes of memory available now, or None where the system does not say (not Linux)."""
    available = _meminfo_available(meminfo)
    if available is None:
        return None
    for limit_file, usage_file in cgroup_files:
        limit, usage = _read_bytes(limit_file), _read_bytes(usage_file)
        if limit is not None and usage is not None:
            return min(available, max(0, limit - usage))
    return available


def _meminfo_available(path: str) -> int | None:
    for line in _read(path).splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024  # the file counts kB
    return None


def _read_bytes(path: str) -> int | None:
    """An integer cgroup file; None when missing or unlimited ("max")."""
    text = _read(path).strip()
    return int(text) if text.isdigit() else None


def _read(path: str) -> str:
    """The file's text, or "" where it does not exist."""
    try:
        return Path(path).read_text()
    except OSError:
        return ""
