"""Static input shapes of a recurrent matting model at one resolution.

TVM compiles one static-shape network per resolution. Inputs follow RVM's convention
(`src, r1i..r4i, downsample_ratio -> fgr, pha, r1o..r4o`, shared by BiMatting):
* the image `src` [1, 3, H, W] gets the requested resolution;
* `downsample_ratio` (if the model has it) is bound to a constant;
* a recurrent state `rKi` is paired with the output `rKo` and has its shape. ONNX shape
  inference cannot follow RVM's size arithmetic, so the state shape is first taken from RVM's
  rule (K-th state at ceil(H'/2^K) x ceil(W'/2^K), H' = floor(H * s)) and then checked against
  what TVM infers for the paired output; a mismatch is corrected once and checked again.
"""

import math
import re
from dataclasses import dataclass, field

from bimatting.downsample import auto_downsample_ratio
from bimatting.errors import InputError

FLOAT = 1  # onnx.TensorProto.FLOAT
DEFAULT_RESOLUTION = (512, 288)  # W, H


@dataclass
class InputPlan:
    image: str
    resolution: tuple  # (W, H)
    downsample_ratio: float = None
    constants: dict = field(default_factory=dict)  # bound inputs: name -> array
    shapes: dict = field(default_factory=dict)  # name -> static dims
    states: dict = field(default_factory=dict)  # state input -> paired output
    output_shapes: dict = field(default_factory=dict)  # output -> static dims (after import)


def _state_output(name, output_names):
    if name.endswith("i") and name[:-1] + "o" in output_names:
        return name[:-1] + "o"
    return None


def _static(dims):
    return all(isinstance(d, int) and d > 0 for d in dims)


def plan_inputs(inputs, outputs, resolution=None, downsample_ratio=None):
    """An InputPlan from graph_io-style (name, dims, elem type) lists."""
    images = [i for i in inputs if len(i[1]) == 4 and i[1][1] == 3 and i[2] == FLOAT]
    image = next((i for i in images if i[0] == "src"), images[0] if images else None)
    if image is None:
        raise InputError("the model has no image input [N, 3, H, W] float32 (expected one named 'src')")
    if resolution is None:
        h, w = image[1][2], image[1][3]
        resolution = (w, h) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else DEFAULT_RESOLUTION
    width, height = resolution
    if image[1][2:] != [height, width] and all(isinstance(d, int) and d > 0 for d in image[1][2:]):
        raise InputError(
            f"the model's '{image[0]}' input is fixed at {image[1][3]}x{image[1][2]}; "
            f"it cannot be compiled at {width}x{height} (omit --resolution)"
        )
    plan = InputPlan(image=image[0], resolution=(width, height))
    plan.shapes[image[0]] = [1, 3, height, width]
    names = {i[0] for i in inputs}
    if "downsample_ratio" in names:
        ratio = auto_downsample_ratio(height, width) if downsample_ratio is None else float(downsample_ratio)
        if not 0 < ratio <= 1:
            raise InputError(f"--downsample-ratio must be in (0, 1], got {ratio}")
        plan.downsample_ratio = ratio
        plan.constants["downsample_ratio"] = [ratio]
    elif downsample_ratio is not None:
        raise InputError("this model has no 'downsample_ratio' input; omit --downsample-ratio")
    out_dims = {o[0]: o[1] for o in outputs}
    small_h, small_w = (
        math.floor(height * (plan.downsample_ratio or 1.0)),
        math.floor(width * (plan.downsample_ratio or 1.0)),
    )
    state_index = 0
    for name, dims, _ in inputs:
        if name in (image[0], "downsample_ratio"):
            continue
        paired = _state_output(name, out_dims)
        if paired:
            plan.states[name] = paired
        if _static(dims):
            plan.shapes[name] = list(dims)
            continue
        if not paired or len(dims) != 4:
            raise InputError(
                f"input '{name}' has a dynamic shape {dims} and is not a recurrent state "
                "(rKi paired with an output rKo); export the model with static shapes"
            )
        state_index += 1
        digits = re.search(r"(\d+)", name)
        level = int(digits.group(1)) if digits else state_index
        channels = next(
            (
                d
                for d in (out_dims[paired][1] if len(out_dims[paired]) == 4 else None, dims[1])
                if isinstance(d, int) and d > 0
            ),
            None,
        )
        if channels is None:
            raise InputError(f"cannot tell the channel count of state '{name}'; export it with a static channel dim")
        scale = 2**level
        plan.shapes[name] = [1, channels, -(-small_h // scale), -(-small_w // scale)]
    return plan


def reconcile_states(plan, inferred_outputs):
    """Update state shapes from the output shapes TVM inferred; True if anything changed."""
    changed = False
    for state, output in plan.states.items():
        shape = inferred_outputs.get(output)
        if shape is None:
            raise InputError(f"TVM could not infer a static shape for output '{output}'")
        if list(shape) != plan.shapes[state]:
            plan.shapes[state] = list(shape)
            changed = True
    return changed
