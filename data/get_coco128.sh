#!/usr/bin/env bash
# Download coco128 (the first 128 COCO train2017 images with YOLO labels, ~7 MB) beside this repository,
# where data/coco128.data expects it: <parent of the repository>/coco128/{images,labels}/train2017.
# Run it yourself on a machine with internet access; nothing in this project runs it automatically.
# Usage: bash data/get_coco128.sh
set -euo pipefail

url="https://github.com/ultralytics/yolov5/releases/download/v1.0/coco128.zip"
dest="$(cd "$(dirname "$0")/../.." && pwd)"  # the folder that contains this repository

if [ -d "$dest/coco128/images/train2017" ]; then
  echo "coco128 already present in $dest/coco128"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "Downloading $url ..."
if command -v curl >/dev/null 2>&1; then
  curl -fL --retry 3 -o "$tmp/coco128.zip" "$url"
else
  wget -q -O "$tmp/coco128.zip" "$url"
fi
unzip -q "$tmp/coco128.zip" -d "$dest"  # the archive holds a top-level coco128/ folder
echo "coco128 installed in $dest/coco128"
