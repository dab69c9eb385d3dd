"""Inference sources for detect.py: image files, folders, globs, video files and live streams.

Every source yields the same 5-tuple per frame::

    (path, img, img0, cap, frame)

- ``path``: the file (or stream) the frame came from, str.
- ``img``: the letterboxed network input, ``(3, h, w)`` uint8 ndarray, RGB, contiguous; ``h`` and ``w`` are
  multiples of 32 when ``auto=True`` (rectangular inference: the long side is ``img_size``, the short side is
  padded only up to the next multiple of 32), exactly ``img_size`` square otherwise.
- ``img0``: the original frame, ``(h0, w0, 3)`` uint8 BGR ndarray as OpenCV decodes it.
- ``cap``: the ``cv2.VideoCapture`` for video and stream frames, ``None`` for images.
- ``frame``: 0-based frame index within the video or stream; 0 for images.

Boxes predicted on ``img`` go back to ``img0`` pixels with ``utils.boxes.scale_coords(img.shape[1:], boxes,
img0.shape, ratio_pad=source.ratio_pad)``: each source keeps the letterbox ratio and padding of the frame it
yielded last in ``ratio_pad`` (``((r, r), (dw, dh))``, as ``letterbox`` returns them), so the mapping inverts the
exact letterbox used, whatever the canvas shape.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from utils.augmentations import letterbox

logger = logging.getLogger(__name__)

IMG_FORMATS = (".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".pbm", ".pgm", ".ppm")
VID_FORMATS = (".mov", ".avi", ".mp4", ".mpg", ".mpeg", ".m4v", ".wmv", ".mkv", ".webm", ".flv", ".gif")
STREAM_PREFIXES = ("rtsp://", "rtmp://", "http://", "https://")

Frame = tuple[str, np.ndarray, np.ndarray, "cv2.VideoCapture | None", int]
RatioPad = tuple[tuple[float, float], tuple[float, float]]


def is_stream(source: str) -> bool:
    """True when ``source`` names a webcam index ('0', '1', ...) or a stream URL (rtsp/rtmp/http/https)."""
    return source.isdigit() or source.lower().startswith(STREAM_PREFIXES)


def to_network_input(img0: np.ndarray, img_size: int, auto: bool) -> tuple[np.ndarray, RatioPad]:
    """Letterbox a BGR ``(h0, w0, 3)`` image.

    Returns the ``(3, h, w)`` uint8 RGB network input and the letterbox ``((r, r), (dw, dh))`` for scale_coords.
    """
    img, ratio, pad = letterbox(img0, new_shape=img_size, auto=auto)
    return np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1)), (tuple(ratio), tuple(pad))


def list_source_files(path: str | Path) -> list[Path]:
    """The image and video files named by ``path``: a file, a folder (its files, sorted, not recursive) or a glob.

    Raises FileNotFoundError naming ``path`` when it does not exist, the glob matches nothing, or a folder holds
    no file with a supported suffix.
    """
    text = str(path)
    p = Path(text)
    if any(ch in text for ch in "*?["):
        files = sorted(Path(f) for f in glob.glob(text, recursive=True) if Path(f).is_file())
        where = f"glob '{text}'"
    elif p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file())
        where = f"folder '{p}'"
    elif p.is_file():
        return [p]
    else:
        raise FileNotFoundError(
            f"source '{text}' not found: give an image, a video, a folder, a glob, a webcam index or a stream URL"
        )
    files = [f for f in files if f.suffix.lower() in IMG_FORMATS + VID_FORMATS]
    if not files:
        raise FileNotFoundError(
            f"no images or videos in {where}; supported suffixes: {' '.join(IMG_FORMATS + VID_FORMATS)}"
        )
    return files


class LoadImages:
    """Iterate over the images and video frames named by ``path`` (file, folder or glob), letterboxed for inference.

    A file that cannot be decoded is skipped with a logged warning when it is one of several; a single named file
    that cannot be decoded raises ValueError. Videos are read frame by frame until the decoder stops. See the
    module docstring for the yielded tuple.

    Attributes: ``files`` (list[Path]), ``nf`` (number of files), ``count`` (0-based index in ``files`` of the
    file being read), ``skipped`` (list[str] of unreadable files, filled while iterating), ``frames`` (frame count
    OpenCV reports for the current video, 0 for images), ``ratio_pad`` (letterbox of the last yielded frame).
    """

    def __init__(self, path: str | Path, img_size: int = 416, auto: bool = True) -> None:
        self.files = list_source_files(path)
        self.nf = len(self.files)
        self.img_size = img_size
        self.auto = auto
        self.skipped: list[str] = []
        self.count = 0
        self.frames = 0
        self.ratio_pad: RatioPad = ((1.0, 1.0), (0.0, 0.0))

    def __len__(self) -> int:
        return self.nf

    def is_video(self, file: Path) -> bool:
        return file.suffix.lower() in VID_FORMATS

    def _unreadable(self, file: Path, what: str) -> None:
        if self.nf == 1:
            raise ValueError(f"{file}: cannot {what}; is the file complete and a supported format?")
        logger.warning("%s: cannot %s, skipped", file, what)
        self.skipped.append(str(file))

    def __iter__(self) -> Iterator[Frame]:
        for count, file in enumerate(self.files):
            self.count = count
            if self.is_video(file):
                yield from self._video_frames(file)
                continue
            img0 = cv2.imread(str(file), cv2.IMREAD_COLOR)
            if img0 is None:
                self._unreadable(file, "decode the image")
                continue
            self.frames = 0
            img, self.ratio_pad = to_network_input(img0, self.img_size, self.auto)
            yield str(file), img, img0, None, 0

    def _video_frames(self, file: Path) -> Iterator[Frame]:
        cap = cv2.VideoCapture(str(file))
        if not cap.isOpened():
            cap.release()
            self._unreadable(file, "open the video")
            return
        self.frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        frame = 0
        try:
            while True:
                ok, img0 = cap.read()
                if not ok:
                    break
                img, self.ratio_pad = to_network_input(img0, self.img_size, self.auto)
                yield str(file), img, img0, cap, frame
                frame += 1
        finally:
            cap.release()
        if frame == 0:
            self._unreadable(file, "read a frame from the video")


class LoadStreams:
    """Iterate over the frames of one live source: a webcam index ('0') or a stream URL (rtsp/rtmp/http/https).

    Frames are read in order as OpenCV delivers them and letterboxed like :class:`LoadImages`; iteration ends when
    the source stops delivering frames. Raises ConnectionError naming the source when it cannot be opened.
    Attributes: ``source`` (str), ``fps`` (reported frame rate, 30 when unknown), ``nf`` (1), ``ratio_pad``.
    """

    def __init__(self, source: str, img_size: int = 416, auto: bool = True) -> None:
        self.source = source
        self.img_size = img_size
        self.auto = auto
        self.nf = 1
        self.count = 0
        self.frames = 0
        self.skipped: list[str] = []
        self.ratio_pad: RatioPad = ((1.0, 1.0), (0.0, 0.0))
        self.cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
        if not self.cap.isOpened():
            self.cap.release()
            raise ConnectionError(
                f"cannot open stream '{source}': check the webcam index or the URL and that OpenCV was built with "
                "the backend it needs (FFmpeg/GStreamer)"
            )
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps < 1000 else 30.0

    def __len__(self) -> int:
        return self.nf

    def __iter__(self) -> Iterator[Frame]:
        frame = 0
        try:
            while True:
                ok, img0 = self.cap.read()
                if not ok:
                    break
                img, self.ratio_pad = to_network_input(img0, self.img_size, self.auto)
                yield self.source, img, img0, self.cap, frame
                frame += 1
        finally:
            self.cap.release()
        if frame == 0:
            raise ConnectionError(f"stream '{self.source}' opened but delivered no frame")
