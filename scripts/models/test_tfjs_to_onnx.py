"""Tests of tfjs_to_onnx.py on a small TF.js graph built here, with weights
stored as float16 and uint8-quantized like the tfjs converter writes them.
The converted model runs in onnx's reference evaluator and is compared with
a numpy implementation of TensorFlow's semantics of the same graph (NHWC
convolution with SAME/VALID padding, half-pixel bilinear resize…), written
independently of the converter.

Run by vision/tests/tfjs_converter.rs in the models venv:
    .cache/models-venv/bin/python -m unittest discover -s scripts/models -p 'test_*.py'
"""

import base64
import json
import os
import sys
import unittest

import numpy as np
from onnx.reference import ReferenceEvaluator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tfjs_to_onnx  # noqa: E402

RNG = np.random.default_rng(7)


# -- numpy reference of the TensorFlow ops -----------------------------------


def tf_conv2d(x, w, stride, padding):
    """NHWC input, HWIO filter (grouped when I < input channels)."""
    n, h, wd, c = x.shape
    kh, kw, cin, cout = w.shape
    if padding == "SAME":
        oh, ow = -(-h // stride), -(-wd // stride)
        ph = max((oh - 1) * stride + kh - h, 0)
        pw = max((ow - 1) * stride + kw - wd, 0)
        x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    groups = c // cin
    per_group = cout // groups
    out = np.zeros((n, oh, ow, cout), np.float64)
    for g in range(groups):
        xs = x[..., g * cin : (g + 1) * cin]
        ws = w[..., g * per_group : (g + 1) * per_group]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, i : i + oh * stride : stride, j : j + ow * stride : stride, :]
                out[..., g * per_group : (g + 1) * per_group] += patch @ ws[i, j]
    return out


def tf_max_pool(x, k, stride):
    n, h, w, c = x.shape
    oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    out = np.full((n, oh, ow, c), -np.inf)
    for i in range(k):
        for j in range(k):
            out = np.maximum(out, x[:, i : i + oh * stride : stride, j : j + ow * stride : stride, :])
    return out


def tf_resize_bilinear_half_pixel(x, oh, ow):
    n, h, w, c = x.shape

    def axis(out_size, in_size):
        src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
        low = np.floor(src)
        frac = src - low
        lo = np.maximum(low, 0).astype(int)
        hi = np.minimum(np.ceil(src), in_size - 1).astype(int)
        return lo, hi, frac

    y0, y1, fy = axis(oh, h)
    x0, x1, fx = axis(ow, w)
    top = x[:, y0][:, :, x0] * (1 - fx)[None, None, :, None] + x[:, y0][:, :, x1] * fx[None, None, :, None]
    bottom = x[:, y1][:, :, x0] * (1 - fx)[None, None, :, None] + x[:, y1][:, :, x1] * fx[None, None, :, None]
    return top * (1 - fy)[None, :, None, None] + bottom * fy[None, :, None, None]


def leaky(x, alpha):
    return np.where(x >= 0, x, alpha * x)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


# -- the TF.js model -----------------------------------------------------------


def node(name, op, inputs=(), **attr):
    return {"name": name, "op": op, "input": list(inputs), "attr": attr}


def s(value):
    return {"s": base64.b64encode(value.encode()).decode()}


def ints(values):
    return {"list": {"i": [str(v) for v in values]}}


class Model:
    """A graph shaped like an onnx-tf export (NCHW outside, NHWC convs)."""

    def __init__(self):
        self.conv1 = RNG.normal(size=(3, 3, 3, 4)).astype(np.float16)
        self.bias1 = RNG.normal(size=4).astype(np.float32)
        # uint8 affine quantization: value = q * scale + min.
        self.q2 = RNG.integers(0, 256, size=(3, 3, 2, 6)).astype(np.uint8)
        self.scale2, self.min2 = 0.01, -1.2
        self.consts = {
            "pads": np.array([[0, 0], [0, 0], [1, 1], [1, 1]], np.int32),
            "to_nhwc": np.array([0, 2, 3, 1], np.int32),
            "to_nchw": np.array([0, 3, 1, 2], np.int32),
            "size": np.array([8, 8], np.int32),
            "axis": np.array(3, np.int32),
            "splits": np.array([7, -1], np.int32),
            "shape_base": np.array([1, 64, 7], np.int32),
            "where": np.zeros((1, 1), np.int32),
            "dense_shape": np.array([3], np.int32),
            "dense_values": np.zeros(1, np.int32),
            "zero": np.array(0, np.int32),
            "pads2": np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32),
            "minus_one": np.array(-1.0, np.float32),
        }

    def graph(self):
        nodes = [node("x", "Placeholder", dtype={"type": "DT_FLOAT"})]
        for name in ["conv1", "bias1", "conv2", *self.consts]:
            nodes.append(node(name, "Const"))
        conv = dict(strides=ints([1, 1, 1, 1]), padding=s("VALID"), data_format=s("NHWC"))
        nodes += [
            node("pad", "Pad", ["x", "pads"]),
            node("t1", "Transpose", ["pad", "to_nhwc"]),
            node("c1", "Conv2D", ["t1", "conv1"], **conv),
            node("b1", "Add", ["c1", "bias1"]),
            node("t2", "Transpose", ["b1", "to_nchw"]),
            node("act", "LeakyRelu", ["t2"], alpha={"f": 0.1}),
            node("t3", "Transpose", ["act", "to_nhwc"]),
            node("c2", "Conv2D", ["t3", "conv2"], **{**conv, "strides": ints([1, 2, 2, 1]), "padding": s("SAME")}),
            node("up", "ResizeBilinear", ["c2", "size"], half_pixel_centers={"b": True}, align_corners={"b": False}),
            node("cat", "ConcatV2", ["up", "t3", "axis"], N={"i": "2"}),
            node("split", "SplitV", ["cat", "splits", "axis"], num_split={"i": "2"}),
            node("sig", "Sigmoid", ["split"]),
            node("dense", "SparseToDense", ["where", "dense_shape", "dense_values", "zero"]),
            node("shape", "AddV2", ["shape_base", "dense"]),
            node("flat", "Reshape", ["sig", "shape"]),
            node("padv2", "PadV2", ["split:1", "pads2", "minus_one"]),
            node("pool", "MaxPool", ["padv2"], ksize=ints([1, 2, 2, 1]), strides=ints([1, 2, 2, 1]), padding=s("VALID"), data_format=s("NHWC")),
            node("t4", "Transpose", ["pool", "to_nchw"]),
            node("Identity", "Identity", ["flat"]),
            node("Identity_1", "Identity", ["t4"]),
        ]
        return nodes

    def files(self):
        """(model.json as a dict, shard bytes)."""
        specs, chunks = [], []

        def add(name, array, dtype, quantization=None):
            spec = {"name": name, "shape": list(array.shape), "dtype": dtype}
            if quantization:
                spec["quantization"] = quantization
            specs.append(spec)
            chunks.append(np.ascontiguousarray(array).tobytes())

        add("conv1", self.conv1, "float32", {"dtype": "float16", "original_dtype": "float32"})
        add("bias1", self.bias1, "float32")
        add("conv2", self.q2, "float32", {"dtype": "uint8", "scale": self.scale2, "min": self.min2, "original_dtype": "float32"})
        for name, value in self.consts.items():
            add(name, value, "float32" if value.dtype == np.float32 else "int32")
        model = {
            "format": "graph-model",
            "signature": {
                "inputs": {"x:0": {"name": "x:0", "tensorShape": {"dim": [{"size": "1"}, {"size": "3"}, {"size": "8"}, {"size": "8"}]}}},
                "outputs": {"Identity:0": {}, "Identity_1:0": {}},
            },
            "modelTopology": {"node": self.graph()},
            "weightsManifest": [{"paths": ["m.bin"], "weights": specs}],
        }
        return model, b"".join(chunks)

    def reference(self, x):
        """TensorFlow's semantics of the graph, in numpy (float64)."""
        w1 = self.conv1.astype(np.float64)
        w2 = self.q2.astype(np.float64) * np.float32(self.scale2) + np.float32(self.min2)
        nhwc = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))).transpose(0, 2, 3, 1)
        a = leaky(tf_conv2d(nhwc, w1, 1, "VALID") + self.bias1, 0.1)
        b = tf_conv2d(a, w2, 2, "SAME")
        cat = np.concatenate([tf_resize_bilinear_half_pixel(b, 8, 8), a], axis=3)
        first, second = cat[..., :7], cat[..., 7:]
        out0 = sigmoid(first).reshape(1, 64, 7)
        padded = np.pad(second, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-1.0)
        out1 = tf_max_pool(padded, 2, 2).transpose(0, 3, 1, 2)
        return out0, out1


def convert(model, shard):
    return tfjs_to_onnx.convert(model, lambda path: {"m.bin": shard}[path])


class ConverterTest(unittest.TestCase):
    def test_matches_tensorflow_semantics(self):
        m = Model()
        model, shard = m.files()
        onnx_model = convert(model, shard)
        x = RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)
        got = ReferenceEvaluator(onnx_model).run(None, {"input": x})
        want = m.reference(x.astype(np.float64))
        self.assertEqual([o.name for o in onnx_model.graph.output], ["Identity:0", "Identity_1:0"])
        for g, w in zip(got, want):
            self.assertEqual(g.shape, w.shape)
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
        self.assertEqual(got[1].shape, (1, 3, 5, 5))

    def test_simplifies_the_onnx_tf_layout_dance(self):
        m = Model()
        ops = [n.op_type for n in convert(*m.files()).graph.node]
        # The bias Add folded into its Conv and the zero Pad into the Conv's
        # padding; the PadV2 of -1 before the pool must stay.
        self.assertNotIn("Add", ops)
        self.assertEqual(ops.count("Pad"), 1)
        convs = [n for n in convert(*m.files()).graph.node if n.op_type == "Conv"]
        self.assertEqual(len(convs[0].input), 3)
        pads = [list(a.ints) for a in convs[0].attribute if a.name == "pads"]
        self.assertEqual(pads, [[1, 1, 1, 1]])
        # The first conv's transposes cancel: pad → conv reads the input.
        self.assertEqual(convs[0].input[0], "input")

    def test_unsupported_op_is_named(self):
        m = Model()
        model, shard = m.files()
        model["modelTopology"]["node"].append(node("odd", "Erf", ["t1"]))
        model["signature"]["outputs"]["odd:0"] = {}
        with self.assertRaisesRegex(tfjs_to_onnx.ConversionError, "op Erf is not supported"):
            convert(model, shard)

    def test_short_shard_is_refused(self):
        m = Model()
        model, shard = m.files()
        with self.assertRaisesRegex(tfjs_to_onnx.ConversionError, "shards hold"):
            convert(model, shard[:-10])
        with self.assertRaisesRegex(tfjs_to_onnx.ConversionError, "left over"):
            convert(model, shard + b"\0\0\0\0")

    def test_weights_decode_float16_and_uint8(self):
        m = Model()
        model, shard = m.files()
        weights = tfjs_to_onnx.read_weights(model["weightsManifest"], lambda p: shard)
        np.testing.assert_array_equal(weights["conv1"], m.conv1.astype(np.float32))
        self.assertEqual(weights["conv1"].dtype, np.float32)
        expected = m.q2.astype(np.float32) * np.float32(0.01) + np.float32(-1.2)
        np.testing.assert_allclose(weights["conv2"], expected, rtol=0, atol=1e-6)
        self.assertEqual(weights["pads"].tolist(), [[0, 0], [0, 0], [1, 1], [1, 1]])


if __name__ == "__main__":
    unittest.main()
