"""Running one model over more than one core: threads.py splits a batch across worker threads in
one process (each with its share of the cores as BLAS threads)."""
