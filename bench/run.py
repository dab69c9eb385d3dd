"""Benchmark the trainer on this machine and compare with the reference trainer's figures.

    python bench/run.py [--device cpu|0] [--quick] [--only train,loader,infer,nms,epoch,ceiling]
                        [--data DIR|FILE.data] [--json OUT.json] [--reps N] [--threads N]
                        [--channels-last/--no-channels-last] [--bf16] [--weights W] [--train-py]

Prints the machine, then one table per section as it finishes, then the comparison with
../shared/reference/baseline-cpu.md, and writes everything to a JSON file (bench/README.md documents the
layout and how each figure is measured). Exit status 1 if a section failed (its error is in the JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script (python bench/run.py): make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.ceilings import ceiling_shares, measure_ceilings  # noqa: E402
from bench.reference import compare  # noqa: E402
from bench.synthetic import write_random_dataset  # noqa: E402
from bench.timing import CpuMeter, load_average, machine_info, usable_cores  # noqa: E402
from utils.general import tune_malloc  # noqa: E402

LOGGER = logging.getLogger("bench")
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "datasets" / "coco128"
SECTIONS = ("ceiling", "nms", "loader", "infer", "train", "epoch", "memory")
IMAGE_SUFFIXES = {".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".dng", ".webp"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="'cpu' or a CUDA index such as '0' (default cpu)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, 1 repetition, 8 images: checks that everything runs (seconds)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run, from {','.join(SECTIONS)} (default all)")
    parser.add_argument("--data", default=None,
                        help="image set: a coco128-style folder (images/train2017 inside), a folder of images, "
                             f"or a .data file (its train set); default {DEFAULT_DATA}, else a generated "
                             "random set (loader/epoch figures then not comparable)")
    parser.add_argument("--json", default=None,
                        help="output file (default bench/results-<host>-<date>.json)")
    parser.add_argument("--reps", type=int, default=5,
                        help="timed repetitions per figure after the warm-up (default 5; expensive figures "
                             "stop early after --budget seconds, with at least 2)")
    parser.add_argument("--budget", type=float, default=20.0,
                        help="seconds of timed repetitions allowed per figure (default 20)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (default: the cores this process may use)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="channels-last models and inputs for training and inference (default on)")
    parser.add_argument("--bf16", action="store_true",
                        help="also measure bfloat16 autocast (train, inference, ceilings) on CPU")
    parser.add_argument("--weights", default=None,
                        help="trained weights for the NMS figures (outputs on real images instead of the "
                             "synthetic generator)")
    parser.add_argument("--nms-cfg", default="cfg/yolov3-tiny.cfg", help="cfg of --weights (default tiny)")
    parser.add_argument("--nms-img-size", type=int, default=320, help="image size for --weights (default 320)")
    parser.add_argument("--train-py", action="store_true",
                        help="epoch section also times `python train.py --epochs 1 --notest` (tiny@320)")
    parser.add_argument("--epoch-workers", type=int, default=2, help="DataLoader workers of the epoch (default 2)")
    parser.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                        help="glibc heap settings: 'tuned' as train.py/test.py/detect.py set them "
                             "(utils.general.tune_malloc), or the C library's 'default' (for A/B runs)")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.reps < 1:
        parser.error(f"--reps must be >= 1, got {args.reps}")
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")
    if args.weights and not Path(args.weights).is_file():
        parser.error(f"--weights {args.weights}: file not found")
    return args


def select_device(arg: str) -> torch.device:
    """'cpu' or a CUDA index ('0'); a CUDA index without CUDA is an error naming the fix."""
    if arg == "cpu":
        return torch.device("cpu")
    if not arg.isdigit():
        raise ValueError(f"--device {arg!r}: expected 'cpu' or a CUDA index such as '0'")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {arg}: CUDA is not available on this machine; use --device cpu")
    return torch.device(f"cuda:{arg}")


def resolve_images(data: str | None, quick: bool, scratch: Path) -> tuple[str | list[str], dict[str, object]]:
    """The image set every section uses (a folder path, or a list of 8 image paths with --quick) and a
    description of where it came from."""
    if data is None:
        root = DEFAULT_DATA if DEFAULT_DATA.is_dir() else None
        if root is None:
            LOGGER.warning("%s not found: generating a random image set; loader and epoch figures are then not "
                           "comparable with the reference", DEFAULT_DATA)
            folder = write_random_dataset(scratch / "random-set", n=8 if quick else 128)
            return _limit(folder, quick), {"source": "random", "path": str(folder)}
    else:
        root = Path(data)
    if root.suffix == ".data":
        from utils.data_files import resolve_data_cfg

        train = resolve_data_cfg(root)["train"]
        if quick:
            train = train[0] if isinstance(train, list) else train
            return _limit(Path(train), quick), {"source": str(root), "path": train}
        return train, {"source": str(root), "path": train}
    if not root.exists():
        raise FileNotFoundError(f"--data {root}: not found; give a coco128-style folder or a .data file")
    folder = root / "images" / "train2017" if (root / "images" / "train2017").is_dir() else root
    return _limit(folder, quick), {"source": "folder", "path": str(folder)}


def _limit(folder: Path, quick: bool) -> str | list[str]:
    """The folder itself, or with --quick its first 8 images."""
    if not quick or folder.is_file():
        return str(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [str(p) for p in files[:8]]


def plan(args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    """Models, sizes, batches and precisions of each section for this device and mode."""
    cfg = REPO_ROOT / "cfg"
    tiny, spp = cfg / "yolov3-tiny.cfg", cfg / "yolov3-spp.cfg"
    if args.quick:
        return {
            "train": [(tiny, 64, 2)], "train_precisions": ["fp32"] + (["bf16"] if args.bf16 else []),
            "infer": [(tiny, 64)], "infer_batches": [1, 2], "loader_sizes": [64], "loader_workers": [0],
            "loader_batch": 4, "epoch": (tiny, 64, 4, 0), "nms_images": 2,
            "cudnn_benchmark": [False], "train_loader": (tiny, 64, 4, 0, 1) if device.type == "cuda" else None,
        }
    gpu = device.type == "cuda"
    return {
        "train": [(tiny, 320, 32 if gpu else 16), (spp, 416, 32 if gpu else 4)],
        "train_precisions": ["amp"] if gpu else ["fp32"] + (["bf16"] if args.bf16 else []),
        "infer": [(tiny, 320), (tiny, 416), (spp, 416)],
        "infer_batches": [1, 16],
        "loader_sizes": [320, 416],
        "loader_workers": [0, 2],
        "loader_batch": 16,
        "epoch": (tiny, 320, 16, args.epoch_workers),
        "nms_images": 16,
        # GPU: cuDNN's autotuner off (train.py's setting today) and on; CPU: not applicable
        "cudnn_benchmark": [False, True] if gpu else [False],
        # GPU: does the real loader keep spp@416 batch 32 fed? (model, size, batch, workers, passes over 4x the set)
        "train_loader": (spp, 416, 32, min(8, max(1, usable_cores() - 1)), 4) if gpu else None,
    }


def default_hyp() -> dict[str, float]:
    from utils.hyp import DEFAULT_HYP

    return dict(DEFAULT_HYP)


def run_sections(
    args: argparse.Namespace,
    device: torch.device,
    results: dict[str, object],
    scratch: Path,
    save: Callable[[], None] = lambda: None,
) -> None:
    """Run every asked-for section, storing its rows, timing and load in `results` and printing its table;
    `save` is called after each section (the JSON so far: a run stopped by a time limit keeps what it had).

    A failing section is logged with its traceback and recorded under results['errors']; the others still
    run (one missing module should not cost a 15-minute run).
    """
    p = plan(args, device)
    reps = 1 if args.quick else args.reps
    budget = 1.0 if args.quick else args.budget
    images: str | list[str] | None = None
    if {"loader", "train", "epoch", "memory"} & set(args.sections) or args.weights:
        images, results["data"] = resolve_images(args.data, args.quick, scratch)
    quick, cl = args.quick, args.channels_last
    sections = {
        "memory": ("memory", lambda: section_memory(images, quick)),
        "ceiling": ("ceilings", lambda: measure_ceilings(device, reps=max(reps, 5) if not quick else 1, quick=quick,
                                                         bf16=args.bf16)),
        "nms": ("nms", lambda: section_nms(args.weights, args.nms_cfg, args.nms_img_size, images, p["nms_images"],
                                           quick, reps, device)),
        "loader": ("loader", lambda: section_loader(images, p["loader_sizes"], p["loader_workers"],
                                                    p["loader_batch"], reps)),
        "infer": ("infer", lambda: section_infer(p["infer"], p["infer_batches"], device, cl, args.bf16, reps,
                                                 budget)),
        "train": ("train", lambda: section_train(p["train"], p["train_precisions"], p["cudnn_benchmark"],
                                                 p["train_loader"], device, cl, images, reps, budget,
                                                 results.get("ceilings") or {})),
        "epoch": ("epoch", lambda: section_epoch(p["epoch"], device, cl, images, quick, reps,
                                                 args.train_py and not quick, scratch)),
    }
    for name in SECTIONS:
        if name in args.sections:
            key, fn = sections[name]
            run_section(name, key, fn, results)
            save()


def run_section(name: str, key: str, fn: Callable[[], object], results: dict[str, object]) -> None:
    """Run one section: its figures go to results[key] and its load and CPU time to results['sections'][name],
    and its table is printed; a failure goes to results['errors'][name] (and stderr) instead."""
    load_before = load_average()
    meter = CpuMeter()
    print(f"\n== {name} (load average {load_before}) ==", flush=True)
    try:
        results[key] = fn()
    # A benchmark harness: any failure of one workload is recorded and the run goes on to the next.
    except Exception as e:  # noqa: BLE001
        LOGGER.error("section %s failed: %s", name, e)
        results["errors"][name] = "".join(traceback.format_exception(e))
        print(results["errors"][name], file=sys.stderr)
        return
    results["sections"][name] = {"load_before": load_before, "load_after": load_average(), **meter.read()}
    print(format_section(key, results[key]), flush=True)


def section_nms(
    weights: str | None, nms_cfg: str, nms_img_size: int, images: str | list[str] | None, n_images: int,
    quick: bool, reps: int, device: torch.device,
) -> object:
    """NMS figures on a trained model's outputs (with --weights) or on the synthetic generator's."""
    from bench.inference import bench_nms, model_predictions, synthetic_nms

    if weights:
        pred, nc = model_predictions(REPO_ROOT / nms_cfg, Path(weights), images, nms_img_size, n_images, device)
        layout = f"{Path(nms_cfg).stem}@{nms_img_size}/nc{nc}"
        return bench_nms(pred, "weights", layout, [0.001, 0.1], max(reps, 3))
    return synthetic_nms(quick, n_images, max(reps, 3) if not quick else 1, device)


def section_loader(
    images: str | list[str], sizes: list[int], workers: list[int], batch: int, reps: int
) -> list[dict[str, object]]:
    """Data loader rows for every image size and cache mode."""
    from bench.loading import CACHE_MODES, bench_loader

    rows = []
    for size in sizes:
        for mode in CACHE_MODES:
            rows += bench_loader(images, size, workers, mode, default_hyp(), batch, max(1, min(reps, 3)))
    return rows


def section_infer(
    specs: list[tuple[Path, int]], batches: list[int], device: torch.device, channels_last: bool, bf16: bool,
    reps: int, budget: float,
) -> list[dict[str, object]]:
    """Inference rows for every (cfg, size) in `specs`: fp32, plus bf16 on a CPU when asked, plus AMP on a GPU."""
    from bench.inference import bench_inference

    precisions = ["fp32"] + (["bf16"] if bf16 and device.type == "cpu" else [])
    precisions += ["amp"] if device.type == "cuda" else []
    rows = []
    for cfg, size in specs:
        rows += bench_inference(cfg, size, batches, device, channels_last, precisions, reps, budget)
    return rows


def section_train(
    specs: list[tuple[Path, int, int]], precisions: list[str], autotune_settings: list[bool],
    loader_spec: tuple[Path, int, int, int, int] | None, device: torch.device, channels_last: bool,
    images: str | list[str] | None, reps: int, budget: float, ceilings: dict[str, object],
) -> list[dict[str, object]]:
    """Training-step rows for every (cfg, size, batch) of `specs`, precision and cuDNN autotuner setting (each with
    its share of the kernel `ceilings`), then with `loader_spec` (a GPU) the row of training through the real
    loader (train_loader_row)."""
    from bench.training import bench_train_step

    rows = []
    for cfg, size, batch in specs:
        for precision in precisions:
            for autotune in autotune_settings:
                torch.backends.cudnn.benchmark = autotune
                rows.append(bench_train_step(cfg, size, batch, precision, device, channels_last, default_hyp(),
                                             images, reps, budget * 2))
                row = rows[-1]
                row["cudnn_benchmark"] = autotune if device.type == "cuda" else None
                row["ceiling_share"] = ceiling_shares(row["achieved_gflops"], precision, ceilings)
    torch.backends.cudnn.benchmark = False
    if loader_spec and images is not None:
        rows.append(train_loader_row(loader_spec, device, channels_last, images))
    return rows


def section_epoch(
    spec: tuple[Path, int, int, int], device: torch.device, channels_last: bool, images: str | list[str],
    quick: bool, reps: int, train_py: bool, scratch: Path,
) -> dict[str, object]:
    """Whole epochs through the real loader (`spec`: cfg, size, batch, workers), and with `train_py` the wall
    time of a train.py process."""
    from bench.training import bench_epoch

    cfg, size, batch, workers = spec
    precision = "amp" if device.type == "cuda" else "fp32"
    out = bench_epoch(cfg, size, batch, workers, device, channels_last, precision, default_hyp(), images,
                      reps=1 if quick else min(reps, 3))
    if train_py:
        out.update(time_train_py(scratch, device))
    return out


def section_memory(images: str | list[str], quick: bool) -> dict[str, object]:
    """RAM image cache and heap figures."""
    from bench.memory import bench_memory

    return bench_memory(images, quick, default_hyp(), torch.get_num_threads())


def train_loader_row(
    spec: tuple[Path, int, int, int, int], device: torch.device, channels_last: bool, images: str | list[str]
) -> dict[str, object]:
    """Training through the real loader on a GPU (the step alone does not say whether the loader keeps up):
    `repeat` copies of the image set as one epoch (so that an epoch is more than a few batches), two epochs:
    the first decodes every image (cold RAM cache), the second reads them from the cache. Returns the epoch
    figures of bench_epoch with kind 'loader' (images/s and data-wait share of each epoch)."""
    from bench.training import bench_epoch

    cfg, size, batch, workers, repeat = spec
    if isinstance(images, str) and Path(images).is_dir():
        files = sorted(str(f) for f in Path(images).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) * repeat
    elif isinstance(images, str):  # a list file: used as it is
        files = images
    else:
        files = list(images) * repeat
    out = bench_epoch(cfg, size, batch, workers, device, channels_last, "amp", default_hyp(), files, reps=2)
    return {"kind": "loader", **out}


def time_train_py(scratch: Path, device: torch.device) -> dict[str, object]:
    """Wall time of `python train.py --epochs 1 --notest` for yolov3-tiny@320 on coco128 (a whole process:
    start-up, dataset scan, one epoch, the final-epoch test the reference also runs, saving)."""
    data = scratch / "coco128-bench.data"
    data.write_text(f"classes=80\ntrain={DEFAULT_DATA / 'images' / 'train2017'}\n"
                    f"valid={DEFAULT_DATA / 'images' / 'train2017'}\nnames={DEFAULT_DATA / 'coco128.names'}\n")
    cmd = [sys.executable, "train.py", "--cfg", "cfg/yolov3-tiny.cfg", "--data", str(data), "--img-size", "320",
           "--batch-size", "16", "--epochs", "1", "--notest", "--nosave", "--weights", "", "--project",
           str(scratch / "runs"), "--name", "bench", "--device", "cpu" if device.type == "cpu" else str(device.index)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return {"train_py_process_s": wall, "train_py_cmd": cmd}


def _fmt(x: object, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "nan"
        return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:.0f}"
    return str(x)


def _spread(d: dict[str, float]) -> str:
    """'median (min-max)' of a {median, min, max} dict."""
    return f"{_fmt(d['median'])} ({_fmt(d['min'])}-{_fmt(d['max'])})"


def _where(profile: dict[str, object] | None) -> str:
    """'conv 78% (172 GFLOP/s), batchnorm 9%, ...' from a train row's profile (families of 1% or more);
    on a GPU it starts with the share of the step during which kernels ran."""
    if not profile:
        return "-"
    if "error" in profile:
        return f"profiler failed: {profile['error'][:60]}"
    parts = [f"kernels {profile['kernel_share']:.0%}:"] if "kernel_share" in profile else []
    for family, share in sorted(profile["family_share"].items(), key=lambda kv: -kv[1]):
        if share >= 0.01:
            extra = f" ({profile['conv_gflops']:.0f} GFLOP/s)" if family == "conv" and "conv_gflops" in profile else ""
            parts.append(f"{family} {share:.0%}{extra}")
    return ", ".join(parts)


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def format_section(key: str, data: object) -> str:
    """The printed table of one section's results."""
    formatter = {
        "ceilings": _format_ceilings, "train": _format_train, "epoch": _format_epoch, "loader": _format_loader,
        "infer": _format_infer, "memory": _format_memory, "nms": _format_nms,
    }.get(key)
    if formatter is None:
        return json.dumps(data, indent=1, default=str)
    return formatter(data)


def _format_ceilings(data: dict[str, object]) -> str:
    rows = [[k, _spread(v)] for k, v in data.items() if isinstance(v, dict) and "median" in v]
    return table(["kernel", "GFLOP/s median (min-max)"], rows)


def _format_train(data: list[dict[str, object]]) -> str:
    steps = [r for r in data if r.get("kind") != "loader"]
    rows = [[r["model"], r["img_size"], r["batch_size"], r["precision"],
             {None: "-", False: "off", True: "on"}[r.get("cudnn_benchmark")], _spread(r["img_s"]),
             r["train_gflop_per_img"], r["achieved_gflops"],
             " ".join(f"{k[3:]} {v:.0%}" for k, v in r.get("ceiling_share", {}).items()) or "-",
             " ".join(f"{k[:3]} {v:.0%}" for k, v in r["phase_share"].items()), _where(r.get("profile")),
             r.get("build_targets_ms"), r["ema_update_ms"]]
            for r in steps]
    text = table(["model", "size", "batch", "prec", "cudnn bm", "img/s median (min-max)", "GFLOP/img", "GFLOP/s",
                  "of ceiling", "phases", "where the step's time goes (profiler)", "build_targets ms",
                  "ema ms"], rows)
    loaders = [r for r in data if r.get("kind") == "loader"]
    if loaders:
        text += "\n\nthrough the real DataLoader (epoch 0: cold RAM cache, epoch 1: cached)\n" + _format_epoch(
            loaders[0])
    return text


def _format_epoch(data: dict[str, object]) -> str:
    rows = [[data["model"], data["img_size"], data["batch_size"], data["workers"], data["images"],
             " ".join(_fmt(x) for x in data["seconds_each"]), data["img_s"],
             " ".join(f"{x:.1%}" for x in data["data_wait_share_each"]), data.get("train_py_process_s")]]
    return table(["model", "size", "batch", "workers", "images", "s per epoch (0, 1, ..)", "img/s (median)",
                  "data wait", "train.py s"], rows)


def _format_loader(data: list[dict[str, object]]) -> str:
    rows = [[r["img_size"], r["workers"], r["cache"], r["images_per_rep"], r["first_pass_img_s"],
             _spread(r["img_s"]), r["dataset_build_s"]] for r in data]
    return table(["size", "workers", "cache", "images", "1st pass img/s", "img/s median (min-max)", "build s"],
                 rows)


def _format_infer(data: list[dict[str, object]]) -> str:
    rows = [[r["model"], r["img_size"], r["batch_size"], r["fused"], r["precision"], _spread(r["ms_per_img"])]
            for r in data]
    return table(["model", "size", "batch", "fused", "prec", "ms/img median (min-max)"], rows)


def _format_memory(data: dict[str, object]) -> str:
    c = data["ram_cache"]
    lines = [f"RAM image cache (default ram_cache_mb={c['ram_cache_mb_default']:.0f}, at most half of /dev/shm's "
             f"{c['dev_shm_free_gib']} GiB free) at {c['img_size']}: "]
    if c.get("cache"):
        big = next(v for k, v in c.items() if k.startswith("set_of_"))
        lines[0] += (f"{c['images_cached_after_one_pass']} of {c['images']} images cached after one pass, "
                     f"{c['used_mib']} MiB used of {c['reserved_mib']} MiB reserved, "
                     f"{c['bytes_per_image'] / 2**10:.0f} KiB per image")
        n_big = next(k for k in c if k.startswith("set_of_"))[7:]
        lines.append(f"a {n_big}-image set of this kind: {big['decoded_gib']} GiB decoded; the default cache "
                     f"holds {big['default_cache_holds_images']} of them ({big['default_cache_gib']} GiB), "
                     "--cache-images would need "
                     f"{big['cache_images_needs_gib']} GiB per process (MemAvailable here "
                     f"{big['mem_available_gib']} GiB)")
    else:
        lines[0] += "no cache (budget 0 or /dev/shm too small)"
    rows = [[h["mode"], h["tuned"], h["model"], h["batch_size"], h["sizes"], h["peak_rss_mib"], h["end_rss_mib"],
             h["step_s_median"]] for h in data["heap"]]
    lines.append(table(["heap", "applied", "model", "batch", "sizes", "peak RSS MiB", "end RSS MiB",
                        "step s median"], rows))
    return "\n".join(lines)


def _format_nms(data: list[dict[str, object]]) -> str:
    rows = [[r["source"], r["layout"], r["conf_thres"], r["batch_size"], r["rows_above_conf"],
             r["pairs_above_conf"], r["kept_per_img"], _spread(r["ms_per_img"])] for r in data]
    return table(["source", "layout", "conf", "batch", "rows>conf", "pairs>conf", "kept", "ms/img (min-max)"],
                 rows)


def format_comparison(rows: list[dict[str, object]]) -> str:
    body = [[r["what"], r["ours"], r["reference"], r["unit"],
             None if r["speedup"] is None else f"{r['speedup']:.2f}x",
             None if r["speedup_hw_adjusted"] is None else f"{r['speedup_hw_adjusted']:.2f}x",
             None if r["target"] is None else f">={r['target']}x", r["meets_target"]] for r in rows]
    return table(["figure", "ours", "reference", "unit", "speedup", "hw-adjusted", "target", "met"], body)


def default_json_path() -> Path:
    host = os.uname().nodename.split(".")[0] or "host"
    return REPO_ROOT / "bench" / f"results-{host}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Every model build would repeat the cfg's "[net] keys read but not used" warning.
    logging.getLogger("utils.parse_config").setLevel(logging.ERROR)
    try:
        device = select_device(args.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads or usable_cores())
    malloc_tuned = tune_malloc() if args.malloc == "tuned" else False
    results: dict[str, object] = {
        "schema": 1,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "options": {k: v for k, v in vars(args).items() if k != "sections"} | {"sections": args.sections},
        "machine": machine_info(device) | {"malloc_tuned": malloc_tuned},
        "load": {"start": load_average()},
        "sections": {},
        "errors": {},
    }
    m = results["machine"]
    print(f"machine: {m['cpu']}, {m['usable_cores']} usable cores (cpu_count {m['cpu_count']}), torch "
          f"{m['torch']} threads {m['torch_threads']}, numpy {m['numpy']}, cv2 {m['cv2']} threads "
          f"{m['cv2_threads']}, {m['cpu_capability']}, gpu {m['gpu']}, malloc tuned {malloc_tuned}; load average "
          f"{results['load']['start']}")
    busy = results["load"]["start"][0] if results["load"]["start"] else 0.0
    if busy > 0.5 and torch.get_num_threads() > 1 and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print(f"note: load average {busy} with {torch.get_num_threads()} torch threads: other processes compete for "
              "the cores and spinning OpenMP threads then slow small kernels by up to 10x; figures will be low and "
              "noisy. On a shared machine run OMP_WAIT_POLICY=PASSIVE python bench/run.py (recorded in the JSON).")
    t0 = time.perf_counter()
    out = Path(args.json) if args.json else default_json_path()
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        out.write_text(json.dumps(results, indent=1, default=str) + "\n")

    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        run_sections(args, device, results, Path(scratch), save)
    results["load"]["end"] = load_average()
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    results["comparison"] = compare(results)
    if results["comparison"]:
        print("\n== against ../shared/reference/baseline-cpu.md (speedup > 1: faster; hw-adjusted divides by "
              "our/reference kernel ceiling) ==")
        print(format_comparison(results["comparison"]))
    save()
    print(f"\nload average at end {results['load']['end']}; {results['wall_s']} s; results written to {out}")
    if results["errors"]:
        print(f"FAILED sections: {', '.join(results['errors'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
