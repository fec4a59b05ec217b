"""The in-place MPI all-reduce that data-parallel training runs once per step: latency and
bandwidth between the processes of this job, for message sizes from 4 bytes to ViT-B/16's
gradients (86.6M float32 numbers, 346 MB).

    mpiexec -n 2 python benchmarks/allreduce.py            # one host, 2 processes
    mpiexec -n 2 python benchmarks/allreduce.py --json     # keep the results (benchmarks/results/)

Prints, per size, the median time of --reps calls (after a warm-up call) and the bus bandwidth
2 (p - 1) / p * bytes / time, the figure the ring all-reduce cost model uses. With --json (or
--results FILE) rank 0 stamps each size's record (stamp.py) and appends it as it is measured.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import stamp  # benchmarks/ is not a package: the script's folder is on the path

SIZES = (1, 1_000, 206_000, 2_000_000, 21_700_000, 86_600_000)   # float32 numbers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=20, help="timed calls per size (fewer for big ones)")
    ap.add_argument("--sizes", type=int, nargs="+", default=SIZES, metavar="N",
                    help="float32 numbers per message (default: 4 bytes to ViT-B/16's gradients)")
    ap.add_argument("--json", action="store_true",
                    help="append every record, stamped, to benchmarks/results/<machine tag>.jsonl")
    ap.add_argument("--results", default=None, metavar="FILE",
                    help="append the records to FILE instead (implies --json)")
    args = ap.parse_args()
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    p, root = comm.Get_size(), comm.Get_rank() == 0
    sink = stamp.Sink(args.results, "allreduce.py") if root and (args.json or args.results) \
        else None
    library = " ".join(MPI.Get_library_version().split("\n")[0].split())   # "MPICH Version: 5.0.2"
    if root:
        print(f"in-place MPI_Allreduce (sum, float32) over {p} processes, median of the calls "
              f"({library})")
        print(f"{'numbers':>12} {'bytes':>12} {'ms':>10} {'bus GB/s':>9}")
    for n in args.sizes:
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
        r = {"what": "allreduce", "impl": "mpi", "device": "cpu", "numbers": n, "bytes": nbytes,
             "processes": p, "reps": reps, "ms": t_med * 1e3,
             "ms_min": min(times) * 1e3, "ms_max": max(times) * 1e3,
             "bus_GBps": 2 * (p - 1) / p * nbytes / t_med / 1e9, "mpi_library": library,
             "command": f"mpiexec -n {p} {stamp.command_line()}"}
        if root:
            print(f"{r['numbers']:>12,} {r['bytes']:>12,} {r['ms']:>10.3f} {r['bus_GBps']:>9.2f}",
                  flush=True)
            if sink:
                sink.write(r)
    if sink:
        sink.close()
        print(f"records appended to {os.path.relpath(sink.path)}")


if __name__ == "__main__":
    main()
