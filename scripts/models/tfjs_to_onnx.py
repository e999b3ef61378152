#!/usr/bin/env python3
"""Converts a TensorFlow.js graph model (model.json + binary weight shards)
to ONNX with numpy and onnx only, so the model cache needs no TensorFlow.

    tfjs_to_onnx.py MODEL.json OUT.onnx [--input-shape 1,3,416,416]

A graph model's model.json holds a TensorFlow GraphDef as JSON
(`modelTopology.node`) and a `weightsManifest` describing how the values of
every `Const` node are laid out in the shards. The converter:

1. decodes the weights (float32, int32, bool, and the float16 / uint8 /
   uint16 quantizations the tfjs converter writes);
2. folds every node whose inputs are all constants with numpy (shape
   arithmetic such as SparseToDense + AddV2 feeding a Reshape);
3. maps the remaining ops to ONNX (opset 13), keeping TensorFlow's layout:
   NHWC ops (Conv2D, MaxPool, ResizeBilinear) are wrapped in transposes to
   and from NCHW;
4. simplifies: a bias `Add` folds into its convolution, transposes that undo
   each other cancel, and a zero `Pad` folds into the convolution after it.
   Graphs exported from ONNX through onnx-tf (like NanoDet's) come back to a
   plain NCHW graph.

Only the ops listed in `Converter.OPS` are supported; any other op stops the
conversion with its name, so an unsupported graph never converts silently
wrong. Static shapes are tracked for every tensor (the input shape is fixed),
which also lets Resize and SAME padding be expressed as constants.
"""

import argparse
import base64
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13

DTYPES = {
    "float32": (np.float32, 4),
    "int32": (np.int32, 4),
    "bool": (np.bool_, 1),
}
QUANTIZED = {"float16": (np.float16, 2), "uint8": (np.uint8, 1), "uint16": (np.uint16, 2)}

NHWC_TO_NCHW = [0, 3, 1, 2]
NCHW_TO_NHWC = [0, 2, 3, 1]


class ConversionError(Exception):
    pass


def read_weights(manifest, read_shard):
    """Decodes the weightsManifest: `read_shard(path)` returns a shard's bytes.
    Each group's shards are one concatenated buffer, read in order."""
    weights = {}
    for group in manifest:
        buffer = b"".join(read_shard(p) for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            shape = [int(d) for d in spec["shape"]]
            count = int(np.prod(shape, dtype=np.int64))
            quant = spec.get("quantization")
            if quant:
                if quant["dtype"] not in QUANTIZED:
                    raise ConversionError(f"{spec['name']}: unsupported quantization {quant['dtype']}")
                stored, size = QUANTIZED[quant["dtype"]]
            else:
                if spec["dtype"] not in DTYPES:
                    raise ConversionError(f"{spec['name']}: unsupported dtype {spec['dtype']}")
                stored, size = DTYPES[spec["dtype"]]
            end = offset + count * size
            if end > len(buffer):
                raise ConversionError(f"{spec['name']}: weights end at byte {end}, shards hold {len(buffer)}")
            raw = np.frombuffer(buffer, dtype=np.dtype(stored).newbyteorder("<"), count=count, offset=offset)
            offset = end
            target = DTYPES[spec["dtype"]][0]
            if quant and quant["dtype"] in ("uint8", "uint16"):
                # Affine quantization: value = q * scale + min.
                value = raw.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"])
            else:
                value = raw
            weights[spec["name"]] = value.astype(target).reshape(shape)
        if offset != len(buffer):
            raise ConversionError(f"weight group {group['paths']}: {len(buffer) - offset} bytes left over")
    return weights


def attr(node, key, kind, default=None):
    """An attribute of a GraphDef node in its JSON form: `kind` is the proto
    field ('i', 'f', 'b', 's', 'list', 'type')."""
    value = node.get("attr", {}).get(key)
    if value is None:
        if default is None:
            raise ConversionError(f"{node['name']}: missing attribute {key}")
        return default
    if kind == "s":
        return base64.b64decode(value.get("s", "")).decode()
    if kind == "ints":
        return [int(v) for v in value.get("list", {}).get("i", [])]
    if kind == "i":
        return int(value.get("i", 0))
    if kind == "f":
        return float(value.get("f", 0.0))
    if kind == "b":
        return bool(value.get("b", False))
    raise ValueError(kind)


class Value:
    """A tensor during conversion: an ONNX value name with a static shape, or
    a numpy constant (folded)."""

    def __init__(self, name=None, shape=None, const=None):
        self.name = name
        self.shape = list(const.shape) if const is not None else list(shape)
        self.const = const


class Converter:
    OPS = (
        "Placeholder Const Identity Add AddV2 Sigmoid LeakyRelu Transpose Pad PadV2 Conv2D MaxPool "
        "ConcatV2 SplitV Reshape ResizeBilinear SparseToDense"
    ).split()

    def __init__(self, model, weights, input_shape):
        self.graph = model["modelTopology"]["node"]
        self.weights = weights
        self.input_shape = input_shape
        self.nodes = []
        self.initializers = []
        self.values = {}
        self.counter = 0

    # -- helpers -------------------------------------------------------------

    def fresh(self, hint):
        self.counter += 1
        return f"{hint}__{self.counter}"

    def constant(self, array, hint="const"):
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def emit(self, op, inputs, shape, hint, **attrs):
        out = self.fresh(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return Value(out, shape)

    def onnx_input(self, value):
        """The value's ONNX name; a constant becomes an initializer once."""
        if value.const is not None and value.name is None:
            value.name = self.constant(value.const)
        return value.name

    def transpose(self, value, perm, hint):
        shape = [value.shape[p] for p in perm]
        if value.const is not None:
            return Value(const=np.transpose(value.const, perm))
        return self.emit("Transpose", [value.name], shape, hint, perm=perm)

    def get(self, ref):
        # "name:1" is output 1 of node "name"; "^name" is a control input.
        name, _, index = ref.partition(":")
        index = int(index) if index else 0
        outputs = self.values.get(name)
        if outputs is None:
            raise ConversionError(f"input {ref} is not produced by any node")
        return outputs[index]

    # -- conversion ----------------------------------------------------------

    def run(self, output_names):
        order = self.topological()
        for node in order:
            op = node["op"]
            if op not in self.OPS:
                raise ConversionError(f"{node['name']}: op {op} is not supported by this converter")
            inputs = [self.get(i) for i in node.get("input", []) if not i.startswith("^")]
            if op == "Const":
                if node["name"] not in self.weights:
                    raise ConversionError(f"{node['name']}: constant without weights")
                outputs = [Value(const=self.weights[node["name"]])]
            elif op == "Placeholder":
                outputs = [Value("input", self.input_shape)]
            elif inputs and all(v.const is not None for v in inputs) and op != "Identity":
                outputs = [Value(const=c) for c in self.fold(node, [v.const for v in inputs])]
            else:
                outputs = getattr(self, "op_" + op)(node, inputs)
            self.values[node["name"]] = outputs
        return self.finish(output_names)

    def topological(self):
        by_name = {n["name"]: n for n in self.graph}
        seen, order = set(), []
        for root in self.graph:
            stack = [(root["name"], False)]
            while stack:
                name, done = stack.pop()
                if done:
                    order.append(by_name[name])
                    continue
                if name in seen:
                    continue
                seen.add(name)
                stack.append((name, True))
                for ref in by_name[name].get("input", []):
                    dep = ref.lstrip("^").partition(":")[0]
                    if dep not in by_name:
                        raise ConversionError(f"{name}: input {ref} has no node")
                    if dep not in seen:
                        stack.append((dep, False))
        return order

    def fold(self, node, args):
        """Numpy evaluation of a node whose inputs are all constants."""
        op = node["op"]
        if op in ("Add", "AddV2"):
            return [np.add(args[0], args[1]).astype(args[0].dtype)]
        if op == "Transpose":
            return [np.transpose(args[0], args[1])]
        if op == "Reshape":
            return [np.reshape(args[0], args[1])]
        if op == "ConcatV2":
            return [np.concatenate(args[:-1], axis=int(args[-1]))]
        if op == "SparseToDense":
            indices, shape, values, default = args
            dense = np.full([int(d) for d in np.atleast_1d(shape)], default, dtype=values.dtype)
            indices = np.asarray(indices).reshape(len(indices), -1) if indices.size else indices
            for row, v in zip(indices, np.broadcast_to(values, (len(indices),))):
                dense[tuple(row)] = v
            return [dense]
        if op == "Sigmoid":
            return [(1 / (1 + np.exp(-args[0]))).astype(args[0].dtype)]
        raise ConversionError(f"{node['name']}: cannot fold constant {op}")

    def op_Identity(self, node, inputs):
        return [inputs[0]]

    def op_Add(self, node, inputs):
        a, b = inputs
        shape = list(np.broadcast_shapes(tuple(a.shape), tuple(b.shape)))
        return [self.emit("Add", [self.onnx_input(a), self.onnx_input(b)], shape, "add")]

    op_AddV2 = op_Add

    def op_Sigmoid(self, node, inputs):
        return [self.emit("Sigmoid", [inputs[0].name], inputs[0].shape, "sigmoid")]

    def op_LeakyRelu(self, node, inputs):
        alpha = attr(node, "alpha", "f", 0.2)
        return [self.emit("LeakyRelu", [inputs[0].name], inputs[0].shape, "leaky", alpha=alpha)]

    def op_Transpose(self, node, inputs):
        x, perm = inputs
        if perm.const is None:
            raise ConversionError(f"{node['name']}: dynamic permutation")
        return [self.transpose(x, [int(p) for p in perm.const], "transpose")]

    def op_Pad(self, node, inputs, value=0.0):
        x, pads = inputs[0], inputs[1]
        if pads.const is None:
            raise ConversionError(f"{node['name']}: dynamic paddings")
        p = pads.const.astype(np.int64)
        shape = [d + int(p[i, 0]) + int(p[i, 1]) for i, d in enumerate(x.shape)]
        onnx_pads = np.concatenate([p[:, 0], p[:, 1]])
        fill = self.constant(np.array(value, dtype=np.float32), "pad_value")
        return [self.emit("Pad", [x.name, self.constant(onnx_pads, "pads"), fill], shape, "pad", mode="constant")]

    def op_PadV2(self, node, inputs):
        value = inputs[2]
        if value.const is None:
            raise ConversionError(f"{node['name']}: dynamic pad value")
        return self.op_Pad(node, inputs[:2], float(value.const))

    def nhwc(self, node):
        fmt = attr(node, "data_format", "s", "NHWC")
        if fmt != "NHWC":
            raise ConversionError(f"{node['name']}: data_format {fmt} is not supported")

    def spatial_pads(self, node, in_hw, kernel, strides, dilations):
        padding = attr(node, "padding", "s")
        if padding == "VALID":
            return [0, 0, 0, 0]
        if padding == "SAME":
            begin, end = [], []
            for size, k, s, d in zip(in_hw, kernel, strides, dilations):
                out = -(-size // s)
                total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
                begin.append(total // 2)
                end.append(total - total // 2)
            return begin + end
        raise ConversionError(f"{node['name']}: padding {padding} is not supported")

    @staticmethod
    def out_size(size, k, s, d, before, after):
        return (size + before + after - ((k - 1) * d + 1)) // s + 1

    def op_Conv2D(self, node, inputs):
        self.nhwc(node)
        x, w = inputs
        if w.const is None:
            raise ConversionError(f"{node['name']}: filter is not a constant")
        kh, kw, cin, cout = w.const.shape
        n, h, wd, c = x.shape
        if c % cin:
            raise ConversionError(f"{node['name']}: {c} input channels for a filter of {cin}")
        strides = attr(node, "strides", "ints")[1:3]
        dilations = attr(node, "dilations", "ints", [1, 1, 1, 1])[1:3]
        pads = self.spatial_pads(node, [h, wd], [kh, kw], strides, dilations)
        oh = self.out_size(h, kh, strides[0], dilations[0], pads[0], pads[2])
        ow = self.out_size(wd, kw, strides[1], dilations[1], pads[1], pads[3])
        nchw = self.transpose(x, NHWC_TO_NCHW, "to_nchw")
        weight = self.constant(np.ascontiguousarray(np.transpose(w.const, (3, 2, 0, 1))), "weight")
        conv = self.emit(
            "Conv",
            [nchw.name, weight],
            [n, cout, oh, ow],
            "conv",
            kernel_shape=[kh, kw],
            strides=strides,
            dilations=dilations,
            pads=pads,
            group=c // cin,
        )
        return [self.transpose(conv, NCHW_TO_NHWC, "to_nhwc")]

    def op_MaxPool(self, node, inputs):
        self.nhwc(node)
        x = inputs[0]
        n, h, w, c = x.shape
        kernel = attr(node, "ksize", "ints")[1:3]
        strides = attr(node, "strides", "ints")[1:3]
        pads = self.spatial_pads(node, [h, w], kernel, strides, [1, 1])
        oh = self.out_size(h, kernel[0], strides[0], 1, pads[0], pads[2])
        ow = self.out_size(w, kernel[1], strides[1], 1, pads[1], pads[3])
        nchw = self.transpose(x, NHWC_TO_NCHW, "to_nchw")
        pool = self.emit("MaxPool", [nchw.name], [n, c, oh, ow], "maxpool", kernel_shape=kernel, strides=strides, pads=pads)
        return [self.transpose(pool, NCHW_TO_NHWC, "to_nhwc")]

    def op_ResizeBilinear(self, node, inputs):
        x, size = inputs
        if size.const is None:
            raise ConversionError(f"{node['name']}: dynamic size")
        if attr(node, "align_corners", "b", False):
            mode = "align_corners"
        elif attr(node, "half_pixel_centers", "b", False):
            mode = "half_pixel"
        else:
            mode = "asymmetric"
        n, _, _, c = x.shape
        oh, ow = (int(v) for v in size.const)
        nchw = self.transpose(x, NHWC_TO_NCHW, "to_nchw")
        sizes = self.constant(np.array([n, c, oh, ow], dtype=np.int64), "sizes")
        resized = self.emit(
            "Resize",
            [nchw.name, "", "", sizes],
            [n, c, oh, ow],
            "resize",
            mode="linear",
            coordinate_transformation_mode=mode,
        )
        return [self.transpose(resized, NCHW_TO_NHWC, "to_nhwc")]

    def op_ConcatV2(self, node, inputs):
        *parts, axis = inputs
        if axis.const is None:
            raise ConversionError(f"{node['name']}: dynamic axis")
        rank = len(parts[0].shape)
        a = int(axis.const) % rank
        shape = list(parts[0].shape)
        shape[a] = sum(p.shape[a] for p in parts)
        return [self.emit("Concat", [self.onnx_input(p) for p in parts], shape, "concat", axis=a)]

    def op_SplitV(self, node, inputs):
        x, sizes, axis = inputs
        if sizes.const is None or axis.const is None:
            raise ConversionError(f"{node['name']}: dynamic split")
        a = int(axis.const) % len(x.shape)
        sizes = [int(s) for s in sizes.const]
        if -1 in sizes:
            sizes[sizes.index(-1)] = x.shape[a] - (sum(sizes) + 1)
        outs = [self.fresh("split") for _ in sizes]
        self.nodes.append(
            helper.make_node(
                "Split", [x.name, self.constant(np.array(sizes, dtype=np.int64), "split")], outs, name=outs[0], axis=a
            )
        )
        values = []
        for name, s in zip(outs, sizes):
            shape = list(x.shape)
            shape[a] = s
            values.append(Value(name, shape))
        return values

    def op_Reshape(self, node, inputs):
        x, shape = inputs
        if shape.const is None:
            raise ConversionError(f"{node['name']}: dynamic shape")
        target = [int(s) for s in shape.const]
        static = list(np.empty(x.shape, dtype=np.uint8).reshape(target).shape)
        return [self.emit("Reshape", [x.name, self.constant(np.array(target, dtype=np.int64), "shape")], static, "reshape")]

    # -- simplification ------------------------------------------------------

    def consumers(self):
        users = {}
        for node in self.nodes:
            for i in node.input:
                users.setdefault(i, []).append(node)
        return users

    def producer(self):
        return {o: n for n in self.nodes for o in n.output}

    def inits(self):
        return {t.name: t for t in self.initializers}

    def rename_input(self, old, new):
        for node in self.nodes:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new
        self.outputs_alias = {k: (new if v == old else v) for k, v in self.outputs_alias.items()}

    def simplify(self):
        self.prune()
        self.fold_bias()
        self.cancel_transposes()
        self.fold_pads()
        self.prune()

    def fold_bias(self):
        """Conv → Transpose(to NHWC) → Add(bias over channels): the bias
        becomes the Conv's third input and the Add goes away."""
        produced = self.producer()
        users = self.consumers()
        inits = self.inits()
        for add in list(self.nodes):
            if add.op_type != "Add":
                continue
            t = produced.get(add.input[0])
            bias = inits.get(add.input[1])
            if t is None or bias is None or t.op_type != "Transpose" or len(users.get(t.output[0], [])) != 1:
                continue
            if list(t.attribute[0].ints) != NCHW_TO_NHWC:
                continue
            conv = produced.get(t.input[0])
            if conv is None or conv.op_type != "Conv" or len(conv.input) != 2:
                continue
            b = numpy_helper.to_array(bias)
            weight = numpy_helper.to_array(inits[conv.input[1]])
            if b.ndim != 1 or b.shape[0] != weight.shape[0]:
                continue
            conv.input.append(self.constant(b.astype(np.float32), "bias"))
            self.nodes.remove(add)
            self.rename_input(add.output[0], t.output[0])
            users = self.consumers()

    def cancel_transposes(self):
        """Transpose(p2)(Transpose(p1)(x)) with p1∘p2 = identity reads x."""
        changed = True
        while changed:
            changed = False
            produced = self.producer()
            for node in self.nodes:
                if node.op_type != "Transpose":
                    continue
                first = produced.get(node.input[0])
                if first is None or first.op_type != "Transpose":
                    continue
                p1, p2 = list(first.attribute[0].ints), list(node.attribute[0].ints)
                if [p1[i] for i in p2] == list(range(len(p1))):
                    self.rename_input(node.output[0], first.input[0])
                    self.nodes.remove(node)
                    changed = True
                    break
            self.prune()

    def fold_pads(self):
        """A constant-zero Pad of the spatial axes only, read by nothing but a
        Conv, becomes the Conv's own padding."""
        produced = self.producer()
        users = self.consumers()
        inits = self.inits()
        for conv in list(self.nodes):
            if conv.op_type != "Conv":
                continue
            pad = produced.get(conv.input[0])
            if pad is None or pad.op_type != "Pad" or len(users.get(pad.output[0], [])) != 1:
                continue
            pads = numpy_helper.to_array(inits[pad.input[1]])
            value = numpy_helper.to_array(inits[pad.input[2]])
            if float(value) != 0.0 or pads[0] or pads[1] or pads[4] or pads[5]:
                continue
            extra = [int(pads[2]), int(pads[3]), int(pads[6]), int(pads[7])]
            for a in conv.attribute:
                if a.name == "pads":
                    merged = [x + y for x, y in zip(a.ints, extra)]
                    del a.ints[:]
                    a.ints.extend(merged)
            conv.input[0] = pad.input[0]
            self.nodes.remove(pad)
            users = self.consumers()

    def prune(self):
        """Drops nodes and initializers the outputs do not depend on (nodes
        are in topological order)."""
        needed = set(self.outputs_alias.values())
        keep = []
        for node in reversed(self.nodes):
            if any(o in needed for o in node.output):
                keep.append(node)
                needed.update(i for i in node.input if i)
        self.nodes = list(reversed(keep))
        self.initializers = [t for t in self.initializers if t.name in needed]

    def finish(self, output_names):
        # Outputs: tensor names as given ("Identity:0" → node "Identity").
        final = []
        for out in output_names:
            value = self.get(out.partition(":")[0])
            if value.const is not None:
                raise ConversionError(f"output {out} is a constant")
            final.append((out, value))
        self.outputs_alias = {out: v.name for out, v in final}
        self.simplify()
        graph_outputs = []
        for out, value in final:
            source = self.outputs_alias[out]
            self.nodes.append(helper.make_node("Identity", [source], [out], name=out))
            graph_outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, value.shape))
        graph = helper.make_graph(
            self.nodes,
            "tfjs",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, self.input_shape)],
            graph_outputs,
            self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def convert(model_json, read_shard, input_shape=None, outputs=None, metadata=None):
    """Returns the ONNX model. `read_shard(path)` gives a weight shard's bytes;
    `input_shape` defaults to the signature's; `outputs` (tensor names) to
    the signature's outputs in sorted order."""
    model = json.loads(model_json) if isinstance(model_json, (bytes, str)) else model_json
    if model.get("format") != "graph-model":
        raise ConversionError(f"not a TF.js graph model (format {model.get('format')!r})")
    signature = model.get("signature", {})
    if input_shape is None:
        inputs = list(signature.get("inputs", {}).values())
        if len(inputs) != 1:
            raise ConversionError("the signature must have exactly one input; pass input_shape")
        input_shape = [int(d["size"]) for d in inputs[0]["tensorShape"]["dim"]]
    if outputs is None:
        outputs = sorted(signature.get("outputs", {}), key=lambda n: (len(n), n))
    weights = read_weights(model["weightsManifest"], read_shard)
    converter = Converter(model, weights, input_shape)
    onnx_model = converter.run(outputs)
    for key, value in (metadata or {}).items():
        onnx_model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    return onnx_model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_json")
    parser.add_argument("out")
    parser.add_argument("--input-shape", help="comma-separated, e.g. 1,3,416,416")
    args = parser.parse_args()
    base = os.path.dirname(os.path.abspath(args.model_json))

    def read_shard(path):
        with open(os.path.join(base, path), "rb") as f:
            return f.read()

    with open(args.model_json, encoding="utf-8") as f:
        model_json = f.read()
    shape = [int(s) for s in args.input_shape.split(",")] if args.input_shape else None
    try:
        model = convert(model_json, read_shard, shape)
    except ConversionError as e:
        sys.exit(f"tfjs_to_onnx: {e}")
    onnx.save(model, args.out)
    ops = {}
    for n in model.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    print(f"{args.out}: {len(model.graph.node)} nodes {dict(sorted(ops.items()))}")


if __name__ == "__main__":
    main()
