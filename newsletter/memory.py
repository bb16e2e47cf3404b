"""A memory budget for worker processes, so that a runaway allocation fails one mail, not a worker.

Admin text is rendered in a bounded sandbox, so no known input gets near the budget; the cap is
the second line. With RLIMIT_DATA (the heap and private anonymous mappings, which is where
Python allocates), an allocation beyond the budget raises MemoryError in the code that asked
for it, and the sender fails that one mail; without it the kernel's OOM killer would end the
whole worker, and the broker would hand its task to the next one.
"""

from __future__ import annotations

import resource


def cap_memory(megabytes: int) -> None:
    """Limit this process's data memory to `megabytes` (never above an existing hard limit)."""
    limit = megabytes * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
