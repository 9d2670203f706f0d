"""Summarise a `py-spy record --format raw --threads` file: where the daemon's time goes.

    python -m bench.profile_top /tmp/profile.txt [--top 25]

Prints samples per thread, then per thread the top frames by self time (the frame on top of
the stack) and by inclusive time (anywhere on the stack), as a share of that thread's samples.
py-spy records only threads that are running (not idle) unless --idle was given.

With `record --subprocesses` each stack starts with `process <pid>:"<cmdline>"` frames, the
recorded process then the chain of descendants down to the sampled one; threads of the
recorded process (the daemon) keep their names, those of a descendant are named
"<label>:<name>" ("store:MainThread" for the DuckDB database process, "pid<N>:..." otherwise).
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

from bench.procfs import PROCESS_LABELS

# A cmdline may hold ';' and '"': a process frame ends where the next one or the thread
# frame starts. Without --threads there is no thread frame (all samples are thread "?"),
# and a process frame then ends at its first '";'.
_PREFIX = re.compile(
    r'^(?P<procs>(?:process \d+:".*?";)*?)'
    r"thread \((?P<tid>\d+|0x[0-9a-fA-F]+)\)(?:: (?P<name>[^;]*))?(?:;|$)"
)
_PREFIX_NO_THREAD = re.compile(r'^(?P<procs>(?:process \d+:"(?:[^"]|"(?!;))*";)*)')
_PROCESS = re.compile(r'process (?P<pid>\d+):"(?P<cmd>.*?)";(?=process \d+:"|$)')
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


def _process_label(pid: str, cmd: str) -> str:
    for key, label in PROCESS_LABELS.items():  # descendants by a word of their command line
        if key in cmd:
            return label
    return f"pid{pid}"


def parse_line(line: str) -> tuple[str, list[str], int] | None:
    """A raw line -> (thread, frames below the process and thread frames, samples)."""
    stack, _, count_text = line.rpartition(" ")
    if not stack or not count_text.isdigit():
        return None
    match = _PREFIX.match(stack)
    thread = "?"
    if match is not None:
        thread = (match.group("name") or f"thread {match.group('tid')}").strip()
    if match is None:
        match = _PREFIX_NO_THREAD.match(stack)
        assert match is not None  # it matches the empty string
    procs = list(_PROCESS.finditer(match.group("procs")))
    if len(procs) > 1:  # a descendant of the recorded process
        thread = f"{_process_label(procs[-1]['pid'], procs[-1]['cmd'])}:{thread}"
    rest = stack[match.end() :]
    return thread, rest.split(";") if rest else [], int(count_text)


def main_thread_activities(path: Path) -> list[tuple[str, float]]:
    """What the daemon's MainThread (not a descendant's) spent its samples on."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        parsed = parse_line(line)
        if parsed is None or parsed[0] != "MainThread":
            continue
        _, frames, n = parsed
        total += n
        for label, key in _ACTIVITIES:
            if any(key in f for f in frames):
                counts[label] += n
                break
        else:
            last = frames[-1] if frames else ""
            counts["event loop itself (uvloop C)" if "Runner.run" in last else "other"] += n
    return [(label, 100 * c / max(1, total)) for label, c in counts.most_common()]


def summarise(
    path: Path, top: int, *, lines: bool = False, seconds: float = 0.0, rate: float = 0.0
) -> str:
    per_thread: collections.Counter[str] = collections.Counter()
    self_time: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in path.read_text(errors="replace").splitlines():
        parsed = parse_line(line)
        if parsed is None:
            continue
        thread, frames, count = parsed
        names = [_frame(f, lines) for f in frames] or ["(no frame)"]
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
