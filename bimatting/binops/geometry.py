"""One binary convolution's geometry, written once: sizes, output size, taps, the taps in the padding.

A `ConvGeometry` is built from an ONNX node (`from_node`), from the attributes of one
(`from_attributes`) or travels between compiler passes as ten ints (`to_ints` / `from_ints`,
kh kw sh sw top left bottom right dh dw). Everything is NCHW and follows ONNX Conv:
pads are (top, left, bottom, right) and

    out = (in + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1

(the ONNX Conv / torch.nn.Conv2d output size with floor rounding).
"""

from dataclasses import dataclass

import numpy as np

from bimatting.binops.schema import node_attributes

INTS_PER_GEOMETRY = 10  # kh kw sh sw top left bottom right dh dw


def output_size(in_size, kernel, *, stride=1, pad_before=0, pad_after=0, dilation=1):
    """Positions a conv window takes along one axis (ONNX Conv / torch Conv2d, floor rounding)."""
    return (int(in_size) + int(pad_before) + int(pad_after) - int(dilation) * (int(kernel) - 1) - 1) // int(stride) + 1


def normalize_pads(pads):
    """(ph, pw) or (top, left, bottom, right) -> (top, left, bottom, right) ints."""
    pads = tuple(int(p) for p in pads)
    return pads * 2 if len(pads) == 2 else pads


def valid_taps(out_size, in_size, kernel, *, stride, pad_before, dilation):
    """[out_size, kernel] bool: tap i of output position y reads inside the image (not the padding)."""
    pos = np.arange(out_size)[:, None] * stride + np.arange(kernel)[None, :] * dilation - pad_before
    return (pos >= 0) & (pos < in_size)


@dataclass(frozen=True)
class ConvGeometry:
    """One binary convolution: input size, channels, kernel, strides, pads, dilations (NCHW terms)."""

    height: int
    width: int
    channels_in: int
    channels_out: int
    kernel: tuple  # (KH, KW)
    strides: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)  # (top, left, bottom, right), ONNX Conv order
    dilations: tuple = (1, 1)

    @classmethod
    def from_attributes(cls, attrs, height, width, channels_out):
        """From a BinaryConv2d's attributes (defaults already filled in, schema.node_attributes)."""
        return cls(
            int(height),
            int(width),
            int(attrs["channels_in"]),
            int(channels_out),
            tuple(int(k) for k in attrs["kernel_shape"]),
            tuple(int(s) for s in attrs["strides"]),
            normalize_pads(attrs["pads"]),
            tuple(int(d) for d in attrs["dilations"]),
        )

    @classmethod
    def from_node(cls, node, height, width, channels_out):
        """From a BinaryConv2d(Masked) node on an input of `height` x `width`."""
        return cls.from_attributes(node_attributes(node), height, width, channels_out)

    def to_ints(self):
        """kh kw sh sw top left bottom right dh dw: the spatial part, as one ONNX ints attribute."""
        return list(self.kernel) + list(self.strides) + list(self.pads) + list(self.dilations)

    @staticmethod
    def ints_from_attributes(attrs):
        """`to_ints` of the conv a BinaryConv2d's attributes describe (no sizes needed)."""
        return (
            [int(v) for v in attrs["kernel_shape"]]
            + [int(v) for v in attrs["strides"]]
            + list(normalize_pads(attrs["pads"]))
            + [int(v) for v in attrs["dilations"]]
        )

    @classmethod
    def from_ints(cls, ints, height, width, channels_in, channels_out):
        kh, kw, sh, sw, top, left, bottom, right, dh, dw = (int(v) for v in ints)
        return cls(
            int(height),
            int(width),
            int(channels_in),
            int(channels_out),
            (kh, kw),
            (sh, sw),
            (top, left, bottom, right),
            (dh, dw),
        )

    @property
    def out_height(self):
        return output_size(
            self.height,
            self.kernel[0],
            stride=self.strides[0],
            pad_before=self.pads[0],
            pad_after=self.pads[2],
            dilation=self.dilations[0],
        )

    @property
    def out_width(self):
        return output_size(
            self.width,
            self.kernel[1],
            stride=self.strides[1],
            pad_before=self.pads[1],
            pad_after=self.pads[3],
            dilation=self.dilations[1],
        )

    @property
    def taps(self):
        """K_all: number of +-1 products in one output value (real channels only)."""
        return self.kernel[0] * self.kernel[1] * self.channels_in

    def valid_rows(self):
        """[OH, KH] bool: kernel row i of output row y reads inside the image."""
        return valid_taps(
            self.out_height,
            self.height,
            self.kernel[0],
            stride=self.strides[0],
            pad_before=self.pads[0],
            dilation=self.dilations[0],
        )

    def valid_cols(self):
        """[OW, KW] bool: kernel column j of output column x reads inside the image."""
        return valid_taps(
            self.out_width,
            self.width,
            self.kernel[1],
            stride=self.strides[1],
            pad_before=self.pads[1],
            dilation=self.dilations[1],
        )
