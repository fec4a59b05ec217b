"""The in-place MPI all-reduce that data-parallel training runs once per step: latency and
bandwidth between the processes of this job, for message sizes from 8 bytes to ViT-B/16's
gradients (86M float32 numbers, 344 MB).

    mpiexec -n 2 python benchmarks/allreduce.py            # one host, 2 processes
    mpiexec -n 2 python benchmarks/allreduce.py --json

Prints, per size, the median time of --reps calls (after a warm-up call) and the bus bandwidth
2 (p - 1) / p * bytes / time, the figure the ring all-reduce cost model uses.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

SIZES = (1, 1_000, 206_000, 2_000_000, 21_700_000, 86_600_000)   # float32 numbers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=20, help="timed calls per size (fewer for big ones)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    p = comm.Get_size()
    rows = []
    for n in SIZES:
        buf = np.ones(n, np.float32)
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)                 # warm-up
        reps = args.reps if n < 10_000_000 else max(3, args.reps // 4)
        times = []
        for _ in range(reps):
            comm.Barrier()
            t = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            times.append(time.perf_counter() - t)
        t_med = float(np.median(times))
        nbytes = 4 * n
        rows.append({"numbers": n, "bytes": nbytes, "ms": t_med * 1e3,
                     "bus_GBps": 2 * (p - 1) / p * nbytes / t_med / 1e9, "processes": p})
    if comm.Get_rank() == 0:
        if args.json:
            for r in rows:
                print(json.dumps(r))
        else:
            print(f"in-place MPI_Allreduce (sum, float32) over {p} processes, median of the calls")
            print(f"{'numbers':>12} {'bytes':>12} {'ms':>10} {'bus GB/s':>9}")
            for r in rows:
                print(f"{r['numbers']:>12,} {r['bytes']:>12,} {r['ms']:>10.3f} {r['bus_GBps']:>9.2f}")


if __name__ == "__main__":
    main()
