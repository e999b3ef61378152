"""The Python reference tagging pipeline that imagetag-bench compares against.

What a Python developer would write for the same job with the usual tools:
Pillow decodes (full size, EXIF orientation applied) and resizes, numpy
builds the tensors, and onnxruntime runs the same ONNX files from the same
model cache, one intra-op thread per session. Parallelism uses one process
per worker, each holding its own sessions, like the Rust side's worker pool.

Per image: read the file, decode, every model the Rust backend runs (its
version string names them), a 320-pixel JPEG thumbnail, and a top-5 label
pick. The preprocessing follows docs/models.md model by model.

Prints one JSON object: images/second per timed run and the time per stage.
"""

import argparse
import io
import json
import multiprocessing as mp
import os
import sys
import time
from collections import defaultdict

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
NSFW_MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)
OBJECT_MEAN_BGR = np.array([103.53, 116.28, 123.675], dtype=np.float32)
OBJECT_STD_BGR = np.array([57.375, 57.12, 58.395], dtype=np.float32)
# vision/src/objects.rs: (stride, score output, box-distribution output).
OBJECT_LEVELS = (
    (8, "Identity:0", "Identity_3:0"),
    (16, "Identity_1:0", "Identity_4:0"),
    (32, "Identity_2:0", "Identity_5:0"),
)
OBJECT_MIN_SCORE = 0.3
DET_LIMIT = 960
REC_HEIGHT = 48
REC_MIN_WIDTH = 320
REC_MAX_WIDTH = 48 * 40
KNOWN_ROLES = ("classifier", "faces", "moderation", "ocr-det", "ocr-rec", "objects")


def session(path):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def roles_to_run(model_dir, version):
    """The manifest's models that the Rust backend's version string names."""
    with open(os.path.join(model_dir, "manifest.json")) as f:
        manifest = json.load(f)
    roles = {}
    for entry in manifest["files"]:
        model = entry.get("model")
        if not model or model not in version.split("+"):
            continue
        role = entry["role"]
        if role == "classes":
            continue
        if role not in KNOWN_ROLES:
            sys.exit(
                f"reference.py: the Rust backend runs {model} (role {role!r}), which this "
                "reference pipeline does not implement; the comparison would not be like for like"
            )
        roles[role] = os.path.join(model_dir, entry["path"])
    if "classifier" not in roles:
        sys.exit("reference.py: the version string names no classifier: " + version)
    return roles


class Pipeline:
    def __init__(self, roles):
        self.sessions = {role: session(path) for role, path in roles.items()}
        self.anchors = face_anchors()

    def run(self, path, times):
        t = time.perf_counter()
        with open(path, "rb") as f:
            data = f.read()
        t = lap(times, "fetch", t)
        image = Image.open(io.BytesIO(data))
        image = ImageOps.exif_transpose(image).convert("RGB")
        t = lap(times, "decode", t)
        out = {"labels": self.classify(image)}
        t = lap(times, "classifier", t)
        if "faces" in self.sessions:
            out["faces"] = self.faces(image)
            t = lap(times, "faces", t)
        if "moderation" in self.sessions:
            out["nsfw"] = self.nsfw(image)
            t = lap(times, "moderation", t)
        if "ocr-det" in self.sessions and "ocr-rec" in self.sessions:
            out["text"] = self.read_text(image)
            t = lap(times, "ocr", t)
        if "objects" in self.sessions:
            out["objects"] = self.objects(image)
            t = lap(times, "objects", t)
        thumb = image.copy()
        thumb.thumbnail((320, 320))
        buffer = io.BytesIO()
        thumb.save(buffer, "JPEG", quality=80)
        t = lap(times, "thumbnail", t)
        # The policy's share: keep the best labels above a floor.
        out["labels"] = [(c, p) for c, p in out["labels"] if p >= 0.01][:5]
        lap(times, "policy", t)
        return out

    def classify(self, image):
        # torchvision: shorter side 256, centre crop 224, ImageNet mean/std.
        w, h = image.size
        if w <= h:
            size = (256, int(256 * h / w))
        else:
            size = (int(256 * w / h), 256)
        resized = image.resize(size, Image.BILINEAR)
        left = round((size[0] - 224) / 2)
        top = round((size[1] - 224) / 2)
        crop = resized.crop((left, top, left + 224, top + 224))
        x = (np.asarray(crop, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        x = x.transpose(2, 0, 1)[None]
        logits = self.sessions["classifier"].run(["logits"], {"input": x})[0][0]
        e = np.exp(logits - logits.max())
        p = e / e.sum()
        best = np.argsort(-p)[:5]
        return [(int(i), float(p[i])) for i in best]

    def faces(self, image):
        w, h = image.size
        scale = 128 / max(w, h)
        fw, fh = (min(128, max(1, round(w * scale))), min(128, max(1, round(h * scale))))
        canvas = Image.new("RGB", (128, 128))
        canvas.paste(image.resize((fw, fh), Image.BILINEAR), ((128 - fw) // 2, (128 - fh) // 2))
        x = (np.asarray(canvas, dtype=np.float32) / 127.5 - 1.0)[None]
        s = self.sessions["faces"]
        outs = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"input:0": x})))
        scores = np.concatenate([outs["Identity:0"].ravel(), outs["Identity_1:0"].ravel()])
        boxes = np.concatenate([outs["Identity_2:0"].reshape(-1, 16), outs["Identity_3:0"].reshape(-1, 16)])
        scores = 1 / (1 + np.exp(-np.clip(scores, -80, 80)))
        keep = np.nonzero(scores >= 0.7)[0]
        found = []
        for i in keep[np.argsort(-scores[keep])]:
            ax, ay = self.anchors[i]
            cx, cy = ax * 128 + boxes[i, 0], ay * 128 + boxes[i, 1]
            b = (cx - boxes[i, 2] / 2, cy - boxes[i, 3] / 2, cx + boxes[i, 2] / 2, cy + boxes[i, 3] / 2)
            if all(iou(b, other) <= 0.3 for other, _ in found):
                found.append((b, float(scores[i])))
        return found

    def nsfw(self, image):
        squashed = image.resize((256, 256), Image.BILINEAR).crop((16, 16, 240, 240))
        x = np.asarray(squashed, dtype=np.float32)[:, :, ::-1] - NSFW_MEAN_BGR
        return float(self.sessions["moderation"].run(None, {"input:0": x[None]})[0][0][1])

    def read_text(self, image):
        w, h = image.size
        ratio = DET_LIMIT / max(w, h) if max(w, h) > DET_LIMIT else 1.0
        dw, dh = (max(32, round(w * ratio / 32) * 32), max(32, round(h * ratio / 32) * 32))
        small = np.asarray(image.resize((dw, dh), Image.BILINEAR), dtype=np.float32)[:, :, ::-1]
        x = ((small / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None]
        prob = self.sessions["ocr-det"].run(None, {"x": np.ascontiguousarray(x)})[0][0, 0]
        lines = []
        for box in line_boxes(prob, w / prob.shape[1], h / prob.shape[0]):
            x0, y0, x1, y1 = box
            length, thickness = x1 - x0, y1 - y0
            width = int(min(REC_MAX_WIDTH, max(1, np.ceil(REC_HEIGHT * length / thickness))))
            crop = image.crop((int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1)))).resize(
                (width, REC_HEIGHT), Image.BILINEAR
            )
            tensor = np.zeros((3, REC_HEIGHT, max(width, REC_MIN_WIDTH)), dtype=np.float32)
            tensor[:, :, :width] = (np.asarray(crop, dtype=np.float32)[:, :, ::-1] / 127.5 - 1.0).transpose(2, 0, 1)
            probs = self.sessions["ocr-rec"].run(None, {"x": tensor[None]})[0][0]
            best = probs.argmax(axis=1)
            keep = (best != 0) & np.concatenate([[True], best[1:] != best[:-1]])
            if keep.any():
                lines.append((best[keep].tolist(), float(probs.max(axis=1)[keep].mean())))
        return lines

    def objects(self, image):
        """NanoDet as vision/src/objects.rs runs it: letterbox into 416×416
        BGR, softmax-expectation box decoding per level, per-class NMS."""
        s = self.sessions["objects"]
        side = 416
        scale = side / max(image.width, image.height)
        w = min(side, max(1, round(image.width * scale)))
        h = min(side, max(1, round(image.height * scale)))
        pad_x, pad_y = (side - w) // 2, (side - h) // 2
        canvas = np.zeros((side, side, 3), dtype=np.float32)
        canvas[pad_y : pad_y + h, pad_x : pad_x + w] = np.asarray(
            image.resize((w, h), Image.BILINEAR), dtype=np.float32
        )[:, :, ::-1]
        x = ((canvas - OBJECT_MEAN_BGR) / OBJECT_STD_BGR).transpose(2, 0, 1)[None]
        outs = dict(
            zip(
                [o.name for o in s.get_outputs()],
                s.run(None, {s.get_inputs()[0].name: np.ascontiguousarray(x)}),
            )
        )
        candidates = []
        for stride, score_name, dist_name in OBJECT_LEVELS:
            grid = side // stride
            scores = outs[score_name].reshape(grid * grid, 80)
            cells = np.nonzero((scores >= OBJECT_MIN_SCORE).any(axis=1))[0]
            if cells.size == 0:
                continue
            logits = outs[dist_name].reshape(grid * grid, 4, 11)[cells]
            e = np.exp(logits - logits.max(axis=2, keepdims=True))
            d = (e * np.arange(11)).sum(axis=2) / e.sum(axis=2) * stride
            cx = (cells % grid + 0.5) * stride
            cy = (cells // grid + 0.5) * stride
            boxes = np.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], axis=1)
            for i, cell in enumerate(cells):
                for cls in np.nonzero(scores[cell] >= OBJECT_MIN_SCORE)[0]:
                    candidates.append((float(scores[cell, cls]), int(cls), boxes[i].tolist()))
        candidates.sort(key=lambda c: -c[0])
        kept = []
        for score, cls, box in candidates:
            if any(
                iou(k[2], box) > (0.5 if k[1] == cls else 0.8) for k in kept
            ):
                continue
            kept.append((score, cls, box))
            if len(kept) == 50:
                break
        return [(cls, round(score * 100, 1)) for score, cls, _ in kept]


def line_boxes(prob, sx, sy):
    """8-connected regions above 0.2 with mean ≥ 0.4, as axis-aligned boxes
    grown by DB's unclip distance, in image coordinates (at most 100)."""
    mask = prob > 0.2
    seen = np.zeros_like(mask)
    h, w = mask.shape
    boxes = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        seen[y, x] = True
        stack, points, total = [(y, x)], [], 0.0
        while stack:
            cy, cx = stack.pop()
            points.append((cy, cx))
            total += prob[cy, cx]
            for ny in (cy - 1, cy, cy + 1):
                for nx in (cx - 1, cx, cx + 1):
                    if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
        if total / len(points) < 0.4:
            continue
        ys, xs = zip(*points)
        bw, bh = (max(xs) - min(xs) + 1) * sx, (max(ys) - min(ys) + 1) * sy
        if min(bw, bh) < 3 * (sx + sy) / 2:
            continue
        grow = bw * bh * 1.4 / (2 * (bw + bh))
        boxes.append((total / len(points), (
            max(0.0, min(xs) * sx - grow), max(0.0, min(ys) * sy - grow),
            min(w * sx, (max(xs) + 1) * sx + grow), min(h * sy, (max(ys) + 1) * sy + grow),
        )))
    boxes.sort(key=lambda b: -b[0])
    return [b for _, b in boxes[:100]]


def face_anchors():
    anchors = []
    for size, per in ((16, 2), (8, 6)):
        for y in range(size):
            for x in range(size):
                anchors.extend([((x + 0.5) / size, (y + 0.5) / size)] * per)
    return anchors


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def lap(times, stage, since):
    now = time.perf_counter()
    times[stage] += now - since
    return now


_worker = None


def _init(roles):
    global _worker
    _worker = Pipeline(roles)


def _one(path):
    times = defaultdict(float)
    _worker.run(path, times)
    return dict(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", required=True)
    parser.add_argument("--version", required=True, help="the Rust backend's version string")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("images", nargs="+")
    args = parser.parse_args()
    roles = roles_to_run(args.models, args.version)

    rates, stages, per_image = [], defaultdict(float), [[] for _ in args.images]
    if args.workers == 1:
        pipeline = Pipeline(roles)
        for path in args.images:  # warm-up pass, untimed
            pipeline.run(path, defaultdict(float))
        for run in range(args.runs):
            times = defaultdict(float)
            start = time.perf_counter()
            for i, path in enumerate(args.images):
                began = time.perf_counter()
                pipeline.run(path, times)
                per_image[i].append(1000 * (time.perf_counter() - began))
            rates.append(len(args.images) / (time.perf_counter() - start))
            if run == 0:
                stages = times
    else:
        with mp.get_context("fork").Pool(args.workers, initializer=_init, initargs=(roles,)) as pool:
            pool.map(_one, args.images, chunksize=1)  # warm-up pass
            for _ in range(args.runs):
                start = time.perf_counter()
                pool.map(_one, args.images, chunksize=1)
                rates.append(len(args.images) / (time.perf_counter() - start))
    json.dump(
        {
            "workers": args.workers,
            "roles": sorted(roles),
            "images_per_second": rates,
            "stage_ms_per_image": {k: 1000 * v / len(args.images) for k, v in stages.items()},
            "image_ms": [sorted(v)[len(v) // 2] for v in per_image if v],
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "pillow": Image.__version__,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
