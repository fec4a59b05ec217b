"""Classify photos with a model and print the top-k classes (minivit-predict, or
python -m minivit.predict).

    minivit-predict --model vit-base-patch16-224/ cat.jpg holiday/      # files and folders
    minivit-predict --model vit-base-patch16-224/ --json photos/ > predictions.jsonl
    minivit-predict --model runs/finetune/best.npz --csv top1.csv --top-k 1 photos/
    minivit-predict --model runs/mnist/best.npz --resize --top-k 3 scan.png digit.npy
    minivit-predict --model ViT-B_16.npz --gelu tanh cat.jpg             # Google .npz: indices

--model takes anything minivit.io.load_pretrained reads (a minivit checkpoint, a Google .npz, a
transformers or timm folder, a .safetensors file); --checkpoint, --npz and --pretrained are the
same flag. The model must have a classifier head (for a feature extractor such as DINOv2 use
minivit-embed). Class names are the model's (transformers' id2label, a minivit checkpoint's
folder names); "class i" when it has none.

Images (minivit/data/photos.py): files and folders; a folder is read recursively, in sorted
order, leaving out hidden files and folders and files without an image extension. Every format
Pillow reads (PNG, JPEG, WebP, BMP, GIF, TIFF, ...; the first frame of an animation; the EXIF
orientation applied; transparency composited onto white) and .npy arrays. Each image is
converted to the model's channels (gray repeated to RGB, RGB to luma) and prepared by the
model's preprocessing: a transformers or timm source's resize and center crop, then the
normalization x = (pixel / 255 - mean) / std. Without a resize in the preprocessing (minivit's
own checkpoints) images must be the model's size, unless --resize (bilinear).

--mean and --std override the normalization. Each takes ONE value: a number, or one number per
channel separated by commas (--mean 0.485,0.456,0.406), so that they cannot swallow the image
paths after them. (Before, they took several space-separated numbers; a number left among the
images is refused with a line saying so.)

Output (stdout): per image its path and the top-k classes with their probabilities; with
--json one JSON object per line and nothing else on stdout,
    {"path": "photos/cat.jpg", "top": [{"label": "tabby", "index": 281, "prob": 0.61}, ...]}
probabilities in descending order. --csv FILE also writes path,label,prob (the top class of
each image, with a header row), atomically; an existing FILE is refused unless --overwrite.

An image that cannot be read or prepared is reported on stderr with its reason and skipped; the
others are still predicted. The run ends with a summary line on stderr, and the exit status is 1
when an image was skipped (2 for a user error: a bad flag, an unreadable model, no images).
A progress bar on stderr shows for more than a few images when stderr is a terminal (--quiet:
none, and no notes).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys

import numpy as np

from ..data.photos import find_images, fit_image, needs_pillow, read_batches
from ..errors import UserError
from ..parallel.threads import Runtime
from . import Parser, add_device_args, add_model_arg, command_name, load_model, run, use_device
from .flags import add_overwrite_arg, count, new_output

PROGRESS_MIN = 5                  # a progress bar from this many images on
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class Results(list):
    """What main returns: one dict per image predicted, in order, and .skipped, the
    [(path, reason)] of the images that were not. A predicted image's dict is its --json record
    {'path', 'top': [{'label', 'index', 'prob'}, ...]} plus 'file' (= path) and, in each entry
    of 'top', 'class' (= label): the names of these fields before --json, kept for scripts."""

    def __init__(self, items=(), skipped=()):
        super().__init__(items)
        self.skipped = list(skipped)


# ---- flags shared with minivit-embed -------------------------------------------------------------
def add_image_args(ap: argparse.ArgumentParser, batch_size: int) -> None:
    """The flags of a command that runs a model over photos: --gelu, --resize, --mean, --std,
    --batch-size, --quiet, --device/--tf32 and the IMAGE_OR_FOLDER arguments."""
    ap.add_argument("--gelu", choices=("tanh", "erf"), default=None,
                    help="GELU of a foreign model (default: the source's; tanh for a Google "
                         ".npz); a minivit checkpoint records its own")
    ap.add_argument("--resize", action="store_true",
                    help="resize images to the model's size (bilinear) when its preprocessing "
                         "has no resize of its own, instead of skipping them")
    ap.add_argument("--mean", type=numbers, default=None, metavar="M[,M,M]",
                    help="override the normalization mean of pixel/255: one number, or one per "
                         "channel separated by commas (0.485,0.456,0.406)")
    ap.add_argument("--std", type=positive_numbers, default=None, metavar="S[,S,S]",
                    help="see --mean; each > 0")
    ap.add_argument("--batch-size", type=count, default=batch_size,
                    help=f"images per forward pass (default {batch_size})")
    ap.add_argument("--quiet", action="store_true", help="no progress bar and no notes")
    add_device_args(ap, workers=False)
    ap.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                    help="image files (any format Pillow reads, or .npy) and folders of them "
                         "(read recursively)")


def numbers(text: str) -> list:
    """--mean: one number, or one per channel separated by commas (spaces allowed)."""
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if not values or not all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"takes one number or one per channel separated by "
                                         f"commas (0.485,0.456,0.406), got {text!r}")
    return values


def positive_numbers(text: str) -> list:
    """--std: as numbers, each > 0."""
    values = numbers(text)
    if min(values) <= 0:
        raise argparse.ArgumentTypeError(f"takes numbers > 0 (one, or one per channel separated "
                                         f"by commas), got {text!r}")
    return values


def check_images_arg(ap: argparse.ArgumentParser, args) -> None:
    """A number among the images is the old `--mean 0.5 0.5 0.5 img` form, whose extra numbers
    now land there: refused at parsing, saying how --mean and --std are written now."""
    if args.mean is not None or args.std is not None:
        stray = [p for p in args.images if NUMBER.fullmatch(p) and not os.path.exists(p)]
        if stray:
            ap.error(f"{stray[0]!r} is given as an image but is a number: --mean and --std take "
                     f"ONE value, comma-separated per channel (--mean 0.5,0.5,0.5 --std "
                     f"0.25,0.25,0.25), not several")


def output_file(flag: str, path: str, overwrite: bool) -> None:
    """An output file: refused when it exists, unless --overwrite (flags.new_output), and
    always when it is a folder."""
    if os.path.isdir(path):
        raise UserError(f"{flag} {path} is a folder; give a file name in it, e.g. {flag} "
                        f"{os.path.join(path, 'out' + ('.csv' if flag == '--csv' else '.npz'))}")
    new_output(path, overwrite, flag)


def normalization(model, args, where: str) -> tuple:
    """(mean, std) of --mean/--std, else the model's Preprocessing; each one value or one per
    channel."""
    pre = model.preprocessing
    mean = args.mean if args.mean is not None else pre.mean if pre is not None else None
    std = args.std if args.std is not None else pre.std if pre is not None else None
    if mean is None or std is None:
        raise UserError(f"{where} records no normalization (mean and std of pixel / 255); "
                        f"pass --mean and --std as used in training")
    C = model.config.in_channels
    for flag, v in (("--mean", mean), ("--std", std)):
        if len(v) not in (1, C):
            raise UserError(f"{flag} has {len(v)} values for the model's {C} channel(s); give "
                            f"one value or {C} separated by commas")
    return mean, std


# ---- a run over the images ---------------------------------------------------------------------
class ImageRun:
    """The images of a command and what it says about them on stderr: finds them (inputs
    that do not exist are skipped), reads them in batches, reports each skipped file with its
    reason, shows a progress bar, counts channel conversions, and prints the summary."""

    def __init__(self, args, verb: str):
        self.args, self.verb = args, verb
        self.paths, self.skipped = find_images(args.images)
        if not self.paths and not self.skipped:
            raise UserError(f"no images found in {', '.join(args.images)} (image files: "
                            f".png, .jpg, .webp, .bmp, .gif, .tif, ... or .npy; hidden files "
                            f"are left out)")
        missing = needs_pillow(self.paths)
        if missing:
            more = f" (and {len(missing) - 1} more image files)" if len(missing) > 1 else ""
            raise UserError(f"{missing[0]}{more}: reading image files needs Pillow, which is "
                            f"not installed; run `pip install -e .[images]` (or pip install "
                            f"pillow), or convert the images to .npy")
        self.converted = {1: 0, 3: 0}                # source channels -> images converted
        self.bar = None

    def say(self, line: str) -> None:
        """A line on stderr that does not tear the progress bar."""
        from tqdm import tqdm
        tqdm.write(line, file=sys.stderr)

    def out(self, text: str) -> None:
        """Result text on stdout, above the progress bar."""
        from tqdm import tqdm
        tqdm.write(text, file=sys.stdout)

    def batches(self, model):
        """(paths, uint8 images (b, C, S, S)) per batch, the unreadable files reported."""
        from tqdm import tqdm
        for path, reason in self.skipped:
            self.say(f"skipped: {path}: {reason}")
        cfg, pre, a = model.config, model.preprocessing, self.args

        def prepare(img, path):
            return fit_image(img, path, cfg.image_size, cfg.in_channels, pre, a.resize)

        show = (not a.quiet and len(self.paths) >= PROGRESS_MIN and sys.stderr.isatty())
        with tqdm(total=len(self.paths), unit="img", desc=self.verb, file=sys.stderr,
                  disable=not show, leave=False, dynamic_ncols=True) as self.bar:
            for b in read_batches(self.paths, prepare, a.batch_size):
                for path, reason in b.skipped:
                    self.say(f"skipped: {reason}")
                self.skipped += b.skipped
                for c in b.channels:
                    if c != cfg.in_channels:
                        self.converted[c] += 1
                if b.images is not None:
                    yield b.paths, b.images
                self.bar.update(b.done)

    def finish(self, done: int, what: str = "") -> None:
        """The notes, then the summary line: how many images, how many skipped."""
        kind = {1: "grayscale", 3: "RGB"}
        if not self.args.quiet:
            for c, n in self.converted.items():
                if n:
                    to = 3 if c == 1 else 1
                    self.say(f"note: {n} {kind[c]} image{'s' * (n != 1)} converted to "
                             f"{kind[to]} for the {to}-channel model")
        total = done + len(self.skipped)
        if self.skipped:
            self.say(f"{self.verb}: {done} of {total} images, {len(self.skipped)} skipped "
                     f"(reasons above){what}")
        elif not self.args.quiet:
            self.say(f"{self.verb}: {done} image{'s' * (done != 1)}{what}")


# ---- predict ------------------------------------------------------------------------------------
def build_parser() -> Parser:
    ap = Parser(
        prog=command_name("minivit-predict"),
        description="Print the top-k classes of photos (files and folders).",
        epilog="--mean/--std take one comma-separated value (--mean 0.485,0.456,0.406). Exit "
               "status 1 when an image was skipped, 2 for a user error.")
    add_model_arg(ap, help="; its preprocessing is applied")
    ap.add_argument("--top-k", type=count, default=None,
                    help="classes to show per image (default 5, at most the model's classes)")
    ap.add_argument("--json", action="store_true",
                    help='one JSON object per image on stdout, nothing else: {"path": ..., '
                         '"top": [{"label": ..., "index": ..., "prob": ...}, ...]}')
    ap.add_argument("--csv", default=None, metavar="FILE",
                    help="also write path,label,prob of each image's top class to FILE")
    add_overwrite_arg(ap, "the --csv FILE")
    add_image_args(ap, batch_size=64)
    return ap


def classifier(args, runtime: Runtime) -> tuple:
    """(model, class names or None, mean, std) from --model, --gelu, --mean and --std; the
    model runs on the command's runtime."""
    model, _ = load_model(args.model, args.gelu, runtime=runtime)
    if not model.config.num_classes:
        raise UserError(f"{args.model} has no classifier head (a feature extractor: forward "
                        f"returns its pooled features); get its features with minivit-embed, "
                        f"or fine-tune a head first")
    pre = model.preprocessing
    names = pre.class_names if pre is not None else None
    K = model.config.num_classes
    if names is not None and len(names) != K:
        if not args.quiet:
            print(f"note: the checkpoint names {len(names)} classes but the model has {K} "
                  f"outputs; showing class indices", file=sys.stderr)
        names = None
    mean, std = normalization(model, args, args.model)
    return model, names, mean, std


def format_result(path: str, top: list) -> str:
    """'path' then one line per class: rank, name, probability."""
    w = max(len(t["label"]) for t in top)
    return "\n".join([path] + [f"  {r + 1}. {t['label']:<{w}}  {t['prob']:.4f}"
                               for r, t in enumerate(top)])


def top_classes(p: np.ndarray, k: int, names) -> list:
    """The k most probable classes of one image, probability descending (ties: lower index)."""
    order = np.argsort(-p, kind="stable")[:k]
    return [{"label": str(names[i]) if names else f"class {i}", "index": int(i),
             "prob": float(p[i])} for i in order]


def csv_bytes(results: list) -> bytes:
    """path,label,prob (the top class) per image, with a header row; UTF-8."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label", "prob"])
    for r in results:
        w.writerow([r["path"], r["top"][0]["label"], f"{r['top'][0]['prob']:.6f}"])
    return buf.getvalue().encode("utf-8")


def main(argv=None) -> Results:
    """Predict and print; return the Results (per image its record, and .skipped)."""
    from ..files import atomic_write
    from ..training.evaluate import predict_probs
    ap = build_parser()
    args = ap.parse_args(argv)
    check_images_arg(ap, args)
    if args.csv is not None:
        output_file("--csv", args.csv, args.overwrite)
    images = ImageRun(args, "predict")
    model, names, mean, std = classifier(args, use_device(args))
    K = model.config.num_classes
    k = min(args.top_k or 5, K)
    if args.top_k is not None and args.top_k > K and not args.quiet:
        print(f"note: --top-k {args.top_k} is more than the model's {K} classes; showing {K}",
              file=sys.stderr)
    results = Results()
    for paths, batch in images.batches(model):
        probs = predict_probs(model, batch, len(batch), mean, std)       # (b, K)
        for path, p in zip(paths, probs):
            top = top_classes(p, k, names)
            record = {"path": path, "top": top}
            images.out(json.dumps(record) if args.json else format_result(path, top))
            results.append({"path": path, "file": path,
                            "top": [{**t, "class": t["label"]} for t in top]})
    results.skipped = images.skipped
    wrote = ""
    if args.csv is not None and results:
        atomic_write(args.csv, lambda f: f.write(csv_bytes(results)))
        wrote = f"; top classes written to {args.csv}"
    elif args.csv is not None:
        wrote = f"; nothing written to {args.csv}"
    images.finish(len(results), wrote)
    return results


def run_photos(main) -> None:
    """run(main) for a command over photos (predict, embed): exit status 1 when it skipped an
    image (Results.skipped), after the others were done."""
    results = run(main)
    if results.skipped:
        raise SystemExit(1)


def entry() -> None:
    """The minivit-predict console script: exit status 1 when an image was skipped."""
    run_photos(main)


if __name__ == "__main__":
    entry()
