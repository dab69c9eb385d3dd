"""Run a trained Darknet-cfg model on images, folders, globs, videos, webcams and streams.

    python detect.py --cfg cfg/yolov3-tiny.cfg --weights weights/best.pt --source data/shapes/images/valid

Each image is letterboxed as in testing (rectangular, long side ``--img-size``), passed through the fused model
in eval mode, filtered with ``non_max_suppression`` and mapped back to the original image with ``scale_coords``.
Annotated images (and videos, at the input's frame rate and size) go to a new output folder that never replaces
an existing one (``runs/detect/exp``, then ``exp2``, ``exp3`` ...). ``--save-txt`` also writes
``labels/<stem>.txt`` (``labels/<stem>_<frame>.txt`` for video frames, 0-based) in YOLO format: one line per box,
``class x_center y_center width height`` normalised to the original image (plus the confidence as a sixth column
with ``--save-conf``), so predictions can be reviewed and relabelled.

Weights: our checkpoints (``.pt`` from train.py, which also carry the class names; their EMA weights are used
when the run kept one, as test.py did), ultralytics ``.pt`` files, raw state_dicts, or Darknet ``.weights``. The
number of classes comes from ``--names`` when given, else from the checkpoint (its ``names``, or the shape of the
convolutions feeding the YOLO layers), else from the cfg. Class names come from ``--names``, else from the
checkpoint, else, for an 80-class model (the official Darknet weights), from ``data/coco128.names`` (the COCO
names, as the reference's default ``--names``), else they are the class indices.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from models import Darknet
from utils.boxes import scale_coords, xyxy2xywhn
from utils.data_files import read_names
from utils.general import tune_malloc
from utils.nms import non_max_suppression
from utils.parse_config import parse_data_cfg
from utils.plots import class_color, plot_one_box
from utils.sources import LoadImages, LoadStreams, is_stream
from utils.torch_utils import select_device, time_synchronized
from utils.weights import load_weights, nc_from_state_dict, read_checkpoint_info

logger = logging.getLogger(__name__)

MAX_STRIDE = 32
# The 80 COCO class names in training order: what an 80-class model without names is assumed to detect, as the
# reference's default --names data/coco.names did (the official Darknet weights carry no names).
COCO_NAMES = Path(__file__).resolve().parent / "data" / "coco128.names"


def load_names(path: str | Path) -> list[str]:
    """Class names from a ``.names`` file (one per line) or a ``.data`` file (its ``names=`` entry).

    A relative ``names=`` path in a ``.data`` file is looked up beside the ``.data`` file first, then in the
    current directory. Raises FileNotFoundError naming where it looked, ValueError for an empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"names file '{path}' not found: give a .names file or a .data file with names=")
    if path.suffix == ".data":
        entry = parse_data_cfg(path).get("names")
        if not entry:
            raise ValueError(f"{path}: no 'names=' entry; add one pointing to a .names file")
        candidates = [Path(entry)] if Path(entry).is_absolute() else [path.parent / entry, Path(entry)]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            looked = ", ".join(map(str, candidates))
            raise FileNotFoundError(f"{path}: names file '{entry}' not found; looked at {looked}")
        path = found
    names = read_names(path)
    if not names:
        raise ValueError(f"{path}: no class names; write one name per line")
    return names


def load_model(
    cfg: str | Path,
    weights: str | Path,
    device: torch.device,
    names: Sequence[str] | None = None,
    half: bool = False,
    coco_names: str | Path = COCO_NAMES,
) -> tuple[Darknet, list[str]]:
    """Build ``Darknet(cfg)`` for the weights' class count, load the weights, fuse conv+BN and set eval mode.

    Args:
        names: class names; when None they come from the checkpoint, else for an 80-class model from
            ``coco_names`` (the COCO names), else are the class indices as strings.
        coco_names: the ``.names`` file assumed for an 80-class model without names.
        half: cast the model to float16 (CUDA only).
    Returns (model on ``device``, class names). Raises ValueError when the names do not fit the weights.
    """
    state_dict, ema, ckpt_names = read_checkpoint_info(weights)
    nc = nc_from_state_dict(cfg, state_dict) if state_dict is not None else None
    if names is not None:
        names = list(names)
        if nc is not None and nc != len(names):
            raise ValueError(
                f"{weights} was trained with nc={nc} classes but {len(names)} names were given; "
                "pass the .names/.data file used for training"
            )
        nc = len(names)
    elif ckpt_names is not None:
        names = ckpt_names
        nc = nc if nc is not None else len(names)
    model = Darknet(cfg, nc=nc)
    try:
        load_weights(model, weights, checkpoint=state_dict)  # a .pt is read once, by read_checkpoint_info
    except ValueError as e:
        if nc is None:  # Darknet .weights carry no class count: the cfg's was assumed
            raise ValueError(f"{e}. If {weights} was trained for other classes than {cfg}'s, pass --names") from e
        raise
    if ema is not None:
        # the EMA weights are the ones train.py tested with --ema (ultralytics saved them as 'model')
        model.load_state_dict(ema)
        logger.info("%s: using its EMA weights", weights)
    if names is None and model.nc == 80 and Path(coco_names).is_file():
        names = load_names(coco_names)
        logger.info("no --names given and %s carries none: using the 80 COCO class names of %s (pass --names "
                    "for other classes)", weights, coco_names)
    if names is None:
        logger.warning("no --names given and %s carries none: classes are shown as numbers", weights)
        names = [str(i) for i in range(model.nc)]
    elif len(names) != model.nc:
        raise ValueError(f"{cfg} with {weights} has nc={model.nc} classes but {len(names)} names were given")
    model.fuse().eval().to(device, memory_format=torch.channels_last)  # NHWC convolutions are faster (bench/)
    if half:
        model.half()
    return model, names


def increment_path(path: str | Path) -> Path:
    """``path`` if it does not exist yet, else the first free ``path2``, ``path3`` ... (nothing is overwritten)."""
    path = Path(path)
    n = 2
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.name}{n}")
        n += 1
    return candidate


def display_available() -> bool:
    """Whether OpenCV can open a window here (a display exists and OpenCV has a GUI backend)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        cv2.namedWindow("detect.py")
        cv2.destroyWindow("detect.py")
    except cv2.error:
        return False
    return True


def summarize(det: torch.Tensor, names: Sequence[str]) -> str:
    """'2 circles, 1 square, ' for detections (n, 6) [x1, y1, x2, y2, conf, cls]; '' when there are none."""
    classes, counts = det[:, 5].unique(return_counts=True)
    parts = [f"{n} {names[int(c)]}{'s' if n > 1 else ''}, " for c, n in zip(classes.tolist(), counts.tolist())]
    return "".join(parts)


def yolo_label_lines(det: torch.Tensor, img0_shape: Sequence[int], save_conf: bool = False) -> list[str]:
    """YOLO label lines for detections (n, 6) [x1, y1, x2, y2, conf, cls] in original-image pixels.

    Each line is ``class x_center y_center width height`` normalised by the original image's width and height
    ``img0_shape = (h0, w0[, c])``, with the confidence appended when ``save_conf``.
    """
    h0, w0 = img0_shape[:2]
    xywh = xyxy2xywhn(det[:, :4].float().cpu(), w0, h0)
    lines = []
    for (x, y, w, h), conf, cls in zip(xywh.tolist(), det[:, 4].tolist(), det[:, 5].tolist()):
        line = f"{int(cls)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}"
        lines.append(f"{line} {conf:.6f}" if save_conf else line)
    return lines


def frame_names(
    dataset: LoadImages | LoadStreams, path: str, frame: int, is_video: bool, stream: bool
) -> tuple[str, str, str]:
    """``(progress text, label file stem, output file name)`` of the frame ``dataset`` yielded last.

    Images keep their file name; a video's frames go to one video of the same name with labels
    ``<stem>_<frame>``; a webcam or stream goes to ``webcam<N>.mp4`` or ``stream.mp4``.
    """
    if stream:
        stem = f"webcam{path}" if path.isdigit() else "stream"
        return f"stream {frame + 1} {path}", f"{stem}_{frame}", f"{stem}.mp4"
    file = Path(path)
    if is_video:
        total = dataset.frames if dataset.frames > 0 else "?"
        where = f"video {dataset.count + 1}/{dataset.nf} ({frame + 1}/{total}) {path}"
        return where, f"{file.stem}_{frame}", file.name
    return f"image {dataset.count + 1}/{dataset.nf} {path}", file.stem, file.name


class VideoSaver:
    """Writes annotated frames to one video file per input video (same frame rate and size as the input)."""

    def __init__(self, fourcc: str = "mp4v") -> None:
        if len(fourcc) != 4:
            raise ValueError(f"--fourcc '{fourcc}' must be 4 characters, e.g. mp4v, XVID, MJPG")
        self.fourcc = fourcc
        self.path: Path | None = None
        self.writer: cv2.VideoWriter | None = None

    def write(self, path: Path, frame: np.ndarray, fps: float) -> None:
        if path != self.path:
            self.release()
            h, w = frame.shape[:2]
            self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*self.fourcc), fps, (w, h))
            if not self.writer.isOpened():
                raise OSError(f"cannot write video {path} with fourcc '{self.fourcc}'; try --fourcc mp4v or MJPG")
            self.path = path
        self.writer.write(frame)

    def release(self) -> None:
        if self.writer is not None:
            self.writer.release()
        self.writer, self.path = None, None


def check_detect_args(img_size: int, conf_thres: float, iou_thres: float) -> None:
    """Raise ValueError, naming the flag, for an image size that is not a multiple of 32 or a threshold off 0..1."""
    if img_size <= 0 or img_size % MAX_STRIDE:
        raise ValueError(f"--img-size {img_size} must be a positive multiple of {MAX_STRIDE}, e.g. 320 or 416")
    for flag, value in (("--conf-thres", conf_thres), ("--iou-thres", iou_thres)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{flag} {value} must be between 0 and 1")


def check_classes(classes: Sequence[int] | None, names: Sequence[str]) -> None:
    """Raise ValueError when ``--classes`` names an index the model does not have."""
    if classes is not None:
        bad = [c for c in classes if not 0 <= c < len(names)]
        if bad:
            raise ValueError(f"--classes {bad} out of range: the model has {len(names)} classes (0..{len(names) - 1})")


def make_output_dir(output: str | Path, save_txt: bool) -> Path:
    """A new output folder (``increment_path``), with ``labels/`` for ``save_txt``."""
    out = increment_path(output)
    out.mkdir(parents=True)
    if save_txt:
        (out / "labels").mkdir()
    return out


def infer_image(
    model: torch.nn.Module, img: np.ndarray, img0_shape: Sequence[int], dev: torch.device, half: bool,
    ratio_pad, nms_kwargs: dict,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One letterboxed image through the model and NMS.

    Returns ``(x, det, seconds)``: the input tensor (1, 3, h, w), the detections (n, 6) ``x1, y1, x2, y2, conf,
    cls`` on the CPU in original-image pixels (rounded), and the time of inference plus NMS.
    """
    x = torch.from_numpy(img).to(dev).unsqueeze(0)
    x = ((x.half() if half else x.float()) / 255.0).contiguous(memory_format=torch.channels_last)
    t1 = time_synchronized()
    with torch.inference_mode():
        pred = model(x)[0].float()
    det = non_max_suppression(pred, multi_label=False, **nms_kwargs)[0]
    t2 = time_synchronized()
    det = det.cpu()
    if len(det):
        det[:, :4] = scale_coords(x.shape[2:], det[:, :4], img0_shape, ratio_pad=ratio_pad).round()
    return x, det, t2 - t1


def draw_detections(det: torch.Tensor, img0: np.ndarray, names: Sequence[str], colors: Sequence) -> None:
    """Draw each box with its ``name conf`` label onto ``img0``, best score on top."""
    for *xyxy, conf, cls in reversed(det.tolist()):
        c = int(cls)
        plot_one_box(xyxy, img0, color=colors[c], label=f"{names[c]} {conf:.2f}")


def save_frame(out: Path, save_name: str, img0: np.ndarray, cap, videos: VideoSaver) -> None:
    """Write an annotated image, or append the frame to its video (the input's frame rate, else 30)."""
    if cap is None:
        if not cv2.imwrite(str(out / save_name), img0):
            raise OSError(f"cannot write {out / save_name}")
    else:
        fps = cap.get(cv2.CAP_PROP_FPS)
        videos.write(out / save_name, img0, fps if 0 < fps < 1000 else 30.0)


def detect(
    cfg: str | Path, weights: str | Path, source: str | Path, names: str | Path | Sequence[str] | None = None,
    output: str | Path = "runs/detect/exp", img_size: int = 416, conf_thres: float = 0.3, iou_thres: float = 0.6,
    classes: Sequence[int] | None = None, agnostic_nms: bool = False, half: bool = False, device: str = "",
    save_img: bool = True, save_txt: bool = False, save_conf: bool = False, view_img: bool = False,
    fourcc: str = "mp4v", max_det: int | None = 300,
) -> dict:
    """Detect objects in ``source`` and save annotated images/videos (and labels) to a new output folder.

    Args:
        source: an image, a video, a folder, a glob, a webcam index ('0') or a stream URL.
        names: a ``.names``/``.data`` path or a list of class names; None -> from the checkpoint or numbers.
        output: requested output folder; when it exists, the first free ``<output>2``, ``<output>3`` ... is used.
        classes: keep only these class indices.
        max_det: most boxes drawn per image, best scores first (None: no cap, as the reference).
    Returns a dict: ``output`` (Path used), ``images`` (frames processed), ``detections`` (total boxes),
    ``results`` (list of ``(path, frame, det)`` with ``det`` (n, 6) [x1, y1, x2, y2, conf, cls] float32 CPU
    tensors in original-image pixels; empty for a webcam or stream, which may run indefinitely).
    """
    check_detect_args(img_size, conf_thres, iou_thres)
    dev = select_device(device)
    if half and dev.type != "cuda":
        raise ValueError("--half needs a CUDA device (float16 inference is not supported here on CPU); drop --half")
    source = str(source)
    stream = is_stream(source) and not Path(source).exists()
    dataset = LoadStreams(source, img_size) if stream else LoadImages(source, img_size)
    if isinstance(names, (str, Path)):
        names = load_names(names)
    model, names = load_model(cfg, weights, dev, names=names, half=half)
    check_classes(classes, names)
    if view_img and not display_available():
        logger.warning("--view-img ignored: no display or OpenCV without GUI support (opencv-python-headless)")
        view_img = False

    out = make_output_dir(output, save_txt)
    videos = VideoSaver(fourcc)
    colors = [class_color(i) for i in range(len(names))]
    nms_kwargs = {"conf_thres": conf_thres, "iou_thres": iou_thres, "classes": classes, "agnostic": agnostic_nms,
                  "max_det": max_det}  # fmt: skip
    results = []
    n_img = n_det = 0
    t0 = time.time()
    try:
        for path, img, img0, cap, frame in dataset:
            x, det, dt = infer_image(model, img, img0.shape, dev, half, dataset.ratio_pad, nms_kwargs)
            if not stream:  # a live source runs indefinitely: keep only the counts
                results.append((path, frame, det))
            n_img += 1
            n_det += len(det)

            where, stem, save_name = frame_names(dataset, path, frame, cap is not None, stream)
            if save_txt:
                lines = yolo_label_lines(det, img0.shape, save_conf)
                (out / "labels" / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
            draw_detections(det, img0, names, colors)
            found = summarize(det, names) or "no detections, "
            print(f"{where}: {x.shape[2]}x{x.shape[3]} {found}Done. ({dt:.3f}s)")

            if view_img:
                cv2.imshow(str(path), img0)
                if cv2.waitKey(1) == ord("q"):
                    break
            if save_img:
                save_frame(out, save_name, img0, cap, videos)
    finally:
        videos.release()
        if view_img:
            cv2.destroyAllWindows()

    skipped = f", {len(dataset.skipped)} unreadable files skipped" if dataset.skipped else ""
    print(f"Done. {n_img} images, {n_det} detections{skipped} in {time.time() - t0:.3f}s. Results saved to {out}")
    return {"output": out, "images": n_img, "detections": n_det, "results": results}


def model_arg_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the two flags detect.py and export.py open a model with: ``--cfg``, ``--weights``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cfg", type=str, default="cfg/yolov3-spp.cfg", help="model cfg file")
    parser.add_argument("--weights", type=str, required=True, help=".pt checkpoint or Darknet .weights")
    return parser


def parse_cli(parse_args: Callable[[Sequence[str] | None], argparse.Namespace], argv: Sequence[str] | None):
    """``parse_args(argv)``, then INFO logging; argparse's exit code instead (0 for --help, 2 for bad usage)."""
    try:
        opt = parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    return opt


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = model_arg_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=str, required=True, help="image, video, folder, glob, webcam index (0) or URL")
    parser.add_argument("--names", type=str, default=None, help=".names or .data file (default: from the checkpoint)")
    parser.add_argument("--output", type=str, default="runs/detect/exp", help="output folder (never reused: exp2...)")
    parser.add_argument("--img-size", type=int, default=416, help="inference size (pixels, long side, multiple of 32)")
    parser.add_argument("--conf-thres", type=float, default=0.3, help="object confidence threshold")
    parser.add_argument("--iou-thres", type=float, default=0.6, help="IoU threshold for NMS")
    parser.add_argument("--classes", nargs="+", type=int, help="keep only these classes, e.g. --classes 0 2")
    parser.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    parser.add_argument("--max-det", type=int, default=300,
                        help="most detections kept per image, best scores first (0: no cap, as the reference; "
                        "test.py never caps: COCO evaluation applies its own limit)")
    parser.add_argument("--half", action="store_true", help="float16 inference (CUDA only)")
    parser.add_argument("--device", default="", help="cuda device, i.e. 0 or cpu (default: cuda:0 if available)")
    parser.add_argument("--save-txt", action="store_true", help="write YOLO-format labels/<stem>.txt per image")
    parser.add_argument("--save-conf", action="store_true", help="with --save-txt: append the confidence column")
    parser.add_argument("--nosave", action="store_true", help="do not save annotated images/videos")
    parser.add_argument("--view-img", action="store_true", help="show results in a window (needs a display)")
    parser.add_argument("--fourcc", type=str, default="mp4v", help="codec of output videos")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (0 success, 1 bad input or missing files, 2 usage)."""
    opt = parse_cli(parse_args, argv)
    if isinstance(opt, int):
        return opt
    tune_malloc()  # keep per-batch buffers in the heap: no page faults on every batch (utils.general)
    print(opt)
    try:
        detect(
            opt.cfg, opt.weights, opt.source, opt.names, opt.output, opt.img_size, opt.conf_thres, opt.iou_thres,
            opt.classes, opt.agnostic_nms, opt.half, opt.device, save_img=not opt.nosave, save_txt=opt.save_txt,
            save_conf=opt.save_conf, view_img=opt.view_img, fourcc=opt.fourcc, max_det=opt.max_det or None,
        )  # fmt: skip
    except (OSError, ValueError) as e:
        print(f"detect.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
