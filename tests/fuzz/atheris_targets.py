"""Coverage-guided fuzzing (atheris, libFuzzer for Python) of minivit's lowest-level parsers:

    npy          a .npy stream: magic, header (files._read_array), data
    safetensors  a safetensors header (safetensors_file.read_safetensors_header)
    idx          MNIST IDX bytes, raw or gzip (mnist.idx_contents + parse_idx)
    zip          an .npz archive: central directory, members, their .npy headers (files.read_npz)

    pip install atheris        (or pip install -e ".[fuzz]")
    python tests/fuzz/atheris_targets.py npy -max_total_time=600 [CORPUS_DIR] [libFuzzer flags]

Every input must parse or raise the FileFormatError family; anything else is a crash, which
libFuzzer saves as crash-<sha1> (replay: python tests/fuzz/atheris_targets.py npy crash-...).
The corpus starts from valid files that minivit writes (formats.py's seeds).
"""
from __future__ import annotations

import io
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(os.path.dirname(HERE))]   # the repository root: tests.fuzz

import atheris  # noqa: E402

with atheris.instrument_imports():
    import minivit.files as files
    from minivit.data import mnist
    from minivit.io import safetensors_file

from minivit.files import FileFormatError  # noqa: E402

TMP = tempfile.mkdtemp(prefix="minivit-atheris-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                       else None)


def _file(data: bytes, name: str) -> str:
    path = os.path.join(TMP, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def npy(data: bytes) -> None:
    try:
        files._read_array(io.BytesIO(data), len(data), "<input>", None, FileFormatError, "fix")
    except FileFormatError:
        pass


def safetensors(data: bytes) -> None:
    try:
        safetensors_file.read_safetensors_header(_file(data, "input.safetensors"))
    except FileFormatError:
        pass


def idx(data: bytes) -> None:
    try:
        mnist.parse_idx(mnist.idx_contents(data, "<input>"), "<input>")
    except FileFormatError:
        pass


def zip_(data: bytes) -> None:
    try:
        files.read_npz(_file(data, "input.npz"))
    except FileFormatError:
        pass


TARGETS = {"npy": npy, "safetensors": safetensors, "idx": idx, "zip": zip_}


def seed_corpus(name: str, folder: str) -> None:
    """Valid inputs for a target, from the fuzz formats' seed files."""
    from tests.fuzz import mutate
    from tests.fuzz.formats import FORMATS, has
    blobs = []
    if name == "npy":
        blobs = [t["img.npy"] for t in FORMATS["npy-image"].seed_trees()]
        for t in FORMATS["checkpoint"].seed_trees()[:1]:
            blobs += [p for _, p, _ in mutate.zip_members(t["model.npz"])][:20]
    elif name == "safetensors" and has("safetensors"):
        blobs = [v for f in ("hf", "timm", "sharded") for t in FORMATS[f].seed_trees()
                 for k, v in t.items() if k.endswith(".safetensors")]
    elif name == "idx":
        blobs = [v for f in ("idx", "idx-gz") for t in FORMATS[f].seed_trees() for v in t.values()]
    elif name == "zip":
        blobs = [t["model.npz"] for f in ("checkpoint", "checkpoint-v1", "google")
                 for t in FORMATS[f].seed_trees()]
    os.makedirs(folder, exist_ok=True)
    for i, b in enumerate(blobs):
        with open(os.path.join(folder, f"seed-{i}"), "wb") as f:
            f.write(b)


def main(argv) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        raise SystemExit(f"usage: {argv[0]} {{{'|'.join(TARGETS)}}} [libFuzzer flags] [CORPUS]")
    name, rest = argv[1], argv[2:]
    if not any(not a.startswith("-") for a in rest):      # no corpus given: seed one
        corpus = os.path.join(TMP, "corpus")
        seed_corpus(name, corpus)
        rest.append(corpus)
    atheris.instrument_all()                              # zipfile, json, gzip, ast, ...
    atheris.Setup([argv[0]] + rest, TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
