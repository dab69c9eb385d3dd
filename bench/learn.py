"""Learning benchmark: train on real data with each recipe and starting point, and compare the mAP they reach.

    python bench/learn.py                                   # raccoon x {scratch, conv15, coco80} + shapes, both recipes
    python bench/learn.py --sets raccoon --starts scratch --recipes 2020
    python bench/learn.py --device 0                        # on a GPU
    python bench/learn.py --train-args="--no-ema"           # extra train.py flags for every run (ablations)

Data: ``raccoon`` is ``../shared/datasets/raccoon`` (200 photos, one class, Pascal VOC XML, the author's 160/40
split), converted once with ``utils.convert.convert_voc`` into ``<out>/data/raccoon`` (or pass a ready ``.data``
file with ``--raccoon-data``); ``shapes`` is the built-in set (``data/shapes.data``). Starting points for
yolov3-tiny: ``scratch`` (``--weights ''``), ``conv15`` (the ``yolov3-tiny.conv.15`` backbone, cut here from the
official COCO weights with ``utils.weights.save_weights(..., cutoff=15)``) and ``coco80`` (the full 80-class official
``.weights`` file onto the data set's classes). Every run is a separate ``train.py`` process with the settings of
the learning issue's check (``--img-size 320 --batch-size 16 --epochs 60`` on raccoon; the README's first command's
``--img-size 160 --epochs 30`` on shapes) and every other setting at its default, except ``--recipe``.

Prints one row per run (final and best mAP@0.5 and mAP@0.5:0.95, wall time), the mAP@0.5 per epoch, writes
``<out>/learn.json`` and ``<out>/learn.png`` (mAP@0.5 against epoch, one line per recipe, one panel per set and
start). Runs already finished in ``<out>/runs`` are read back, not repeated (``--fresh`` repeats them).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script (python bench/learn.py): make the repository importable
    sys.path.insert(0, str(REPO))

SHARED = REPO.parent / "shared"
RACCOON = SHARED / "datasets" / "raccoon"
OFFICIAL_TINY = SHARED / "weights" / "yolov3-tiny.weights"
TINY_CFG = REPO / "cfg" / "yolov3-tiny.cfg"
SETS = ("raccoon", "shapes")
STARTS = ("scratch", "conv15", "coco80")
RECIPES = ("2020", "2019")
SET_ARGS = {  # per data set: the settings its figures are quoted at
    "raccoon": ["--img-size", "320", "--batch-size", "16", "--epochs", "60"],
    "shapes": ["--img-size", "160", "--batch-size", "16", "--epochs", "30"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    p.add_argument("--starts", nargs="+", choices=STARTS, default=list(STARTS),
                   help="starting weights for raccoon (shapes always trains from scratch)")
    p.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    p.add_argument("--epochs", type=int, default=None, help="override every set's epochs")
    p.add_argument("--device", default="cpu", help="'cpu' or a CUDA index such as '0'")
    p.add_argument("--out", default=str(REPO / "runs" / "learn"), help="work folder (data, weights, runs, report)")
    p.add_argument("--raccoon-data", default=None, help="an already converted raccoon .data file")
    p.add_argument("--train-args", default="", help="extra train.py flags for every run, e.g. '--no-ema'")
    p.add_argument("--tag", default="", help="suffix of the run names (to keep ablations apart)")
    p.add_argument("--fresh", action="store_true", help="repeat runs whose results already exist")
    return p.parse_args(argv)


def raccoon_data(out: Path, given: str | None) -> Path:
    """The raccoon ``.data`` file: the given one, or ``../shared/datasets/raccoon`` converted into ``out``."""
    if given:
        return Path(given)
    data = out / "data" / "raccoon" / "raccoon.data"
    if data.is_file():
        return data
    if not RACCOON.is_dir():
        raise FileNotFoundError(f"raccoon set not found at {RACCOON}; pass --raccoon-data FILE.data")
    from utils.convert import convert_voc

    return convert_voc(RACCOON / "annotations", RACCOON / "images", data.parent,
                       split_lists=(RACCOON / "train_labels.csv", RACCOON / "test_labels.csv"))


def start_weights(start: str, out: Path) -> str:
    """The ``--weights`` value of a starting point (the conv.15 backbone is cut from the official file once)."""
    if start == "scratch":
        return ""
    if not OFFICIAL_TINY.is_file():
        raise FileNotFoundError(f"official weights not found at {OFFICIAL_TINY}")
    if start == "coco80":
        return str(OFFICIAL_TINY)
    backbone = out / "weights" / "yolov3-tiny.conv.15"
    if not backbone.is_file():
        from models import Darknet
        from utils.weights import load_darknet_weights, save_weights

        model = Darknet(TINY_CFG)
        load_darknet_weights(model, OFFICIAL_TINY)
        backbone.parent.mkdir(parents=True, exist_ok=True)
        save_weights(model, backbone, cutoff=15)
    return str(backbone)


def read_results(results: Path) -> dict[str, list[float]]:
    """Columns of a results.txt (header line, one row per epoch) as lists of floats."""
    lines = results.read_text().splitlines()
    header = lines[0].split()
    rows = [[float(x) for x in line.split()] for line in lines[1:] if line.strip()]
    return {h: [r[i] for r in rows] for i, h in enumerate(header)}


def run_one(name: str, data: Path, weights: str, recipe: str, set_args: list[str], opts: argparse.Namespace,
            runs: Path) -> dict:
    """Train one configuration in its own process (or read back a finished one); returns its record."""
    run_dir = runs / name
    record_file = run_dir / "learn-record.json"
    if record_file.is_file() and not opts.fresh:
        return json.loads(record_file.read_text())
    if run_dir.exists():
        raise FileExistsError(f"{run_dir} exists without a finished record; remove it or pass another --tag")
    cmd = [sys.executable, str(REPO / "train.py"), "--cfg", str(TINY_CFG), "--data", str(data), "--weights", weights,
           "--recipe", recipe, "--device", opts.device, "--project", str(runs), "--name", name, *set_args,
           *shlex.split(opts.train_args)]  # fmt: skip
    print(f"\n{name}: {shlex.join(cmd)}", flush=True)
    t0 = time.time()
    log = runs / f"{name}.log"
    runs.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env={**os.environ})
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: train.py exited {proc.returncode}; see {log}")
    res = read_results(run_dir / "results.txt")
    record = {"name": name, "recipe": recipe, "weights": weights, "cmd": cmd, "wall_s": round(wall, 1),
              "map50": res["mAP@0.5"], "map": res["mAP@0.5:0.95"], "P": res["P"], "R": res["R"]}  # fmt: skip
    record_file.write_text(json.dumps(record, indent=1))
    return record


def summary_table(records: list[dict]) -> str:
    lines = [f"{'run':<34}{'final mAP@0.5':>14}{'mAP@.5:.95':>12}{'best mAP@0.5':>14}{'(epoch)':>9}{'wall':>10}"]
    for r in records:
        best = max(range(len(r["map50"])), key=r["map50"].__getitem__)
        lines.append(f"{r['name']:<34}{r['map50'][-1]:>14.3f}{r['map'][-1]:>12.3f}{r['map50'][best]:>14.3f}"
                     f"{best:>9d}{r['wall_s'] / 60:>8.1f} m")  # fmt: skip
    return "\n".join(lines)


def curve_table(records: list[dict], every: int = 5) -> str:
    n = max(len(r["map50"]) for r in records)
    epochs = sorted({*range(0, n, every), n - 1})
    lines = ["mAP@0.5 by epoch", f"{'run':<34}" + "".join(f"{e:>7d}" for e in epochs)]
    for r in records:
        lines.append(f"{r['name']:<34}" + "".join(f"{r['map50'][e]:>7.3f}" if e < len(r["map50"]) else f"{'':>7}"
                                                  for e in epochs))
    return "\n".join(lines)


def plot_curves(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({r["name"].rsplit("-", 1)[0] for r in records})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for r in records:
            if r["name"].rsplit("-", 1)[0] == panel:
                ax.plot(r["map50"], label=f"recipe {r['recipe']}")
        ax.set(title=panel, xlabel="epoch", ylabel="mAP@0.5", ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    out = Path(opts.out)
    runs = out / "runs"
    plan = []
    for data_set in opts.sets:
        set_args = list(SET_ARGS[data_set])
        if opts.epochs:
            set_args[set_args.index("--epochs") + 1] = str(opts.epochs)
        if data_set == "shapes":
            plan += [(f"shapes-scratch{opts.tag}", REPO / "data" / "shapes.data", "", r, set_args)
                     for r in opts.recipes]
            continue
        data = raccoon_data(out, opts.raccoon_data)
        for start in opts.starts:
            weights = start_weights(start, out)
            plan += [(f"raccoon-{start}{opts.tag}", data, weights, r, set_args) for r in opts.recipes]
    records = []
    for base, data, weights, recipe, set_args in plan:
        records.append(run_one(f"{base}-{recipe}", data, weights, recipe, set_args, opts, runs))
        print(summary_table(records[-1:]).splitlines()[-1], flush=True)
    print("\n" + summary_table(records) + "\n\n" + curve_table(records))
    (out / "learn.json").write_text(json.dumps(records, indent=1))
    plot_curves(records, out / "learn.png")
    print(f"\nwrote {out / 'learn.json'} and {out / 'learn.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
