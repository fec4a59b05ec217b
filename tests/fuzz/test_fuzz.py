"""A short fuzz run of every reader, in the suite: a few hundred mutated files per format
(formats.py), each loaded through the public loader under a time limit and an address-space
limit. Every case must load or raise the FileFormatError family naming the file. The long
run is `python -m tests.fuzz --cases 20000` (docs/reliability.md); a failure here prints the
command that replays it."""
import os

import pytest

from .formats import FORMATS
from .runner import memory_limit, run_many

CASES = {"checkpoint": 160, "checkpoint-v1": 160}         # the slowest loaders
DEFAULT_CASES = 240
KNOWN = {}  # format -> a bug the run still finds (a strict xfail, so a fix is noticed)


def _params():
    out = []
    for name in FORMATS:
        marks = [pytest.mark.xfail(reason=KNOWN[name], strict=True)] if name in KNOWN else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.mark.parametrize("name", _params())
def test_short_fuzz_run(name, tmp_path):
    fmt = FORMATS[name]
    for module in fmt.needs:
        pytest.importorskip(module, reason=f"the {name} files are written with {module}")
    if not fmt.loaders():
        pytest.skip(f"the {name} reader cannot be imported here")
    work = str(tmp_path)
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        import tempfile
        work = tempfile.mkdtemp(prefix="minivit-fuzz-", dir="/dev/shm")
    try:
        with memory_limit(1 << 30):                       # a refusal reserves nothing big
            counts, failures = run_many(fmt, range(CASES.get(name, DEFAULT_CASES)), work,
                                        time_limit=5.0)
    finally:
        if work != str(tmp_path):
            import shutil
            shutil.rmtree(work, ignore_errors=True)
    shown = "\n".join(f"{f.status} {f.error}: {f.message[:160]}\n  at {f.where}\n  "
                      f"{f.replay()}" for f in failures[:5])
    assert not failures, f"{len(failures)} of {sum(counts.values())} cases failed:\n{shown}"
    assert counts.get("ok", 0) > 0, counts                # the mutations leave some files good
    if fmt.raises:
        assert counts.get("refused", 0) > 0, counts
