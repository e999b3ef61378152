"""Builds an ONNX graph of torchvision's MobileNetV2 from its state dict,
with numpy and onnx only (no PyTorch).

Batch norm is folded into the preceding convolution (inference only), ReLU6
becomes Clip(0, 6), and dropout disappears. Input: float32 NCHW RGB
[batch, 3, 224, 224], normalised with the ImageNet mean and std. Output:
logits [batch, 1000].
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BN_EPS = 1e-5  # torchvision's BatchNorm2d default
OPSET = 13

# torchvision's inverted residual settings: expansion t, channels c,
# repeats n, first stride s.
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class _Builder:
    def __init__(self, state):
        self.state = state
        self.used = set()
        self.nodes = []
        self.inits = []
        self.count = 0

    def take(self, name):
        if name not in self.state:
            raise KeyError(f"state dict lacks {name}")
        self.used.add(name)
        return self.state[name].astype(np.float32)

    def fresh(self, prefix):
        self.count += 1
        return f"{prefix}_{self.count}"

    def conv_bn(self, x, conv, bn, stride, relu6):
        """conv (no bias) followed by batch norm `bn`, folded into one Conv."""
        w = self.take(f"{conv}.weight")
        gamma, beta = self.take(f"{bn}.weight"), self.take(f"{bn}.bias")
        mean, var = self.take(f"{bn}.running_mean"), self.take(f"{bn}.running_var")
        self.used.add(f"{bn}.num_batches_tracked")
        scale = gamma / np.sqrt(var + BN_EPS)
        w = (w * scale[:, None, None, None]).astype(np.float32)
        b = (beta - mean * scale).astype(np.float32)
        out_ch, in_per_group, kh, kw = w.shape
        group = 1 if in_per_group != 1 or kh == 1 else out_ch
        wname, bname = f"{conv}.w", f"{conv}.b"
        self.inits += [numpy_helper.from_array(w, wname), numpy_helper.from_array(b, bname)]
        y = self.fresh("conv")
        pad = kh // 2
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, wname, bname],
                [y],
                kernel_shape=[kh, kw],
                strides=[stride, stride],
                pads=[pad, pad, pad, pad],
                group=group,
            )
        )
        if relu6:
            z = self.fresh("relu6")
            self.nodes.append(helper.make_node("Clip", [y, "zero", "six"], [z]))
            return z
        return y

    def add(self, a, b):
        y = self.fresh("add")
        self.nodes.append(helper.make_node("Add", [a, b], [y]))
        return y


def build(state, metadata):
    b = _Builder(state)
    b.inits += [
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        numpy_helper.from_array(np.array(6.0, dtype=np.float32), "six"),
    ]
    x = b.conv_bn("input", "features.0.0", "features.0.1", 2, True)
    in_ch = 32
    index = 1
    for t, c, n, s in SETTINGS:
        for i in range(n):
            stride = s if i == 0 else 1
            p = f"features.{index}.conv"
            block_in = x
            if t == 1:
                h = b.conv_bn(x, f"{p}.0.0", f"{p}.0.1", stride, True)
                h = b.conv_bn(h, f"{p}.1", f"{p}.2", 1, False)
            else:
                h = b.conv_bn(x, f"{p}.0.0", f"{p}.0.1", 1, True)
                h = b.conv_bn(h, f"{p}.1.0", f"{p}.1.1", stride, True)
                h = b.conv_bn(h, f"{p}.2", f"{p}.3", 1, False)
            x = b.add(block_in, h) if stride == 1 and in_ch == c else h
            in_ch = c
            index += 1
    x = b.conv_bn(x, f"features.{index}.0", f"features.{index}.1", 1, True)

    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"]))
    b.nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], axis=1))
    fc_w, fc_b = b.take("classifier.1.weight"), b.take("classifier.1.bias")
    b.inits += [numpy_helper.from_array(fc_w, "fc.w"), numpy_helper.from_array(fc_b, "fc.b")]
    b.nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1))

    unused = set(k for k in state if k not in b.used)
    if unused:
        raise ValueError(f"state dict has weights the graph does not use: {sorted(unused)[:5]}")

    graph = helper.make_graph(
        b.nodes,
        "mobilenet_v2",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="imagetag-prepare-models")
    model.ir_version = 8  # readable by older runtimes too
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    return model
