"""Process memory settings for long streams of large buffers (training, layer scans)."""

from __future__ import annotations

import ctypes

MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def return_large_buffers_to_the_os() -> None:
    """Have glibc map every buffer over ``MMAP_THRESHOLD_BYTES`` on its own (Linux/glibc).

    glibc raises its mmap threshold each time a large block is freed (up to 32 MiB);
    buffers of later batches (activations, Lance's decoded pages) then come from the
    heap, which keeps growing batch after batch while holding freed memory. A fixed
    threshold returns them at once, so peak RSS does not grow with the number of
    batches (``stratalens bench data``; a 65,536-row scan of a 1,024-wide layer peaked
    at 432 MiB with glibc's default and 331 MiB with the fixed threshold, against 314
    MiB for 16,384 rows).
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except OSError:  # not glibc: nothing to tune
        pass
