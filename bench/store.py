"""Micro-benchmark of what the store adds to the request path.

    python -m bench.store                                  # SQLite in a temp dir
    python -m bench.store --url postgresql://user@host/db --password-env VAR

Every API request authenticates (a cache hit, almost always) and every
answered one is recorded (an in-memory add); neither touches the database.
This times those two per call, and for scale what does touch it: a cache
miss (one indexed query) and a background flush of 1,000 usage rows (one
transaction of upserts). Prints one line per measurement.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Awaitable, Callable

from privatai.store.database import Store
from privatai.store.keys import generate_key
from privatai.store.recorder import UsageRecorder


async def _per_call(label: str, calls: int, step: Callable[[int], Awaitable[object] | None]) -> None:
    started = time.perf_counter()
    for i in range(calls):
        result = step(i)
        if result is not None:
            await result
    elapsed = time.perf_counter() - started
    print(f"{label:<44} {elapsed / calls * 1e6:10.2f} µs/call  ({calls:,} calls)")


async def measure(store: Store) -> None:
    await store.create_account("bench")
    keys = [(await store.create_key("bench")).key for _ in range(100)]
    principals = [await store.authenticate(key) for key in keys]
    unknown = generate_key()
    recorder = UsageRecorder(store)
    models = [f"model-{n}" for n in range(10)]

    await _per_call("authenticate, cached key (every request)", 200_000,
                    lambda i: store.authenticate(keys[i % 100]))

    async def unknown_key(_: int) -> None:
        try:
            await store.authenticate(unknown)
        except Exception:  # noqa: BLE001 - the 401 being timed
            pass
    await _per_call("authenticate, unknown key (cached 401)", 50_000, unknown_key)

    def record(i: int) -> None:
        recorder.record(principals[i % 100].key_id, models[i % 10], 1000, 200)
    await _per_call("recorder.record (every answered request)", 1_000_000, record)
    await recorder.flush()

    async def miss(i: int) -> None:
        store._auth.clear()
        await store.authenticate(keys[i % 100])
    await _per_call("authenticate, cache miss (database query)", 2_000, miss)

    async def flush(_: int) -> None:
        for i in range(1_000):
            recorder.record(principals[i % 100].key_id, models[i // 100], 1000, 200)
        await recorder.flush()
    await _per_call("flush of 1,000 usage rows (background)", 20, flush)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a postgresql:// URL of an empty database (default: SQLite)")
    parser.add_argument("--password-env", help="environment variable holding its password")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        location = args.url or str(Path(directory) / "bench.db")
        password = os.environ.get(args.password_env) if args.password_env else None
        store = await Store.open(location, password=password)
        print(f"store: {store.kind}")
        try:
            await measure(store)
        finally:
            await store.close()


if __name__ == "__main__":
    asyncio.run(main())
