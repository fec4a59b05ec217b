"""The results table of benchmarks/README.md, generated from the stamped records in
benchmarks/results/*.jsonl (written by bench.py, pretrained.py and allreduce.py with --json).

    python benchmarks/table.py                       # rewrite the table in benchmarks/README.md
    python benchmarks/table.py --print               # print it instead
    python benchmarks/table.py --add OUT/results.jsonl
        # file the records of a run elsewhere (e.g. the GPU run's) under
        # benchmarks/results/<machine tag>.jsonl (records already there are not repeated),
        # then rewrite the table

Each row is the latest record (by its UTC time) for one (machine, config, batch, device,
threads, processes, TF32, what, implementation), with the machine and the commit it was
measured on: a record measured again replaces its row, other rows stay as they were measured.
The "minivit / this" column is the ratio of images/s from the same run (one sitting,
alternating processes), never from two runs. The smoke model (config tiny) is left out. The
README's table is the text between the two marker comments START and END; the rest of the
README is not touched.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import stamp  # benchmarks/ is not a package: the script's folder is on the path

START, END = "<!-- results:start -->", "<!-- results:end -->"
README = os.path.join(stamp.HERE, "README.md")
CONFIG_ORDER = ("mnist", "mnist-p4", "vit-s16", "vit-b16", "vit-b16-hf", "dinov2-s14")
IMPL_ORDER = ("minivit", "torch", "torch-sdpa", "onnx", "transformers", "mpi")
LIBRARY = {"torch": "torch", "torch-sdpa": "torch", "onnx": "onnxruntime",
           "transformers": "transformers"}


# ---- choosing the rows ------------------------------------------------------------------------
def tag(r: dict) -> str:
    return (r.get("machine") or {}).get("tag") or "unknown"


def setup(r: dict, key: str, default):
    return (r.get("setup") or {}).get(key, default)


def row_key(r: dict) -> tuple:
    """What a row stands for: a record with the same key measured later replaces it."""
    if r["what"] == "peak":
        return (tag(r), "peak", r.get("device"), r.get("threads"), r.get("impl"), r.get("n"))
    if r["what"] == "allreduce":
        return (tag(r), "allreduce", r.get("processes"), r.get("numbers"))
    return (tag(r), r.get("config"), r.get("batch"), r.get("device"), r.get("threads"),
            setup(r, "procs", 1), bool(setup(r, "tf32", False)), r["what"], r.get("impl"))


def latest(records: list) -> dict:
    """The latest record per row_key among the measurements (train, infer, peak, allreduce),
    by UTC time, the later line of the files winning a tie."""
    out = {}
    for r in records:
        if r.get("what") not in ("train", "infer", "peak", "allreduce"):
            continue
        if r.get("config") == "tiny":
            continue
        k = row_key(r)
        if k not in out or r.get("time", "") >= out[k].get("time", ""):
            out[k] = r
    return out


def ratios(records: list) -> dict:
    """(run, config, batch, device, what) -> that run's ratio record (minivit_over_<impl>)."""
    return {(r.get("run"), r.get("config"), r.get("batch"), r.get("device"), r.get("of")): r
            for r in records if r.get("what") == "ratio"}


# ---- formatting -------------------------------------------------------------------------------
def num(v, unit: str = "") -> str:
    """A number with as many digits as a benchmark can stand behind."""
    if v is None:
        return ""
    a = abs(v)
    text = (f"{v:,.0f}" if a >= 1000 else f"{v:.1f}" if a >= 100 else f"{v:.2f}" if a >= 10
            else f"{v:.3f}" if a >= 0.01 else f"{v:.2g}")
    return text + unit


def commit(r: dict) -> str:
    g = r.get("git") or {}
    if not g.get("commit"):
        return "?"
    return f"`{g['commit'][:10]}`" + ("+dirty" if g.get("dirty") else "")


def date(r: dict) -> str:
    return r.get("time", "")[:10]


def library(r: dict) -> str:
    """The library that computed it, with its version: numpy or cupy for minivit."""
    v = r.get("versions") or {}
    impl = r.get("impl")
    if impl == "minivit":
        name = "cupy" if r.get("device") == "gpu" else "numpy"
    else:
        name = LIBRARY.get(impl, impl)
    return f"{name} {v[name]}" if name in v else name or ""


def implementation(r: dict) -> str:
    text = r.get("impl", "?")
    procs = setup(r, "procs", 1)
    if procs and procs > 1:
        text += f" ({procs} processes)"
    if setup(r, "tf32", False):
        text += ", TF32"
    return text


def device(r: dict) -> str:
    if r.get("device") == "gpu":
        return "GPU"
    t = r.get("threads")
    return f"CPU, {t} thread{'s' * (t != 1)}" if t else "CPU"


def memory(r: dict) -> str:
    if r.get("gpu_peak_mb") is not None:
        return f"{r['gpu_peak_mb']:,.0f} MB GPU pool"
    if r.get("peak_rss_mb") is not None:
        return f"{r['peak_rss_mb']:,.0f} MB RSS"
    return ""


def timing(r: dict) -> str:
    text = f"{r['steps']} steps" if r.get("steps") else ""
    if r.get("aggregate"):
        n = r.get("rounds", 1)
        text += f" x {n} round{'s' * (n != 1)}"
    return text


def other_load(r: dict) -> str:
    """The most cores other processes kept busy during the measurement (or its rounds)."""
    seen = [c for c in r.get("other_cores_rounds", [r.get("other_cores")]) if c is not None]
    return f"{max(seen):.1f}" if seen else ""


def order(values: tuple, v) -> tuple:
    return (values.index(v) if v in values else len(values), str(v))


def table(header: list, rows: list) -> list:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


# ---- the table --------------------------------------------------------------------------------
def render(records: list) -> str:
    """The markdown that goes between the markers."""
    rows = latest(records)
    rat = ratios(records)
    steps = sorted((r for r in rows.values() if r["what"] in ("train", "infer")),
                   key=lambda r: (tag(r), order(CONFIG_ORDER, r.get("config")), r.get("batch", 0),
                                  r.get("device", ""), r.get("threads") or 0,
                                  r["what"] != "train", order(IMPL_ORDER, r.get("impl")),
                                  setup(r, "procs", 1), bool(setup(r, "tf32", False))))
    out = ["<!-- generated by `python benchmarks/table.py` from benchmarks/results/*.jsonl: "
           "edit those, not this -->", ""]
    if not rows:
        return "\n".join(out + ["No results recorded yet.", ""])
    out += ["**Training step and inference** (ms per step: the median of the timed steps; with "
            "several rounds, the median of the rounds' medians; other load: the most cores that "
            "other processes kept busy while it was measured, which inflates the times)", ""]
    body = []
    for r in steps:
        rr = rat.get((r.get("run"), r.get("config"), r.get("batch"), r.get("device"), r["what"]))
        ratio = (rr or {}).get(f"minivit_over_{r.get('impl')}")
        frac = f"{r['frac_peak']:.0%}" if r.get("frac_peak") else ""
        body.append([tag(r), r.get("config"), r.get("batch"), device(r), r["what"],
                     implementation(r), library(r), num(r.get("ms")),
                     num(r.get("images_per_s")), num(r.get("gflops")), frac, memory(r),
                     f"{ratio:.2f}x" if ratio else "", timing(r), other_load(r), commit(r),
                     date(r)])
    out += table(["machine", "config", "batch", "device", "what", "implementation", "library",
                  "ms/step", "images/s", "GFLOP/s", "of peak", "peak memory", "minivit / this",
                  "median of", "other load (cores)", "commit", "date"], body)

    peaks = sorted((r for r in rows.values() if r["what"] == "peak"),
                   key=lambda r: (tag(r), r.get("device", ""), order(IMPL_ORDER, r.get("impl"))))
    if peaks:
        out += ["", "**float32 matmul peak** (n x n, the median of the repetitions)", ""]
        out += table(["machine", "device", "implementation", "library", "n", "GFLOP/s", "commit",
                      "date"],
                     [[tag(r), device(r), r.get("impl"), library(r), r.get("n"),
                       num(r.get("gflops")), commit(r), date(r)] for r in peaks])

    reduces = sorted((r for r in rows.values() if r["what"] == "allreduce"),
                     key=lambda r: (tag(r), r.get("processes", 0), r.get("numbers", 0)))
    if reduces:
        out += ["", "**In-place MPI all-reduce** (float32 sum, the median of the calls)", ""]
        out += table(["machine", "processes", "float32 numbers", "bytes", "ms", "bus GB/s",
                      "MPI", "commit", "date"],
                     [[tag(r), r.get("processes"), f"{r.get('numbers', 0):,}",
                       f"{r.get('bytes', 0):,}", num(r.get("ms")), num(r.get("bus_GBps")),
                       r.get("mpi_library", ""), commit(r), date(r)] for r in reduces])

    out += scale_table(rows, rat)

    machines = {}
    for r in rows.values():
        machines.setdefault(tag(r), r.get("machine") or {})
    out += ["", "**Machines**", ""]
    body = []
    for t, m in sorted(machines.items()):
        blas = m.get("blas") or {}
        blas_text = " ".join(str(blas[k]) for k in ("name", "version") if blas.get(k))
        if blas.get("kernel"):
            blas_text += f", kernel {blas['kernel']}"
        body.append([t, m.get("cpu", "?"), m.get("cores", "?"), blas_text, m.get("gpu") or ""])
    out += table(["machine", "CPU", "cores", "NumPy's BLAS", "GPU"], body)
    return "\n".join(out + [""])


# The scale table: the models people load, as the image (and the token count) grows; what
# benchmarks/scale.sh measures. (config label, tokens) in row order, and the (what, batch) cases.
SCALE_CONFIGS = (("vit-b16", 197), ("vit-b16@384", 577), ("dinov2-b14", 257),
                 ("dinov2-b14@336", 577), ("dinov2-b14@448", 1025), ("dinov2-b14@518", 1370))
SCALE_CASES = (("infer", 1), ("infer", 4), ("train", 2))
SCALE_IMPLS = ("minivit", "transformers", "torch")


def scale_table(rows: dict, rat: dict) -> list:
    """The scale table's lines (none without its records): per machine, model and case, each
    implementation's ms/step, images/s and peak RSS, and minivit's time and memory ratios to
    transformers from the same run. minivit's rows count only where it loaded its model with
    load_pretrained (bench.py --load), as transformers loads its own."""
    cells = {}
    for r in rows.values():
        if (r["what"] not in ("train", "infer") or r.get("device") != "cpu"
                or setup(r, "procs", 1) != 1 or r.get("impl") not in SCALE_IMPLS
                or (r.get("impl") == "minivit" and not setup(r, "loaded", False))):
            continue
        cells[(tag(r), r.get("config"), r["what"], r.get("batch"), r["impl"])] = r
    body = []
    for t in sorted({k[0] for k in cells}):
        for config, tokens in SCALE_CONFIGS:
            for what, batch in SCALE_CASES:
                got = {impl: cells.get((t, config, what, batch, impl)) for impl in SCALE_IMPLS}
                mv, tf = got["minivit"], got["transformers"]
                if mv is None:
                    continue
                rr = rat.get((mv.get("run"), config, batch, "cpu", what)) or {}
                time_ratio = rr.get("minivit_over_transformers") if tf else None
                mem_ratio = (mv["peak_rss_mb"] / tf["peak_rss_mb"]
                             if tf and mv.get("peak_rss_mb") and tf.get("peak_rss_mb") else None)
                row = [t, config, tokens, f"{what} b{batch}"]
                for impl in SCALE_IMPLS:
                    r = got[impl]
                    row += ([num(r.get("ms")), num(r.get("images_per_s")),
                             num(r.get("peak_rss_mb"))] if r else ["", "", ""])
                row += [f"{time_ratio:.2f}x" if time_ratio else "",
                        f"{mem_ratio:.2f}x" if mem_ratio else "", commit(mv), date(mv)]
                body.append(row)
    if not body:
        return []
    head = ["machine", "model", "tokens", "case"]
    for impl in SCALE_IMPLS:
        head += [f"{impl} ms", f"{impl} img/s", f"{impl} RSS MB"]
    head += ["minivit speed / transformers", "minivit RSS / transformers", "commit", "date"]
    return ["", "**Scale with tokens** (`bash benchmarks/scale.sh`: the models people load, "
            "each implementation in its own processes, alternating; minivit reads its model with "
            "`load_pretrained`, transformers with `from_pretrained(attn_implementation=\"sdpa\")`"
            ", torch is the PyTorch reference built in memory; speed is the ratio of images/s, "
            "RSS the ratio of the processes' peak resident memory, both from the same run)",
            ""] + table(head, body)


def update_readme(path: str, text: str) -> None:
    """Replace what lies between START and END in the file at path with text."""
    with open(path, encoding="utf-8") as f:
        doc = f.read()
    i, j = doc.find(START), doc.find(END)
    if i < 0 or j < i:
        raise SystemExit(f"{path}: no '{START}' ... '{END}' markers; add them where the table "
                         f"goes")
    doc = doc[:i + len(START)] + "\n" + text + doc[j:]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(doc)
    os.replace(tmp, path)


def add(paths: list, results_dir: str) -> int:
    """Append the records of these files to results_dir/<machine tag>.jsonl, leaving out those
    already there; returns how many were added."""
    added, have = 0, {}
    for r in stamp.read(paths):
        dest = os.path.join(results_dir, tag(r) + ".jsonl")
        if dest not in have:
            have[dest] = {json.dumps(x, sort_keys=True)
                          for x in (stamp.read([dest]) if os.path.exists(dest) else [])}
        line = json.dumps(r, sort_keys=True)
        if line not in have[dest]:
            os.makedirs(results_dir, exist_ok=True)
            with open(dest, "a", encoding="utf-8") as f:
                f.write(json.dumps(r) + "\n")
            have[dest].add(line)
            added += 1
    return added


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="results files (default: benchmarks/results/*.jsonl)")
    ap.add_argument("--results-dir", default=stamp.RESULTS_DIR, help=argparse.SUPPRESS)
    ap.add_argument("--readme", default=README, help="the file whose table is rewritten")
    ap.add_argument("--print", action="store_true", help="print the table, write nothing")
    ap.add_argument("--add", nargs="+", metavar="FILE", default=None,
                    help="first file these records under the results folder, by machine")
    args = ap.parse_args(argv)
    if args.add:
        n = add(args.add, args.results_dir)
        print(f"{n} new records filed under {os.path.relpath(args.results_dir)}")
    files = args.files or sorted(glob.glob(os.path.join(args.results_dir, "*.jsonl")))
    text = render(stamp.read(files))
    if args.print:
        print(text)
    else:
        update_readme(args.readme, text)
        print(f"{os.path.relpath(args.readme)}: table rewritten from {len(files)} results file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
