"""ONNX pre-pass: recognise the `ai.bimatting` ops and rewrite them for the TVM importer.

TVM's Relax ONNX frontend looks converters up by `op_type` alone and ignores the node domain,
so this pass is where the domain is honoured: every `ai.bimatting` node becomes a node of the
private domain below with a `Bimatting*` op type that only our converters (importer.py) know.

Rewrites (the model is copied, never changed in place):
* BinarizePack -> BinaryConv2d(Masked): one `BimattingPackWords` per float tensor that packed
  activations come from, straight from that tensor, with a per-channel Add right before each
  BinarizePack (LearnableBias) folded in: the pack computes sign(x + b_v) for every branch v
  reading x through its own bias, in one pass over x (variant v of the packed words; each
  convolution names its group and variant); a BinaryConv2d fed by other uint8 data re-packs
  those bytes instead.
* Weights, scale and bias (initializers or Constant nodes) move into tensor attributes of
  `BimattingBinaryConv`, which pre-packs them at compile time.
* Output transform fusion: the per-channel Mul / Add / PRelu nodes that only post-process a
  binary conv (BatchNorm leftovers, LearnableBias, RPReLU) move into the kernel's epilogue, kept
  in their order so every float rounding stays the graph's, and so does one Add of another
  tensor (the block's residual; an extra input of the conv, `residual` step): the float output
  a ReActNet block writes then comes straight out of its conv. The importer checks the residual
  has the conv's output shape and otherwise emits the steps from it on as separate ops. For the
  masked op only what keeps masked positions at exactly 0 folds (Mul, PRelu).
* Standalone BinarizePack / Unpack keep their ONNX semantics (`BimattingBinarizePack`, ...).
* Frontend gaps: an empty `scales` / `roi` of Resize (legal ONNX, as PyTorch exports it) is
  made absent; TVM's converter rejects scales and sizes given together.
"""

import heapq

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bimatting.binops import schema
from bimatting.binops.geometry import ConvGeometry
from bimatting.errors import InputError

PRIVATE_DOMAIN = "bimatting.tvm"
_is_custom = schema.is_domain_node


def _constants(graph):
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = node.attribute[0]
            if attr.name == "value":
                values[node.output[0]] = numpy_helper.to_array(attr.t)
            elif attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
                values[node.output[0]] = np.asarray(helper.get_attribute_value(attr))
    return values


class _Graph:
    """Producer / consumer lookups over a GraphProto."""

    def __init__(self, graph):
        self.graph = graph
        self.consts = _constants(graph)
        self.outputs = {o.name for o in graph.output}
        self.producer, self.consumers = {}, {}
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def sole_consumer(self, name):
        users = self.consumers.get(name, [])
        if len(users) == 1 and name not in self.outputs:
            return users[0]
        return None

    def const(self, name, what, node):
        if name not in self.consts:
            raise InputError(
                f"{schema.DOMAIN}.{node.op_type} node '{node.name}': {what} '{name}' must be a "
                "compile-time constant (an initializer or Constant node)"
            )
        return self.consts[name]


def _per_channel(value, channels):
    """`value` as a length-`channels` vector if it broadcasts per channel over NCHW, else None."""
    value = np.asarray(value)
    if value.size == 1:
        return np.full(channels, float(value.reshape(-1)[0]), np.float32)
    squeezed = value.reshape(-1)
    shape = tuple(value.shape)
    per_channel_shapes = {(channels,) + (1,) * k for k in (2,)} | {(1, channels, 1, 1)}
    if squeezed.size == channels and (shape in per_channel_shapes):
        return squeezed.astype(np.float32)
    return None


RESIDUAL = "residual"  # epilogue step: + another tensor of the output's shape


def _fold_output_transform(g, conv, channels_out, masked, taken=frozenset()):
    """Per-channel Mul / Add / PRelu nodes that only post-process `conv`'s output, in order, and
    at most one Add of another tensor (the residual).

    Returns (folded nodes, the last one's output name, [(kind, values)], residual tensor name or
    None). The masked op keeps masked positions at exactly 0 only through Mul and PRelu, so Add
    does not fold there. Nodes in `taken` (ids) went to another conv: an Add of two convs' chains
    is the residual of the first conv only.
    """
    folded, steps, out, residual = [], [], conv.output[0], None
    while True:
        node = g.sole_consumer(out)
        if node is None or node.domain not in ("", "ai.onnx") or len(node.input) != 2 or id(node) in taken:
            break
        other = node.input[1] if node.input[0] == out else node.input[0]
        kind = {"Mul": "mul", "Add": "add", "PRelu": "prelu"}.get(node.op_type)
        if kind == "add" and other not in g.consts and not masked and residual is None and other != out:
            kind, residual, value = RESIDUAL, other, np.zeros(channels_out, np.float32)
        else:
            if kind is None or other not in g.consts or (masked and kind == "add"):
                break
            if kind == "prelu" and node.input[0] != out:
                break
            value = _per_channel(g.consts[other], channels_out)
            if value is None:
                break
        steps.append((kind, value))
        folded.append(node)
        out = node.output[0]
    return folded, out, steps, residual


def _check_custom_nodes(graph):
    for node in graph.node:
        if _is_custom(node) and node.op_type not in schema.KNOWN_OPS:
            raise InputError(
                f"unsupported operator {schema.DOMAIN}.{node.op_type} (node '{node.name}'); "
                f"this compiler knows {', '.join(schema.KNOWN_OPS)}"
            )


def _drop_empty_resize_inputs(graph, consts):
    for node in graph.node:
        if node.op_type == "Resize" and node.domain in ("", "ai.onnx"):
            for index in (1, 2):  # roi, scales
                name = node.input[index] if len(node.input) > index else ""
                if name and name in consts and np.asarray(consts[name]).size == 0:
                    node.input[index] = ""


def bind_inputs(model, values):
    """Turn graph inputs named in `values` ({name: array}) into initializers (a copy)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    declared = {i.name: helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in out.graph.input}
    kept = [i for i in out.graph.input if i.name not in values]
    del out.graph.input[:]
    out.graph.input.extend(kept)
    for name, value in values.items():  # in the input's declared type (a ratio stays float32)
        out.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=declared.get(name)), name))
    return out


def rewrite(model):
    """The rewritten copy of `model` (module docstring) and the number of binary convolutions."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    _check_custom_nodes(graph)
    g = _Graph(graph)
    _drop_empty_resize_inputs(graph, g.consts)
    replaced, conv_nodes, removed = {}, [], set()
    groups = {}  # (kind, tensor) -> [conv nodes]
    packs = {}  # ("float", tensor) -> its BinarizePack node
    for node in graph.node:
        if not (_is_custom(node) and node.op_type in schema.CONV_OPS):
            continue
        source = g.producer.get(node.input[0])
        if source is not None and _is_custom(source) and source.op_type == "BinarizePack":
            key = ("float", source.input[0])
            packs.setdefault(key, source)
        else:
            key = ("bytes", node.input[0])
        groups.setdefault(key, []).append(node)
        conv_nodes.append((node, key))
    for node, key in conv_nodes:
        replaced[id(node)] = _conv_node(g, node, removed)
    # After the epilogue folds: an Add already moved into a conv epilogue stays there.
    sources = {
        key: (
            _pack_source(g, packs[key], schema.node_attributes(convs[0])["channels_in"], removed)
            if key in packs
            else (key[1], None, None)
        )
        for key, convs in groups.items()
    }
    pack_sets = {}  # (kind, tensor read) -> [group keys]: the variants of one pack
    for key in groups:
        tensor, _, add = sources[key]
        if add is not None:
            removed.add(id(add))
        pack_sets.setdefault((key[0], tensor), []).append(key)
    for set_id, ((kind, tensor), keys) in enumerate(pack_sets.items()):
        convs = [conv for key in keys for conv in groups[key]]
        for variant, key in enumerate(keys):
            for conv in groups[key]:
                _read_pack(replaced[id(conv)][-1], set_id, variant)
        biases = [sources[key][1] for key in keys]
        # placed with the set's first conv; _topological moves it before any reader it follows
        replaced[id(convs[0])] = [_pack_node(kind, tensor, biases, set_id, convs)] + replaced[id(convs[0])]
    for node in graph.node:  # BinarizePack nodes now only feeding rewritten convs go away
        if _is_custom(node) and node.op_type == "BinarizePack":
            users = g.consumers.get(node.output[0], [])
            if node.output[0] not in g.outputs and users and all(id(u) in replaced for u in users):
                removed.add(id(node))
    new_nodes = []
    for node in graph.node:
        if id(node) in removed:
            continue
        if id(node) in replaced:
            new_nodes.extend(replaced[id(node)])
        elif _is_custom(node):
            new_nodes.append(_plain_custom_node(node))
        else:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(_topological(new_nodes))
    kept_functions = [f for f in out.functions if f.domain != schema.DOMAIN]
    del out.functions[:]
    out.functions.extend(kept_functions)
    return out, len(conv_nodes)


def _topological(nodes):
    """`nodes` in an order where every input is produced first, as close to the given order as
    that allows: a conv that took in its residual Add reads a tensor produced after the conv's
    old place, and a pack placed with the first conv of its set may follow another of its readers."""
    produced = {name for node in nodes for name in node.output} - {""}  # not graph inputs or initializers
    waiting = {index: {name for name in node.input if name in produced} for index, node in enumerate(nodes)}
    readers = {}
    for index, names in waiting.items():
        for name in names:
            readers.setdefault(name, set()).add(index)
    ready = [index for index, names in waiting.items() if not names]
    heapq.heapify(ready)
    ordered = []
    while ready:
        index = heapq.heappop(ready)
        ordered.append(nodes[index])
        for name in nodes[index].output:
            for reader in sorted(readers.get(name, ())):
                waiting[reader].discard(name)
                if not waiting[reader]:
                    heapq.heappush(ready, reader)
    if len(ordered) != len(nodes):
        raise InputError("the model's graph has a cycle (a node reads what it produces, through other nodes)")
    return ordered


def _pack_source(g, pack, channels, taken):
    """What a BinarizePack really reads: (tensor, bias, Add node). A per-channel constant Add
    (LearnableBias) whose only use is this BinarizePack folds into the pack kernel, which then
    computes sign(x + b) with the same float32 addition."""
    tensor = pack.input[0]
    add = g.producer.get(tensor)
    users = g.consumers.get(pack.output[0], [])
    if (
        add is None
        or id(add) in taken
        or add.op_type != "Add"
        or add.domain not in ("", "ai.onnx")
        or g.sole_consumer(tensor) is not pack
        or pack.output[0] in g.outputs
        or not all(_is_custom(u) and u.op_type in schema.CONV_OPS for u in users)
    ):
        return tensor, None, None
    for x, other in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        if other in g.consts and x not in g.consts:
            bias = _per_channel(g.consts[other], channels)
            if bias is not None:
                return x, bias, add
    return tensor, None, None


def _pack_node(kind, tensor, biases, group_id, convs):
    """One pass over `tensor` packing one variant per entry of `biases` (numpy [C] or None: no
    bias, packed as + 0, which leaves every sign as it is)."""
    consumers = []
    for conv in convs:
        consumers += ConvGeometry.ints_from_attributes(schema.node_attributes(conv))
    channels = schema.node_attributes(convs[0])["channels_in"]
    attrs = {
        "group": group_id,
        "consumers": consumers,
        "from_bytes": int(kind == "bytes"),
        "channels_in": channels,
        "variants": len(biases),
    }
    if any(bias is not None for bias in biases):
        rows = [np.zeros(channels, np.float32) if bias is None else np.asarray(bias, np.float32) for bias in biases]
        attrs["bias"] = numpy_helper.from_array(np.stack(rows), "bias")  # [V, C]
    return helper.make_node(
        "BimattingPackWords",
        [tensor],
        [_packed_name(group_id)],
        name=f"bimatting_pack_{group_id}",
        domain=PRIVATE_DOMAIN,
        **attrs,
    )


def _packed_name(group_id):
    return f"__bimatting_packed_{group_id}"


def _read_pack(conv, group_id, variant):
    """Point a rewritten BimattingBinaryConv at variant `variant` of pack `group_id`."""
    conv.input[0] = _packed_name(group_id)
    conv.attribute.extend([helper.make_attribute("group", group_id), helper.make_attribute("variant", variant)])


def _conv_node(g, node, removed):
    """The BimattingBinaryConv of `node` with its epilogue folded in; its packed input (first) is
    named by _read_pack once the packs are known."""
    attrs = schema.node_attributes(node)
    masked = node.op_type == "BinaryConv2dMasked"
    expected = 5 if masked else 4
    if len(node.input) != expected:
        raise InputError(
            f"{schema.DOMAIN}.{node.op_type} node '{node.name}' has {len(node.input)} inputs, expected {expected}"
        )
    weights = np.asarray(g.const(node.input[1], "weights", node), np.uint8)
    channels_out = weights.shape[0]
    scale = np.asarray(g.const(node.input[2], "scale", node), np.float32).reshape(-1)
    bias = np.asarray(g.const(node.input[3], "bias", node), np.float32).reshape(-1)
    if scale.size != channels_out or bias.size != channels_out:
        raise InputError(
            f"{schema.DOMAIN}.{node.op_type} node '{node.name}': scale and bias must have "
            f"{channels_out} values (one per output channel)"
        )
    folded, output, post, residual = _fold_output_transform(g, node, channels_out, masked, removed)
    removed.update(id(f) for f in folded)
    steps = [("mul", scale), ("add", bias)] + post
    inputs = [""] + ([node.input[4]] if masked else []) + ([residual] if residual else [])
    values = np.stack([np.asarray(v, np.float32).reshape(-1) for _, v in steps])  # [S, O]
    return [
        helper.make_node(
            "BimattingBinaryConv",
            inputs,
            [output],
            name=node.name or output,
            domain=PRIVATE_DOMAIN,
            masked=int(masked),
            channels_in=attrs["channels_in"],
            geometry=ConvGeometry.ints_from_attributes(attrs),
            weights=numpy_helper.from_array(weights, "weights"),
            epilogue_kinds=[kind for kind, _ in steps],
            epilogue_values=numpy_helper.from_array(values, "epilogue_values"),
        )
    ]


def _plain_custom_node(node):
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.op_type, copy.domain = f"Bimatting{node.op_type}", PRIVATE_DOMAIN
    return copy


def uses_binary_ops(model):
    return any(_is_custom(n) for n in model.graph.node)
