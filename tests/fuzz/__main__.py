"""The long fuzz run, from the repository root:

    python -m tests.fuzz --cases 20000                    every format, 20000 cases each
    python -m tests.fuzz --cases 5000 --format hf --format png --seed 100000
    python -m tests.fuzz --format checkpoint --replay 1234:npy-header    one case, traceback shown
    python -m tests.fuzz --list                           the formats and their mutations

Cases run in worker processes (--jobs at a time), each under an address-space limit
(resource.RLIMIT_AS: its size after start-up plus --memory-mb) and a per-case time limit (an
alarm signal, and a watchdog that kills a worker stuck in C code). A worker that dies is a
'crash' at the case it was running; the run then goes on after it. Exit status 1 when any
case failed; each distinct failure is printed with the command that replays it.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time

if __package__ in (None, ""):                             # run as a script: python tests/fuzz
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))))
    __package__ = "tests.fuzz"

from .runner import FAILURES, Outcome, address_space, formats, run_case  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHUNK = 2000                                              # cases a worker runs before it ends


def scratch_dir() -> str:
    """A temporary folder, in memory when /dev/shm is there (cases write many small files)."""
    shm = "/dev/shm"
    return tempfile.mkdtemp(prefix="minivit-fuzz-", dir=shm if os.path.isdir(shm)
                            and os.access(shm, os.W_OK) else None)


# ---- a worker: runs cases start..start+count of one format --------------------------------------
def worker(args) -> None:
    import resource
    fmt = formats(args.format)[0]
    work = tempfile.mkdtemp(dir=args.workdir)
    state = os.open(args.state, os.O_WRONLY | os.O_CREAT, 0o644)
    run_case(fmt, args.start, work, time_limit=args.time_limit)   # warm up: imports, seeds
    if args.memory_mb and address_space():
        limit = address_space() + args.memory_mb * (1 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    counts = {}
    for seed in range(args.start, args.start + args.count):
        os.pwrite(state, f"{seed:<24d}".encode(), 0)
        out = run_case(fmt, seed, work, time_limit=args.time_limit)
        counts[out.status] = counts.get(out.status, 0) + 1
        if out.failed:
            print(json.dumps({"failure": out.to_dict()}), flush=True)
        if (seed - args.start) % 250 == 249:
            print(json.dumps({"progress": seed - args.start + 1, "counts": counts}), flush=True)
    print(json.dumps({"done": counts}), flush=True)


# ---- the driver ---------------------------------------------------------------------------------
class Driver:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.counts: dict = {}                            # format -> {status: n}
        self.failures: list = []
        self.tmp = scratch_dir()                          # state files and the workers' cases

    def add(self, fmt: str, status: str, n: int = 1) -> None:
        with self.lock:
            c = self.counts.setdefault(fmt, {})
            c[status] = c.get(status, 0) + n

    def fail(self, out: Outcome) -> None:
        with self.lock:
            self.failures.append(out)
        if self.args.verbose:
            print(f"FAIL {out.status} {out.error}: {out.message[:120]} ({out.replay()})",
                  flush=True)

    def run_chunk(self, fmt: str, start: int, count: int, slot: int) -> None:
        """Run cases start..start+count in workers until all are done: after a crash or a
        watchdog kill, the next worker starts after the case that failed."""
        from .formats import FORMATS
        from .runner import plan
        end = start + count
        state = os.path.join(self.tmp, f"state-{slot}")
        watchdog = max(60.0, 6 * self.args.time_limit)
        while start < end:
            with open(state, "wb"):
                pass
            cmd = [sys.executable, "-m", "tests.fuzz", "--worker", "--format", fmt,
                   "--start", str(start), "--count", str(end - start), "--state", state,
                   "--workdir", self.tmp,
                   "--time-limit", str(self.args.time_limit),
                   "--memory-mb", str(self.args.memory_mb)]
            env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                   "MKL_NUM_THREADS": "1"}
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, env=env, text=True)
            lines: queue.Queue = queue.Queue()

            def read(stream=proc.stdout):
                for line in stream:
                    lines.put(line)
                lines.put(None)                           # end of output
            threading.Thread(target=read, daemon=True).start()
            partial, done, killed = {}, False, False
            last, seen = time.monotonic(), None
            while True:
                try:
                    line = lines.get(timeout=1.0)
                except queue.Empty:
                    cur = self._current(state)
                    if cur != seen:
                        seen, last = cur, time.monotonic()
                    if time.monotonic() - last > watchdog:   # stuck where no alarm reaches
                        proc.kill()
                        killed = True
                    continue
                if line is None:
                    break
                msg = json.loads(line)
                if "failure" in msg:
                    self.fail(Outcome(**msg["failure"]))
                elif "progress" in msg:
                    partial = msg["counts"]
                elif "done" in msg:
                    for status, n in msg["done"].items():
                        self.add(fmt, status, n)
                    done = True
            proc.wait()
            if done:
                return
            cur = self._current(state)
            if cur is None and not killed:                # it never got to a case
                raise SystemExit(f"a worker for {fmt} failed before its first case (status "
                                 f"{proc.returncode}): see its error above")
            cur = start if cur is None else cur
            for status, n in partial.items():
                self.add(fmt, status, n)
            self.add(fmt, "unrecorded", max(cur - start - sum(partial.values()), 0))
            _, kind, loader = plan(FORMATS[fmt], cur)
            status, why = (("hang", f"no progress for {watchdog:.0f} s: killed") if killed else
                           ("crash", f"the worker exited with status {proc.returncode}"))
            self.add(fmt, status)
            self.fail(Outcome(fmt, cur, kind, loader, status, "killed" if killed else "died",
                              why))
            start = cur + 1

    @staticmethod
    def _current(state: str):
        try:
            with open(state, "rb") as f:
                text = f.read().strip()
            return int(text) if text else None
        except (OSError, ValueError):
            return None


def run(args) -> int:
    fmts = formats(args.format)
    skipped = {f.name: f.missing() for f in fmts if f.missing()}
    fmts = [f for f in fmts if not f.missing()]
    for name, missing in skipped.items():
        print(f"skipping {name}: needs {', '.join(missing)}")
    jobs = [(f.name, s, min(CHUNK, args.seed + args.cases - s)) for f in fmts
            for s in range(args.seed, args.seed + args.cases, CHUNK)]
    todo: queue.Queue = queue.Queue()
    for j in jobs:
        todo.put(j)
    driver = Driver(args)
    t0 = time.monotonic()

    def slot(i):
        while True:
            try:
                fmt, start, count = todo.get_nowait()
            except queue.Empty:
                return
            driver.run_chunk(fmt, start, count, i)
            if args.verbose:
                print(f"{fmt}: cases {start}..{start + count - 1} done "
                      f"({time.monotonic() - t0:.0f} s)", flush=True)

    threads = [threading.Thread(target=slot, args=(i,)) for i in range(args.jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shutil.rmtree(driver.tmp, ignore_errors=True)
    report(driver, args, time.monotonic() - t0)
    return 1 if driver.failures else 0


def report(driver: Driver, args, seconds: float) -> None:
    print(f"\n{'format':<15}{'cases':>9}{'loaded':>9}{'refused':>9}{'failed':>8}")
    total = 0
    for name, c in sorted(driver.counts.items()):
        n = sum(c.values())
        total += n
        failed = sum(v for k, v in c.items() if k in FAILURES)
        print(f"{name:<15}{n:>9}{c.get('ok', 0):>9}{c.get('refused', 0):>9}{failed:>8}")
    print(f"{total} cases in {seconds:.0f} s (seeds {args.seed}..{args.seed + args.cases - 1})")
    groups: dict = {}
    for f in driver.failures:
        groups.setdefault(f.key(), []).append(f)
    if groups:
        print(f"\n{len(driver.failures)} failed cases, {len(groups)} distinct:")
    for key, fs in groups.items():
        f = fs[0]
        print(f"- {f.format}: {f.status} {f.error} x{len(fs)}: {f.message[:200]}\n"
              f"    at {f.where or '?'} (loader {f.loader})\n    replay: {f.replay()}")


def replay(args) -> int:
    fmt = formats(args.format)[0]
    seed, _, kind = args.replay.partition(":")
    work = scratch_dir()
    out = run_case(fmt, int(seed), work, kind=kind or None, time_limit=args.time_limit,
                   verbose=True)
    print(json.dumps(out.to_dict(), indent=2))
    print(f"the case's files are in {os.path.join(work, 'case')}")
    return 1 if out.failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, default=1000, help="cases per format (default 1000)")
    p.add_argument("--format", action="append", help="a format (repeatable; default: all)")
    p.add_argument("--seed", type=int, default=0, help="the first case's seed (default 0)")
    p.add_argument("--replay", metavar="SEED:KIND", help="run one case, with its traceback")
    p.add_argument("--jobs", type=int, default=2, help="worker processes at once (default 2)")
    p.add_argument("--time-limit", type=float, default=10.0, help="seconds a case may take")
    p.add_argument("--memory-mb", type=int, default=1024,
                   help="address space a worker may add after start-up (default 1024 MB)")
    p.add_argument("--list", action="store_true", help="list the formats and mutations")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--state", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.list:
        for f in formats():
            missing = f" (needs {', '.join(f.missing())})" if f.missing() else ""
            print(f"{f.name:<14}{f.doc}{missing}\n{'':<14}mutations: "
                  f"{', '.join(sorted(f.mutators))}")
        return 0
    if args.worker:
        worker(args)
        return 0
    if args.replay:
        if not args.format or len(args.format) != 1:
            p.error("--replay needs one --format")
        return replay(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
