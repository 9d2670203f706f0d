"""Summarise a `py-spy record --format raw --threads` file: where the daemon's time goes.

    python bench/profile_top.py /tmp/profile.txt [--top 25]

Prints samples per thread, then per thread the top frames by self time (the frame on top of
the stack) and by inclusive time (anywhere on the stack), as a share of that thread's samples.
py-spy records only threads that are running (not idle) unless --idle was given.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

_THREAD = re.compile(r"^thread \(\d+\): (?P<name>[^;]+)")
_LOCATION = re.compile(r" \((?P<file>[^:()]+):\d+\)$")


def _frame(raw: str, lines: bool = False) -> str:
    """`fn (path/file.py:123)` -> `fn (path/file.py)`: lines merged unless `lines`."""
    if lines:
        return raw.strip()
    return _LOCATION.sub(lambda m: f" ({m.group('file')})", raw.strip())


# Main-thread samples by what the event loop was doing: the first rule whose text appears
# in a stack wins. Event-loop time with no Python frame above Runner.run is uvloop's own C
# code (polling, socket reads, scheduling callbacks).
_ACTIVITIES = [
    ("delivery attempts (WorkerPool._attempt)", "WorkerPool._attempt"),
    ("ingest API (post_events)", "post_events"),
    ("operator API (status, ...)", "webhookd/api/operators.py"),
    ("other API / aiohttp server", "aiohttp/web_protocol.py"),
    ("writer results (_settle)", "_settle"),
    ("claim loop and dispatch", "WorkerPool."),
    ("scanner", "Scanner."),
    ("structlog", "structlog/"),
    ("aiohttp client (frames outside an attempt's stack)", "aiohttp/client"),
    ("aiohttp socket writes (_writelines)", "_writelines"),
]


def main_thread_activities(path: Path) -> list[tuple[str, float]]:
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = stack.split(";")
        if not count_text.isdigit() or "MainThread" not in frames[0]:
            continue
        n = int(count_text)
        total += n
        for label, key in _ACTIVITIES:
            if any(key in f for f in frames[1:]):
                counts[label] += n
                break
        else:
            last = frames[-1]
            counts["event loop itself (uvloop C)" if "Runner.run" in last else "other"] += n
    return [(label, 100 * c / max(1, total)) for label, c in counts.most_common()]


def summarise(
    path: Path, top: int, *, lines: bool = False, seconds: float = 0.0, rate: float = 0.0
) -> str:
    per_thread: collections.Counter[str] = collections.Counter()
    self_time: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        match = _THREAD.match(frames[0])
        thread = match.group("name") if match else "?"
        names = [_frame(f, lines) for f in frames[1:]] or ["(no frame)"]
        per_thread[thread] += count
        self_time[thread][names[-1]] += count
        for name in set(names):
            inclusive[thread][name] += count
    total = sum(per_thread.values()) or 1
    out = [f"{total} samples"]
    activities = main_thread_activities(path)
    if activities:
        out.append("\n== MainThread by activity:")
        out.extend(f"    {share:5.1f}%  {label}" for label, share in activities)
    for thread, n in per_thread.most_common():
        busy = f", active {100 * n / (seconds * rate):.0f}% of the time" if seconds and rate else ""
        out.append(f"\n== thread {thread}: {n} samples ({100 * n / total:.1f}% of all{busy})")
        out.append("  self time:")
        for name, c in self_time[thread].most_common(top):
            out.append(f"    {100 * c / n:5.1f}%  {name}")
        out.append("  inclusive:")
        for name, c in inclusive[thread].most_common(top):
            out.append(f"    {100 * c / n:5.1f}%  {name}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--lines", action="store_true", help="keep line numbers (self time)")
    parser.add_argument("--seconds", type=float, default=0.0, help="recording length")
    parser.add_argument("--rate", type=float, default=250.0, help="py-spy --rate used")
    args = parser.parse_args()
    print(summarise(args.profile, args.top, lines=args.lines, seconds=args.seconds, rate=args.rate))


if __name__ == "__main__":
    main()
