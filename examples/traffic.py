"""A small traffic generator so dashboards fill on their own (compose stack and manual runs).

TARGET_URL=http://localhost:8000 RPS=5 python examples/traffic.py
"""

from __future__ import annotations

import asyncio
import os
import random

import httpx

PATHS = ["/plans/{n}"] * 8 + ["/teapot", "/boom", "/slow?seconds=0.05", "/does-not-exist"]


async def main() -> None:
    target = os.environ.get("TARGET_URL", "http://localhost:8000").rstrip("/")
    rps = float(os.environ.get("RPS", "5"))
    limit = int(os.environ.get("REQUESTS", "0"))  # 0: run until stopped
    sent = 0
    async with httpx.AsyncClient(timeout=10.0) as client:
        while not limit or sent < limit:
            path = random.choice(PATHS).format(n=random.randint(1, 50))
            try:
                await client.get(target + path)
            except httpx.HTTPError as exc:
                print(f"traffic: {type(exc).__name__} for {path}", flush=True)
            sent += 1
            await asyncio.sleep(1.0 / rps)


if __name__ == "__main__":
    asyncio.run(main())
