"""The GPU check in one go: CUDA tests, a short AMP training run and the GPU benchmark, in under 8 minutes.

    python bench/gpu_check.py [--out DIR] [--budget 460] [--only STEPS] [--dry-run]   # on the GPU machine
    python bench/gpu_check.py --stage                                   # here, before sending the tree there

Steps, in this order, each a subprocess with its own time limit (the whole run stays inside --budget):

1. ``smoke`` (45 s): CUDA visible, a float16 convolution forward+backward, torchvision's NMS on the GPU. If
   this fails nothing else can work: the rest is skipped at once instead of timing out step by step.
2. ``pytest`` (170 s): ``pytest -m gpu`` (tests/test_gpu.py: AMP against float32, GradScaler through
   --resume, --half against float32, channels-last on CUDA, one-process NCCL under torchrun; and the other
   gpu-marked tests).
3. ``bench`` (150 s): ``bench/run.py --device 0 --only train,infer,nms``: yolov3-tiny@320 and yolov3-spp@416
   batch 32 AMP training steps with cuDNN autotuning off (train.py today) and on, where the step's time goes
   (kernel share, build_targets), spp@416 through the real DataLoader (data-wait share), inference, NMS.
4. ``train`` (100 s): ``train.py`` for 2 epochs on coco128 (the built-in shapes set when coco128 is absent),
   yolov3-spp@416, batch 32, AMP, testing after the last epoch.

Everything goes to one folder (``$OUT`` when set, as on the lent GPU machines, else
``bench/gpu-check-<host>-<time>``): ``gpu_check.json`` (every step: command, status, seconds, parsed
figures), ``gpu_check.md`` (one table), ``gpu_check.log`` (each step's output, tail-limited), ``bench.json``
and ``junit.xml``. The JSON and table are rewritten after every step, so a run cut short still leaves what it
had. Without CUDA the CUDA steps are skipped and listed with the commands they would run, except ``pytest``,
which runs to show that every gpu test skips cleanly (``--dry-run`` runs nothing at all); the exit status is 0
unless a step failed or timed out.

coco128 and the official yolov3-tiny weights live in ``../shared``, which does not travel to a GPU machine:
``--stage`` copies them into ``shared/`` inside the checkout (which travels; it is added to git's local
exclude file so that it is never committed) and prints the command to run there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# seconds per step; --budget (default 460) caps the sum, the interpreter check included: under 8 minutes in all
STEP_LIMITS = {"smoke": 45, "pytest": 170, "bench": 150, "train": 100}
LOG_TAIL = 6000  # characters of each step's output kept in gpu_check.log
SMOKE = """
import torch, torchvision
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
x = torch.randn(8, 64, 64, 64, device="cuda", requires_grad=True).contiguous(memory_format=torch.channels_last)
w = torch.randn(64, 64, 3, 3, device="cuda", requires_grad=True)
with torch.autocast("cuda", dtype=torch.float16):
    y = torch.nn.functional.conv2d(x, w, padding=1)
y.float().sum().backward()
boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60.0]], device="cuda")
keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7], device="cuda"), 0.5)
assert keep.tolist() == [0, 2], keep
p = torch.cuda.get_device_properties(0)
print(f"SMOKE ok: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}, torchvision {torchvision.__version__}")
"""


def shared_dir(repo: Path = REPO) -> Path | None:
    """Where coco128 and the official weights are: ``shared/`` in the checkout (a GPU machine), else ``../shared``."""
    for root in (repo / "shared", repo.parent / "shared"):
        if (root / "datasets" / "coco128" / "images" / "train2017").is_dir():
            return root
    return None


def stage(repo: Path = REPO) -> int:
    """Copy coco128 and the official yolov3-tiny weights from ../shared into shared/ in the checkout."""
    src, dst = repo.parent / "shared", repo / "shared"
    if not (src / "datasets" / "coco128").is_dir():
        print(f"--stage: {src / 'datasets' / 'coco128'} not found; nothing to copy", file=sys.stderr)
        return 1
    shutil.copytree(src / "datasets" / "coco128", dst / "datasets" / "coco128", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.cache", "__pycache__"))  # fmt: skip
    weights = src / "weights" / "yolov3-tiny.weights"
    if weights.is_file():
        (dst / "weights").mkdir(parents=True, exist_ok=True)
        shutil.copy2(weights, dst / "weights" / weights.name)
    common = subprocess.run(["git", "rev-parse", "--git-common-dir"], cwd=repo, capture_output=True, text=True)
    if common.returncode == 0:
        exclude = (repo / common.stdout.strip()).resolve() / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        lines = exclude.read_text().splitlines() if exclude.is_file() else []
        if "/shared/" not in lines:
            exclude.write_text("\n".join([*lines, "/shared/"]) + "\n")
    size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file()) / 2**20
    print(f"staged {dst} ({size:.0f} MiB; git ignores it through {exclude if common.returncode == 0 else '?'}). "
          "On the GPU machine: PYTHONUNBUFFERED=1 python3 bench/gpu_check.py (about 8 minutes; give the run "
          "a 540 s limit)")  # fmt: skip
    return 0


def coco128_data(out: Path, shared: Path | None) -> tuple[Path, str]:
    """A .data file for the training step: coco128 from ``shared`` when present, else the built-in shapes set."""
    if shared is None:
        return REPO / "data" / "shapes.data", "shapes (coco128 not found: run --stage before sending the tree)"
    images = shared / "datasets" / "coco128" / "images" / "train2017"
    data = out / "coco128-gpu.data"
    data.write_text(f"classes=80\ntrain={images}\nvalid={images}\nnames={REPO / 'data' / 'coco128.names'}\n")
    return data, f"coco128 ({images})"


def plan(out: Path, python: str, shared: Path | None) -> list[dict[str, object]]:
    """The steps: name, command, time limit, and what the step's figures are parsed from."""
    data, data_note = coco128_data(out, shared)
    return [
        {"name": "smoke", "cmd": [python, "-c", SMOKE],
         "show": f"{python} -c <SMOKE: float16 conv forward+backward and torchvision NMS on cuda>"},
        {"name": "pytest", "cmd": [python, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rfEs",
                                   f"--junitxml={out / 'junit.xml'}", "tests"]},
        {"name": "bench", "cmd": [python, "bench/run.py", "--device", "0", "--only", "train,infer,nms",
                                  "--json", str(out / "bench.json"), "--reps", "5", "--budget", "8"]},
        {"name": "train", "note": data_note,
         "cmd": [python, "train.py", "--cfg", "cfg/yolov3-spp.cfg", "--data", str(data), "--img-size", "416",
                 "--batch-size", "32", "--accumulate", "2", "--epochs", "2", "--weights", "", "--device", "0",
                 "--num-workers", str(min(8, os.cpu_count() or 1)), "--notest", "--project", str(out / "runs"),
                 "--name", "gpu", "--seed", "0"]},
    ]  # fmt: skip


def shown(step: dict[str, object]) -> str:
    """The step's command as a shell line (its short form where it has one)."""
    return step.get("show") or shlex.join(map(str, step["cmd"]))


def run_step(step: dict[str, object], limit: float, log: Path) -> dict[str, object]:
    """Run one step's command with a time limit; its output (tail) goes to the log. Never raises.

    The command runs in its own process group, and the whole group is killed at the limit: a timed-out
    pytest takes the train.py and torchrun processes it started with it.
    """
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rc = None
    try:
        proc = subprocess.Popen(step["cmd"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)  # fmt: skip
    except OSError as e:
        output, status = f"{type(e).__name__}: {e}", "failed"
    else:
        try:
            output, _ = proc.communicate(timeout=limit)
            rc = proc.returncode
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            status = "timeout"
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
    seconds = time.perf_counter() - t0
    with log.open("a") as f:
        f.write(f"\n===== {step['name']}: {status} in {seconds:.1f} s (limit {limit:.0f} s), exit {rc}\n")
        f.write(shown(step)[:2000] + "\n")
        f.write((output or "")[-LOG_TAIL:] + "\n")
    return {"status": status, "exit": rc, "seconds": round(seconds, 1), "limit_s": round(limit),
            "tail": (output or "")[-1500:]}  # fmt: skip


def parse_pytest(out: Path, tail: str) -> dict[str, object]:
    """Counts and the failing tests from junit.xml (else from pytest's last line)."""
    junit = out / "junit.xml"
    if junit.is_file():
        try:
            root = ET.parse(junit).getroot()
            cases = root.iter("testcase")
            result = {"passed": [], "failed": [], "skipped": []}
            for c in cases:
                name = f"{c.get('classname', '')}::{c.get('name', '')}"
                if c.find("failure") is not None or c.find("error") is not None:
                    result["failed"].append(name)
                elif c.find("skipped") is not None:
                    result["skipped"].append(name)
                else:
                    result["passed"].append(name)
            return {k: v if k == "failed" else len(v) for k, v in result.items()} | {"skipped_names": result["skipped"]}
        except ET.ParseError:
            pass
    last = tail.strip().splitlines()[-1] if tail.strip() else ""
    return {"summary": last}


def parse_bench(out: Path) -> dict[str, object]:
    """The figures the issue asks for from bench.json: img/s of the spp and tiny AMP steps (autotuning off/on),
    where the time goes, the data-wait share, the comparison rows, and any section errors."""
    path = out / "bench.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    rows = []
    for r in data.get("train") or []:
        if r.get("kind") == "loader":
            rows.append({"loader": f"{r['model']}@{r['img_size']}/bs{r['batch_size']}", "workers": r["workers"],
                         "img_s": r["img_s"], "seconds_each": r["seconds_each"],
                         "data_wait_share_each": r["data_wait_share_each"]})  # fmt: skip
            continue
        prof = r.get("profile") or {}
        rows.append({
            "step": f"{r['model']}@{r['img_size']}/bs{r['batch_size']} {r['precision']}",
            "cudnn_benchmark": r.get("cudnn_benchmark"), "img_s": r["img_s"]["median"],
            "img_s_spread": [r["img_s"]["min"], r["img_s"]["max"]], "phase_share": r["phase_share"],
            "kernel_share": prof.get("kernel_share"), "family_share": prof.get("family_share"),
            "build_targets_ms": r.get("build_targets_ms"),
        })  # fmt: skip
    return {"machine": data.get("machine"), "train": rows, "comparison": data.get("comparison"),
            "infer": data.get("infer"), "nms": data.get("nms"), "errors": data.get("errors")}


def parse_train(out: Path) -> dict[str, object]:
    """The training run's results.txt rows (epoch, GPU memory, losses, P, R, mAP ...)."""
    results = out / "runs" / "gpu" / "results.txt"
    if not results.is_file():
        return {}
    return {"results_txt": results.read_text().strip().splitlines()}


def figures_of(name: str, out: Path, tail: str) -> dict[str, object]:
    if name == "smoke":
        m = re.search(r"SMOKE ok: (.*)", tail)
        return {"gpu": m.group(1)} if m else {}
    if name == "pytest":
        return parse_pytest(out, tail)
    if name == "bench":
        return parse_bench(out)
    if name == "train":
        return parse_train(out)
    return {}


def markdown(report: dict[str, object]) -> str:
    """One table of the steps, then the benchmark's key rows."""
    lines = [f"# GPU check, {report['started']} on {report['host']} ({report.get('gpu') or 'no GPU'})", "",
             "| step | status | s | figures |", "|---|---|---|---|"]  # fmt: skip
    for s in report["steps"]:
        fig = s.get("figures") or {}
        if s["name"] == "pytest" and "passed" in fig:
            failed = f" {fig['failed']}" if fig["failed"] else ""
            text = f"{fig['passed']} passed, {len(fig['failed'])} failed{failed}, {fig['skipped']} skipped"
        elif s["name"] == "smoke":
            text = fig.get("gpu", "")
        elif s["name"] == "train":
            rows = fig.get("results_txt") or []
            text = (rows[-1] if rows else "") + (f" [{s.get('note')}]" if s.get("note") else "")
        elif s["name"] == "bench":
            errors = list((fig.get("errors") or {}).keys()) or "none"
            text = f"{len(fig.get('train') or [])} train rows, section errors: {errors}"
        else:
            text = ""
        if s["status"] == "skipped":
            text = f"{s.get('why', '')}; would run `{s['show'][:400]}`"
        lines.append(f"| {s['name']} | {s['status']} | {s.get('seconds', '-')} | {text.replace('|', '/')} |")
    bench = next((s.get("figures") for s in report["steps"] if s["name"] == "bench"), None) or {}
    if bench.get("train"):
        lines += ["", "| training | cudnn.benchmark | img/s | phases | kernels busy | where (kernel time) | "
                  "build_targets ms |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in bench["train"]:
            if "loader" in r:
                waits = ", ".join(f"{w:.1%}" for w in r["data_wait_share_each"])
                lines.append(f"| {r['loader']} through the DataLoader ({r['workers']} workers) | | "
                             f"{r['img_s']:.0f} | data wait per epoch {waits} | | | |")
                continue
            fam = {k: v for k, v in (r.get("family_share") or {}).items() if isinstance(v, float)}
            where = ", ".join(f"{k} {v:.0%}" for k, v in sorted(fam.items(), key=lambda kv: -kv[1]) if v >= 0.02)
            phases = " ".join(f"{k[:3]} {v:.0%}" for k, v in r["phase_share"].items())
            busy = "-" if r.get("kernel_share") is None else f"{r['kernel_share']:.0%}"
            lines.append(f"| {r['step']} | {r['cudnn_benchmark']} | {r['img_s']:.0f} | {phases} | {busy} | {where} | "
                         f"{r['build_targets_ms'] or 0:.2f} |")
    for c in bench.get("comparison") or []:
        lines.append(f"\n- {c['what']}: ours {c['ours']:.3g} vs {c['reference']} {c['unit']}, "
                     f"x{c['speedup'] or 0:.2f} (target x{c['target']}: {'met' if c['meets_target'] else 'NOT met'})")
    return "\n".join(lines) + "\n"


def cuda_available(python: str) -> tuple[bool, str]:
    """Whether the interpreter that runs the steps sees a GPU (asked in a subprocess: this one imports no torch)."""
    try:
        proc = subprocess.run([python, "-c", "import torch; print(torch.cuda.is_available(), torch.__version__)"],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"torch not usable: {e}"
    if proc.returncode:
        return False, proc.stderr.strip()[-300:]
    ok, version = proc.stdout.split()[:2]
    return ok == "True", f"torch {version}, cuda available {ok}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="output folder (default $OUT, else bench/gpu-check-<host>-<time>)")
    parser.add_argument("--budget", type=float, default=460.0, help="seconds for all steps together (default 460)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and write the report; run nothing")
    parser.add_argument("--stage", action="store_true", help="copy ../shared's coco128 and weights into shared/")
    parser.add_argument("--only", default=",".join(STEP_LIMITS), help=f"steps to run (default {','.join(STEP_LIMITS)})")
    return parser


def skip_reason(name: str, only: list[str], blocked: str | None, cuda: bool, dry_run: bool, left: float) -> str | None:
    """Why a step is skipped (not asked for, CUDA missing or unusable, budget spent), or None to run it; without
    CUDA pytest still runs (outside a dry run) to show that every gpu test skips cleanly."""
    if name not in only:
        return "not in --only"
    if blocked and not (name == "pytest" and not cuda and not dry_run):
        return blocked
    if left < 20:
        return f"budget spent ({left:.0f} s left)"
    return None


def execute(step: dict[str, object], limit: float, out: Path, log: Path) -> dict[str, object]:
    """Run one step (after removing the figure files of earlier runs) and parse its figures."""
    name = step["name"]
    for stale in ("junit.xml", "bench.json"):  # figures come only from this run
        (out / stale).unlink(missing_ok=True)
    print(f"-> {name} (limit {limit:.0f} s): {shown(step)[:300]}", flush=True)
    result = run_step(step, limit, log)
    result["figures"] = figures_of(name, out, result["tail"])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.stage:
        return stage()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(STEP_LIMITS))
    if unknown:
        parser.error(f"--only: unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEP_LIMITS)}")

    t_start = time.perf_counter()
    host = platform.node().split(".")[0] or "host"
    default_out = REPO / "bench" / f"gpu-check-{host}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(args.out or os.environ.get("OUT") or default_out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_check.log"
    log.write_text("")
    python = sys.executable
    cuda, why = (False, "--dry-run") if args.dry_run else cuda_available(python)
    shared = shared_dir()
    report: dict[str, object] = {
        "schema": 1, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "host": host, "python": python,
        "torch": why, "cuda": cuda, "shared": str(shared) if shared else None, "budget_s": args.budget, "steps": [],
    }  # fmt: skip

    def write() -> None:
        report["wall_s"] = round(time.perf_counter() - t_start, 1)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        (out / "gpu_check.md").write_text(markdown(report))

    print(f"GPU check: {why}; data {shared or 'not found (built-in shapes set for training)'}; output {out}",
          flush=True)  # fmt: skip
    blocked = None if cuda else ("no CUDA here" if not args.dry_run else "dry run")
    for step in plan(out, python, shared):
        name = step["name"]
        entry: dict[str, object] = {"name": name, "cmd": step["cmd"], "show": shown(step)}
        if "note" in step:
            entry["note"] = step["note"]
        left = args.budget - (time.perf_counter() - t_start)
        why_skipped = skip_reason(name, only, blocked, cuda, args.dry_run, left)
        if why_skipped is not None:
            entry.update(status="skipped", why=why_skipped)
        else:
            entry.update(execute(step, min(STEP_LIMITS[name], left), out, log))
            if name == "smoke":
                report["gpu"] = entry["figures"].get("gpu")
                if entry["status"] != "ok":
                    blocked = "the smoke step failed (CUDA unusable): see its output"
            print(f"   {name}: {entry['status']} in {entry['seconds']} s", flush=True)
        if entry.get("status") == "skipped":
            print(f"   {name}: skipped ({entry['why']}); would run ({STEP_LIMITS[name]} s limit): {shown(step)[:400]}",
                  flush=True)  # fmt: skip
        report["steps"].append(entry)
        write()
    write()
    print("\n" + markdown(report))
    print(f"written: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}, {log}")
    bad = [s["name"] for s in report["steps"] if s["status"] in ("failed", "timeout")]
    if bad:
        print(f"FAILED or timed out: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
