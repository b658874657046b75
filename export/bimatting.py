"""BiMatting -> ONNX with the binary structure explicit: every BiConv2d is one ai.bimatting
BinaryConv2d (or BinaryConv2dMasked in the SAB branches) on bit-packed operands, its weights a
uint8 initializer; signs are BinarizePack nodes; the rest (stem, heads, box filter, BN-free
activations, resizes) are standard ops.

Graph-level choices, each reproducing the PyTorch model:
* The SAB masked branches use BinaryConv2dMasked with the soft mask M_up; the model multiplies the
  branch by M_up afterwards, so values where M_up == 0 never matter. In decode0 a FP 3x3 conv
  follows the binary one, so its mask is widened by one pixel (MaxPool 3x3) first.
* The refiner runs only when s != 1 (model semantics). With a runtime ratio both paths run and
  Where(s == 1) chooses (no control flow); a baked ratio keeps one path.
* BiMobileNet's dense skip is added after triples that contain a stride-2 block: the model's
  "spatial size changed" test, true for every input of at least 16 px after the resize.
"""
import numpy as np

from bimatting.export import layers, shared_graph

PHA_S = "decoder.incoherent_mask.pha_s"  # the coarse alpha [N,1,h16,w16] the mask thresholds


def emit(builder, model, interface):
    """Emit the whole network; declares the graph outputs."""
    def aspp(b, module, f4):                                              # [N,128,h16,w16]
        return b.mark("aspp", b.op("Mul", [layers.sequential(b, module.aspp1, f4),
                                           layers.sequential(b, module.aspp2, f4)]))

    def decode(b, net, s0, features, states):
        return decoder(b, net.decoder, net.project_mat, s0, features, states)

    shared_graph.emit_network(builder, model, interface, encoder, aspp, decode, refine_always=False)


# -- encoder ----------------------------------------------------------------------------------

def encoder(b, backbone, x):
    """BiMobileNet: [N,3,H,W] -> f1 16 @1/2, f2 32 @1/4, f3 64 @1/8, f4 1024 @1/16."""
    from bimatting.models.bimatting.bimobilenet import DENSE_TRIPLES, TAPS

    mean = b.initializer(np.asarray(backbone.mean.cpu(), np.float32), "backbone.mean")
    std = b.initializer(np.asarray(backbone.std.cpu(), np.float32), "backbone.std")
    x = b.op("Div", [b.op("Sub", [x, mean]), std])
    ends = {first: last for first, last in DENSE_TRIPLES}
    saved, saved_until, taps = None, None, {}
    for index, block in enumerate(backbone.feature):
        with b.scope(f"feature.{index}"):
            if index == 0:
                x = layers.conv(b, block.conv1, x, bn=block.bn1)          # FP stem, no activation
            else:
                x = binary_block(b, block, x)
            b.mark(f"backbone.feature.{index}", x)  # the block's own output, before a dense skip
            if index in ends:
                saved, saved_until = x, ends[index]
            elif index == saved_until:
                triple = range(saved_until - 2, saved_until + 1)
                if any(backbone.feature[i].stride == 2 for i in triple):
                    x = b.op("Add", [x, b.avg_pool2(saved)])
                saved, saved_until = None, None
        if index in TAPS:
            taps[TAPS[index]] = x
    return taps["f1"], taps["f2"], taps["f3"], taps["f4"]


def _rprelu(b, x, shift_in, prelu, shift_out):
    x = layers.add_channel_bias(b, shift_in, x)
    return layers.add_channel_bias(b, shift_out, layers.prelu(b, prelu, x))


def binary_block(b, block, x):
    """ReActNet block (see BinaryBlock): [N,in,H,W] -> [N,out,H/s,W/s]."""
    shortcut = b.avg_pool2(x) if block.stride == 2 else x
    packed = layers.binarize_pack(b, x, shift=block.move11)
    o1 = b.op("Add", [layers.binary_conv(b, block.binary_3x3, packed, bn=block.bn1), shortcut])
    o1 = _rprelu(b, o1, block.move12, block.prelu1, block.move13)

    u = layers.binarize_pack(b, o1, shift=block.move21)                  # shared by the 1x1 convs
    if block.out_channels == block.in_channels:
        o2 = b.op("Add", [layers.binary_conv(b, block.binary_pw, u, bn=block.bn2), o1])
    elif block.out_channels > block.in_channels:
        parts = [b.op("Add", [layers.binary_conv(b, getattr(block, f"binary_pw_down{k}"), u,
                                                 bn=getattr(block, f"bn2_{k}")), o1])
                 for k in range(1, block.out_channels // block.in_channels + 1)]
        o2 = b.op("Concat", parts, axis=1)
    else:
        first, second = b.split(o1, [block.out_channels] * 2)
        halved = b.op("Div", [b.op("Add", [first, second]), b.const(2.0, np.float32)])
        o2 = b.op("Add", [layers.binary_conv(b, block.binary_pw_down1, u, bn=block.bn2_1), halved])
    return _rprelu(b, o2, block.move22, block.prelu2, block.move23)


# -- decoder ----------------------------------------------------------------------------------

def decoder(b, dec, project_mat, s0, features, states):
    """SAB decoder -> hid [N,16,H',W'], [r1o, r2o, r3o, r4o]."""
    f1, f2, f3, f4 = features
    r1, r2, r3, r4 = states
    s1 = b.avg_pool2(s0)
    s2 = b.avg_pool2(s1)
    s3 = b.avg_pool2(s2)
    with b.scope("decode4"):
        half = dec.decode4.channels // 2
        a, rest = b.split(f4, [half, half])
        r4 = conv_gru(b, dec.decode4.gru, rest, r4, "r4o")
        x4 = b.op("Concat", [a, r4], axis=1)                              # [N,128,h16,w16]
        hid_s = b.mark("decoder.decode4.conv", layers.sequential(b, dec.decode4.conv, x4))  # [N,16,h16,w16]
    with b.scope("incoherent_mask"):
        coarse = layers.conv(b, project_mat.conv, hid_s)                  # shared head, [N,4,h16,w16]
        pha_s = b.clip(b.slice(coarse, [3], [4], [1]), 0.0, 1.0, out=PHA_S)  # named: verify reads it
        mask = b.mark("decoder.incoherent_mask",
                      incoherent_mask(b, pha_s, dec.incoherent_mask.threshold))  # [N,1,h16,w16]
    x, new_states = x4, [r4]
    for name, f, s, r, out in (("decode3", f3, s3, r3, "r3o"), ("decode2", f2, s2, r2, "r2o"),
                               ("decode1", f1, s1, r1, "r1o")):
        with b.scope(name):
            x, r = upsampling_block(b, getattr(dec, name), x, f, s, r, mask, out)
            b.mark(f"decoder.{name}", x)
        new_states.insert(0, r)
    with b.scope("decode0"):
        block = dec.decode0
        x = b.op("Concat", [shared_graph.upsample2_crop(b, x, s0), s0], axis=1)  # [N,35,H',W']
        hid = b.mark("decoder.decode0", sab_branches(b, block, x, b.resize_to(mask, b.shape_slice(s0, 2, 4))))
    return hid, new_states


def incoherent_mask(b, pha_s, threshold):
    """M = [|m - up(down(m))| >= threshold], m = [pha_s > 0], down to max(h // 2, 1).  [N,1,h,w]"""
    hard = b.op("Cast", [b.op("Greater", [pha_s, b.const(0.0, np.float32)])], to=shared_graph.FLOAT)
    size = b.shape_slice(pha_s, 2, 4)
    half = b.op("Max", [b.op("Div", [size, b.const([2, 2])]), b.const([1, 1])])
    smooth = b.resize_to(b.resize_to(hard, half), size)
    far = b.op("GreaterOrEqual", [b.op("Abs", [b.op("Sub", [hard, smooth])]), b.const(threshold, np.float32)])
    return b.op("Cast", [far], to=shared_graph.FLOAT)


def sab_branches(b, block, x, mask_up):
    """x = branch3x3(x) * M_up + branch1x1(x), the 3x3 branch computed only where M_up != 0."""
    masked = b.op("Mul", [layers.sequential(b, block.conv, x, mask=mask_up), mask_up])
    return b.op("Add", [masked, layers.sequential(b, block.conv_1x1, x)])


def upsampling_block(b, block, x, f, s, r, mask, out):
    """decode3/2/1: [N,in,h,w] -> [N,out,H,W] (H, W = s's size), state r -> `out`."""
    x = b.op("Concat", [shared_graph.upsample2_crop(b, x, s), f, s], axis=1)
    mask_up = b.resize_to(mask, b.shape_slice(s, 2, 4))                  # [N,1,H,W] soft
    x = sab_branches(b, block, x, mask_up)
    half = block.out_channels // 2
    a, rest = b.split(x, [half, half])
    r = conv_gru_up(b, block.gru, rest, r, mask_up, out)
    return b.op("Concat", [a, r], axis=1), r


def conv_gru(b, gru, x, state, out):
    """decode4's plain binary ConvGRU step: x [N,C,H,W] -> h' named `out`."""
    h = shared_graph.expand_state(b, state, x)
    r, z = b.split(layers.sequential(b, gru.ih, b.op("Concat", [x, h], axis=1)), [gru.channels] * 2)
    c = layers.sequential(b, gru.hh, b.op("Concat", [x, b.op("Mul", [r, h])], axis=1))
    return shared_graph.gru_update(b, h, z, c, out)


def conv_gru_up(b, gru, x, state, mask_up, out):
    """SAB ConvGRU step: every gate = act(3x3) * M_up + act(1x1), the 3x3 masked."""
    h = shared_graph.expand_state(b, state, x)

    def gate(masked_branch, dense_branch, inputs):
        masked = b.op("Mul", [layers.sequential(b, masked_branch, inputs, mask=mask_up), mask_up])
        return b.op("Add", [masked, layers.sequential(b, dense_branch, inputs)])

    xh = b.op("Concat", [x, h], axis=1)
    r, z = b.split(gate(gru.ih, gru.ih_1x1, xh), [gru.channels] * 2)
    c = gate(gru.hh, gru.hh_1x1, b.op("Concat", [x, b.op("Mul", [r, h])], axis=1))
    return shared_graph.gru_update(b, h, z, c, out)
