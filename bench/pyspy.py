"""Sampling a worker with py-spy (optional: `pip install py-spy`) and naming where its time goes."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Recording:
    process: subprocess.Popen[bytes]
    path: Path

    @classmethod
    def start(cls, pid: int, path: Path, rate: int = 100) -> Recording:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(exe).exists():
            raise RuntimeError("--profile needs py-spy: pip install py-spy (into the bench's virtualenv)")
        # --nonblocking: do not pause the worker for each sample (it would slow what we measure).
        process = subprocess.Popen(
            [exe, "record", "--nonblocking", "-r", str(rate), "--threads", "-f", "raw", "-o", str(path), "--pid", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        return cls(process, path)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def report(self, top: int = 20) -> str:
        return top_functions(self.path, top)


_PACKAGES = ("journey", "faust", "mode", "aiokafka", "asyncio", "rocksdict", "prometheus_client", "orjson", "aiohttp")


def _package(frame: str) -> str:
    """The package a frame's file belongs to ("fn (faust/streams.py)" -> "faust")."""
    where = frame.rpartition("(")[2]
    for name in _PACKAGES:
        if where.startswith(f"{name}/") or f"/{name}/" in where:
            return name
    return "asyncio" if where.startswith("selectors") else "other"


def top_functions(path: Path, top: int = 20) -> str:
    """Own time (leaf frames) and total time per function, from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    samples = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"(no py-spy output at {path})"
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        thread, *frames = stack.split(";")
        # "fn (file.py:123)" -> "fn (file.py)": a function's lines add up.
        frames = [f.rsplit(":", 1)[0] + ")" if f.endswith(")") and ":" in f else f for f in frames]
        if not frames:
            continue
        samples += n
        threads[thread] += n
        own[frames[-1]] += n
        packages[_package(frames[-1])] += n
        for f in set(frames):
            total[f] += n
    if not samples:
        return "(py-spy recorded no samples)"
    out = [f"  py-spy: {samples:,} samples of the worker (busy threads only); by thread: "
           + ", ".join(f"{t} {100 * n / samples:.0f}%" for t, n in threads.most_common(4)),
           "  own time by package: " + ", ".join(f"{p} {100 * n / samples:.0f}%" for p, n in packages.most_common(8)),
           "  top functions by own time:"]
    for frame, n in own.most_common(top):
        out.append(f"    {100 * n / samples:5.1f}% own  {100 * total[frame] / samples:5.1f}% total  {frame}")
    return "\n".join(out)


if __name__ == "__main__":
    print(top_functions(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 30))
