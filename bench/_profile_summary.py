"""Where a worker's time goes: summaries of py-spy speedscope profiles.

`bench/pipeline.py --profile DIR` records every worker process twice at once with
`py-spy record --format speedscope`: with --idle (wall clock, waiting included: `*.wall.*`)
and without (on-CPU samples only: `*.cpu.*`). This module reads those files and prints, for
the pool children together:

- self time by what the innermost Python frame is doing (driver calls waiting for the
  database, waiting for the SMTP reply, Redis, the email package, SQLAlchemy, Celery, ...);
- inclusive time of the product's own functions (`newsletter/...`), which follows the code as
  it changes instead of naming functions in advance.

    .venv/bin/python -m bench._profile_summary DIR
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# (substring of the innermost frame's file, of its function name or "") -> category.
_LEAF_RULES: tuple[tuple[str, str, str], ...] = (
    ("psycopg/", "", "psycopg: send query, wait for PostgreSQL"),
    ("sqlalchemy/engine/default.py", "do_", "DB-API call (sqlite3 in C: query, commit, lock wait)"),
    ("sqlalchemy/", "", "SQLAlchemy (Python: ORM, compile, results)"),
    ("socket.py", "readinto", "waiting for the SMTP server's reply"),
    ("smtplib.py", "", "smtplib (send data, commands)"),
    ("ssl.py", "", "smtplib (send data, commands)"),
    ("redis/", "", "Redis round trips (flow control)"),
    ("/email/", "", "email package (build headers, serialise)"),
    ("jinja2/", "", "rendering (Jinja2, Markdown, CSS inlining)"),
    ("markupsafe/", "", "rendering (Jinja2, Markdown, CSS inlining)"),
    ("markdown_it/", "", "rendering (Jinja2, Markdown, CSS inlining)"),
    ("css_inline", "", "rendering (Jinja2, Markdown, CSS inlining)"),
    ("itsdangerous/", "", "unsubscribe token (itsdangerous)"),
    ("billiard/", "", "Celery/kombu/billiard (incl. idle between tasks)"),
    ("kombu/", "", "Celery/kombu/billiard (incl. idle between tasks)"),
    ("celery/", "", "Celery/kombu/billiard (incl. idle between tasks)"),
    ("/newsletter/", "", "product code (self time)"),
    ("zoneinfo", "", "time zones / datetime"),
    ("logging/", "", "logging"),
)
_TASKS = ("send_batch", "dispatch_due")


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/", "lib/python3.12/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _category(frame: dict[str, Any]) -> str:
    file, name = frame.get("file", ""), frame.get("name", "")
    for part, fn, label in _LEAF_RULES:
        if part in file and fn in name:
            return label
    return "other (stdlib, ...)"


def load(path: Path) -> tuple[list[dict[str, Any]], list[tuple[list[int], float]]]:
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    samples: list[tuple[list[int], float]] = []
    for profile in data["profiles"]:
        samples.extend(zip(profile["samples"], profile["weights"], strict=True))
    return frames, samples


def summarise(paths: list[Path], top: int = 18) -> str:
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0.0
    in_task = 0.0
    for path in paths:
        frames, samples = load(path)
        for stack, weight in samples:
            total += weight
            if not stack:
                leaf["(no Python frame)"] += weight
                continue
            leaf[_category(frames[stack[-1]])] += weight
            seen: set[str] = set()
            task = False
            for index in stack:
                frame = frames[index]
                if "/newsletter/" in frame.get("file", ""):
                    key = f"{frame['name']} ({_short(frame['file'])})"
                    if key not in seen:
                        seen.add(key)
                        inclusive[key] += weight
                    task = task or frame["name"] in _TASKS
            if task:
                in_task += weight
    if not total:
        return "  (no samples)"
    lines = [f"  {total:.1f} s of samples; inside a task: {100 * in_task / total:.1f}%"]
    lines.append("  self time by innermost frame:")
    for label, weight in leaf.most_common():
        lines.append(f"    {100 * weight / total:5.1f}%  {label}")
    lines.append("  inclusive time of product functions:")
    for key, weight in inclusive.most_common(top):
        lines.append(f"    {100 * weight / total:5.1f}%  {key}")
    return "\n".join(lines)


def summarise_dir(directory: Path) -> str:
    out = [f"py-spy profiles in {directory}:"]
    runs = sorted({p.parent for p in directory.rglob("*.speedscope.json")})
    for run in runs:
        for kind, what in (("wall", "wall clock, waiting included"), ("cpu", "on-CPU only")):
            pool = sorted(run.glob(f"child-pool-*.{kind}.speedscope.json"))
            others = sorted(set(run.glob(f"*.{kind}.speedscope.json")) - set(pool))
            if not pool and not others:
                continue
            out.append(f"\n{run.name}: pool children ({len(pool)}, summed), {what}")
            out.append(summarise(pool))
            for path in others:
                out.append(f"\n{run.name}: {path.name.split('.')[0]}, {what}")
                out.append(summarise([path], top=4))
    if not runs:
        out.append("  no profiles found")
    return "\n".join(out)


if __name__ == "__main__":
    print(summarise_dir(Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
