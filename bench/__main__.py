"""Run the benchmarks and print their figures (`make bench`).

Each benchmark module exposes ``run() -> None`` and prints ``<figure>: <value> <unit>`` lines.
`python -m bench crawl features` runs only the named ones.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time

SUITES = [
    "crawl",
    "features",
    "train",
    "large",
    "serving",
    "control_plane",
    "events",
    "assignment",
    "canary",
]


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    chosen = argv or SUITES
    failed = []
    for name in chosen:
        try:
            module = importlib.import_module(f"bench.bench_{name}")
        except ModuleNotFoundError as err:
            print(f"== {name}: not available ({err})")
            continue
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        try:
            module.run()
        except Exception as err:  # a broken benchmark must not hide the others' figures
            print(f"{name}: FAILED: {err!r}")
            failed.append(name)
        print(f"({name} took {time.perf_counter() - started:.1f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
