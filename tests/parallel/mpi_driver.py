"""The training command as the MPI tests run it under mpiexec: the synthetic MNIST files of the
test pass the checksum check (their sums come in MINIVIT_TEST_SUMS, JSON), and a fault can be
injected with MINIVIT_TEST_FAULT="rank:step:kind" (kind: raise, kill for SIGKILL, or nan: that
rank's images become NaN, so the summed loss diverges), MINIVIT_TEST_FULL_DISK=1 makes rank 0's
checkpoint writes fail as on a full disk, MINIVIT_TEST_EVAL_FAULT=R makes rank R's evaluation
raise (outside any collective step: the abort path), and MINIVIT_TEST_OFFLINE=1 makes every
download attempt fail at once."""
import json
import os
import signal

from minivit.data import mnist
from minivit.training import loop

mnist.MNIST_FILES.update(json.loads(os.environ["MINIVIT_TEST_SUMS"]))
if os.environ.get("MINIVIT_TEST_OFFLINE") == "1":
    from minivit.data import download
    download._urlopen = None
fault = os.environ.get("MINIVIT_TEST_FAULT")
if fault:
    rank, step, kind = fault.split(":")
    real_step, calls = loop.train_step, {"n": 0}

    def faulty_step(model, opt, x, y, lr, opts, *args, **kwargs):
        calls["n"] += 1
        from minivit import parallel
        if parallel.world().rank == int(rank) and calls["n"] == int(step):
            if kind == "nan":
                return real_step(model, opt, x * float("nan"), y, lr, opts, *args, **kwargs)
            if kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            real_losses = loop.cross_entropy_losses        # raise inside the step's forward

            def faulty_losses(*a, **k):
                from minivit.errors import UserError       # a user error, as bad data is
                raise UserError(f"injected fault on rank {rank} at step {step}")
            loop.cross_entropy_losses = faulty_losses
            try:
                return real_step(model, opt, x, y, lr, opts, *args, **kwargs)
            finally:
                loop.cross_entropy_losses = real_losses
        return real_step(model, opt, x, y, lr, opts, *args, **kwargs)
    loop.train_step = faulty_step

if os.environ.get("MINIVIT_TEST_FULL_DISK") == "1":
    import errno

    from minivit.files import WriteError

    def full_disk(path, *args, **kwargs):
        raise WriteError(errno.ENOSPC, "No space left on device", path)
    loop.save_checkpoint = full_disk

if os.environ.get("MINIVIT_TEST_EVAL_FAULT"):
    real_evaluate = loop.evaluate

    def faulty_evaluate(*args, **kwargs):
        from minivit import parallel
        from minivit.errors import UserError
        if parallel.world().rank == int(os.environ["MINIVIT_TEST_EVAL_FAULT"]):
            raise UserError("injected evaluation fault")
        return real_evaluate(*args, **kwargs)
    loop.evaluate = faulty_evaluate

from minivit.cli.train import entry  # noqa: E402

entry()
