"""Top entries of py-spy's collapsed stacks (``py-spy record -f raw``), for the notes.

    .venv/bin/python bench/profile_top.py bench/results/profile-sqlite-burst-*.txt [-n 15]

Files given together are summed (e.g. the two workers of one scenario). Prints, as a
share of all samples: "self" (the leaf function, where the CPU went) and "total" (the
function anywhere on the stack, what it cost including its callees).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "lib/python3", "webhooks_app/", "bench/"):
        if marker in path:
            path = (
                path.split(marker, 1)[1]
                if marker != "webhooks_app/"
                else "webhooks_app/" + path.split(marker, 1)[1]
            )
            break
    return f"{m.group('func')} ({path})"


def top(paths: list[Path], n: int = 15) -> str:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            c = int(count)
            frames = [
                _name(f)
                for f in stack.split(";")
                if f and not f.startswith(("process ", "thread "))
            ]
            if not frames:
                continue
            samples += c
            own[frames[-1]] += c
            for name in set(frames):
                total[name] += c
    if not samples:
        return "  (no samples)"
    lines = [f"  {samples} samples"]
    for title, counter in (("self", own), ("total", total)):
        lines.append(f"  {title}:")
        for name, c in counter.most_common(n):
            lines.append(f"    {100 * c / samples:5.1f}%  {name}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("-n", type=int, default=15)
    a = p.parse_args()
    print(top(a.files, a.n))


if __name__ == "__main__":
    main()
