"""`bimatting export --verify`: run the ONNX file in onnxruntime beside the PyTorch network on real
frames, recurrent states fed back on both sides, and compare fgr and pha frame by frame.

Tolerance per frame (the issue's acceptance check): mean |diff| <= 1e-4 and max |diff| <= 1e-2
for pha and for fgr.

Sign decisions at near-ties. BiMatting's eval mode computes what the graph computes, operation
for operation (folded binary convs, an integer-exact stem, fixed-order pooling, upsampling, tanh
and sigmoid, exact float layers after the binary part: bimatting/models/bimatting/fixed_order.py
and fixed_point.py), so the values before every sign are the same bits in both. Other networks
(RVM, older graphs) differ by float rounding, up to ~3e-5 after a residual stream. A value that close to 0 can take
the other sign, and in a binary network one flipped bit flips about ten bits of the next layer:
the two runs then diverge completely, although both are right to float precision.
The comparison therefore aligns such decisions: where the PyTorch pre-sign value is within
NEAR_TIE of zero and onnxruntime chose the other sign, PyTorch takes onnxruntime's sign (likewise
for the coarse alpha > 0 test of the SAB mask). Every aligned decision is counted and reported;
a wrong graph flips signs far from ties, which stay unaligned and fail the check.

The report says where the runtimes part, whatever the verdict: per frame the fraction of pha
pixels off by more than PIXEL_DIFF, the near-ties aligned and the decisions still flipped; over the
run the decisions that differed before alignment per site (the graph's BinarizePack node names)
and the first of them (frame, site, |x|). `align_ties=False` (`export --verify --exact`) compares
the two runs as they are, which is what two deployed runtimes do.
"""

import numpy as np
from tqdm import tqdm

from bimatting.binops import schema
from bimatting.downsample import auto_downsample_ratio
from bimatting.errors import InputError, RuntimeFailure
from bimatting.export.graph import with_outputs
from bimatting.matting.frames import iter_frames
from bimatting.recurrent import recurrent_step

TOLERANCE = {"mean": 1e-4, "max": 1e-2}
PIXEL_DIFF = 0.05  # reported per frame: the fraction of pha pixels that differ by more than this
# Near-tie band for sign alignment: 4x the largest float32 drift measured between the two runs on
# values whose sign agrees (2.7e-5, random-init BiMatting, 512x288); typical |x| is ~0.1..10.
NEAR_TIE = 1e-4
DEFAULT_FRAMES = 8


class DecisionProbe:
    """Forward hooks on PyTorch's sign decisions that compare each with onnxruntime's (the same
    decision read from the graph) and, with `align`, align near-ties (see module doc).

    Counts per frame: `raw` decisions that differ before alignment, `aligned` near-ties aligned,
    `flipped` = raw - aligned (differences far from a tie: a wrong graph, or drift carried in).
    `first_parting` is where the two runtimes first part (frame, site = the graph's BinarizePack
    node, the largest |x| that parted there: ~1e-6 for a tie, O(1) for a wrong graph)."""

    def __init__(self, network, sites, align=True):
        from bimatting.models.bimatting.binarize import BinaryActivation  # noqa: PLC0415 - torch loads on use
        from bimatting.models.bimatting.decoder import IncoherentMask  # noqa: PLC0415 - torch loads on use

        self.sites, self.align = list(sites), align
        self.aligned, self.largest, self.raw, self.first_parting = 0, 0.0, 0, None
        self.raw_by_site = {}
        self._reference, self._calls, self._pha_s, self._frame = [], 0, None, -1
        self._handles = [
            m.register_forward_hook(self._sign_hook) for m in network.modules() if isinstance(m, BinaryActivation)
        ]
        self._handles += [
            m.register_forward_pre_hook(self._mask_hook) for m in network.modules() if isinstance(m, IncoherentMask)
        ]

    def start_frame(self, pre_sign_values, pha_s=None):
        self._reference, self._calls, self._pha_s = list(pre_sign_values), 0, pha_s
        self._frame += 1

    def _align(self, torch_value, onnx_value, decision, site):
        import torch

        reference = torch.from_numpy(onnx_value)
        if reference.shape != torch_value.shape:
            raise RuntimeFailure(
                f"sign decision #{self._calls}: onnxruntime shape {tuple(reference.shape)} "
                f"!= PyTorch {tuple(torch_value.shape)}; the graph does not follow the network"
            )
        differ = decision(torch_value) != decision(reference)
        count = int(differ.sum())
        if count:
            self.raw += count
            self.raw_by_site[site] = self.raw_by_site.get(site, 0) + count
            if self.first_parting is None:
                self.first_parting = {
                    "frame": self._frame,
                    "site": site,
                    "largest_abs": float(torch_value[differ].abs().max()),
                }
        fix = differ & (torch_value.abs() <= NEAR_TIE) if self.align else torch.zeros_like(differ)
        if bool(fix.any()):
            self.aligned += int(fix.sum())
            self.largest = max(self.largest, float(torch_value[fix].abs().max()))
        return fix, reference

    def _sign_hook(self, module, inputs, output):
        if self._calls >= len(self._reference):
            raise RuntimeFailure("PyTorch made more sign decisions than the ONNX graph has BinarizePack nodes")
        fix, reference = self._align(inputs[0], self._reference[self._calls], lambda v: v >= 0, self.sites[self._calls])
        self._calls += 1
        return output.where(~fix, (reference >= 0).to(output.dtype) * 2 - 1)

    def _mask_hook(self, module, inputs):
        if self._pha_s is None:
            return None
        pha_s = inputs[0]
        fix, reference = self._align(pha_s, self._pha_s, lambda v: v > 0, "incoherent_mask (pha_s > 0)")
        # pha_s is clamped to [0, 1]: 0 means "not > 0", a tiny positive value means "> 0".
        return (pha_s.where(~fix, (reference > 0).to(pha_s.dtype) * 1e-30),) + tuple(inputs[1:])

    def remove(self):
        for handle in self._handles:
            handle.remove()


def _session(model_or_path, extra_outputs, threads=None):
    """onnxruntime session that also returns `extra_outputs` (pre-sign values) of the graph."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_or_path)) if not isinstance(model_or_path, onnx.ModelProto) else model_or_path
    extra = extra_outputs(model)
    if extra:
        model = with_outputs(model, extra)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, extra, model


def _sign_nodes(model):
    return [n for n in model.graph.node if schema.is_domain_node(n) and n.op_type == "BinarizePack"]


def _decision_values(model):
    """Names of the values every sign decision reads: BinarizePack inputs in graph order, then pha_s."""
    from bimatting.models.bimatting.decoder import PHA_S  # noqa: PLC0415 - torch loads on use

    names = [n.input[0] for n in _sign_nodes(model)]
    produced = {o for n in model.graph.node for o in n.output}
    return names + ([PHA_S] if PHA_S in produced else [])


def static_setting(model):
    """(width, height), ratio of a static export from its metadata, or None for a dynamic one."""
    meta = {p.key: p.value for p in model.metadata_props}
    if "bimatting.static_size" not in meta:
        return None
    width, height = (int(v) for v in meta["bimatting.static_size"].split("x"))
    return (width, height), float(meta["bimatting.downsample_ratio"])


def compare(model_or_path, network, frames, downsample_ratio, *, progress=False, threads=None, align_ties=True):
    """Run both on `frames` (RGB float32 [H,W,3]) with states fed back; per-frame diffs and a verdict.

    threads: CPU threads for onnxruntime and PyTorch (default: each library's own choice).
    align_ties: align near-tie sign decisions (module doc); False compares the raw runs."""
    import torch

    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return _compare(model_or_path, network, frames, downsample_ratio, progress, threads, align_ties)
    finally:
        torch.set_num_threads(previous_threads)


def _compare(model_or_path, network, frames, downsample_ratio, progress, threads, align_ties):
    import torch

    session, extra, model = _session(model_or_path, _decision_values, threads)
    static = static_setting(model)
    if static is not None:
        downsample_ratio = static[1]
    state_inputs = [i for i in session.get_inputs() if i.name.startswith("r")]
    onnx_states = [np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32) for i in state_inputs]
    torch_states, fine_only = None, _without_coarse(network)
    probe = DecisionProbe(network, [n.name for n in _sign_nodes(model)], align=align_ties) if extra else None
    per_frame = {
        "pha_max": [],
        "pha_mean": [],
        "fgr_max": [],
        "fgr_mean": [],
        "pha_pixels_over": [],
        "aligned": [],
        "flipped": [],
    }
    network.eval()
    try:
        for frame in tqdm(frames, desc="verify", unit="frame", disable=not progress):
            src = np.ascontiguousarray(frame.transpose(2, 0, 1)[None], dtype=np.float32)  # [1,3,H,W]
            feeds = {"src": src, **{i.name: s for i, s in zip(state_inputs, onnx_states)}}
            if static is None:
                feeds["downsample_ratio"] = np.array([downsample_ratio], np.float32)
            outputs = session.run(None, feeds)
            fgr, pha, onnx_states = outputs[0], outputs[1], outputs[2:6]
            aligned, raw = (probe.aligned, probe.raw) if probe else (0, 0)
            if probe:
                decisions = outputs[6:]
                pha_s = decisions.pop() if extra[-1].endswith("pha_s") else None
                probe.start_frame(decisions, pha_s)
            with torch.no_grad():
                result, torch_states = recurrent_step(
                    network, torch.from_numpy(src), torch_states, downsample_ratio, **fine_only
                )
            for key, ours, theirs in (("pha", pha, result[1]), ("fgr", fgr, result[0])):
                diff = np.abs(ours - theirs.numpy())
                per_frame[f"{key}_max"].append(float(diff.max()))
                per_frame[f"{key}_mean"].append(float(diff.mean()))
                if key == "pha":
                    per_frame["pha_pixels_over"].append(float(np.mean(diff > PIXEL_DIFF)))
            new_aligned = (probe.aligned - aligned) if probe else 0
            per_frame["aligned"].append(new_aligned)
            per_frame["flipped"].append((probe.raw - raw - new_aligned) if probe else 0)
    finally:
        if probe:
            probe.remove()
    return _verdict(per_frame, frames, downsample_ratio, probe)


def _without_coarse(network):
    """The keywords that make BiMatting return fgr, pha and the states only, as RVM does."""
    from bimatting.models.bimatting.model import BiMatting  # noqa: PLC0415 - torch loads on use

    return {"return_coarse": False} if isinstance(network, BiMatting) else {}


def _verdict(per_frame, frames, ratio, probe):
    worst = {key: max(values) for key, values in per_frame.items() if key not in ("aligned", "flipped")}
    passed = all(
        worst[f"{k}_mean"] <= TOLERANCE["mean"] and worst[f"{k}_max"] <= TOLERANCE["max"] for k in ("pha", "fgr")
    )
    height, width = frames[0].shape[:2]
    by_site = dict(sorted(probe.raw_by_site.items(), key=lambda item: -item[1])) if probe else {}
    return {
        "frames": len(frames),
        "size": [width, height],
        "downsample_ratio": ratio,
        "tolerance": dict(TOLERANCE),
        "worst": worst,
        "per_frame": per_frame,
        "aligned_near_ties": probe.aligned if probe else 0,
        "largest_aligned_tie": probe.largest if probe else 0.0,
        "near_tie_band": NEAR_TIE,
        "ties_aligned": bool(probe and probe.align),
        "decisions_parted": probe.raw if probe else 0,
        "decisions_flipped": sum(per_frame["flipped"]),
        "first_parting": probe.first_parting if probe else None,
        "parted_by_site": by_site,
        "passed": passed,
    }


def load_frames(verify_input, size=None, count=DEFAULT_FRAMES):
    """Frames to verify on: `verify_input` (video or folder) or the packaged sample clip."""
    if verify_input is not None:
        frames = list(iter_frames(verify_input, size=size, limit=count))
        if not frames:
            raise InputError(f"'{verify_input}' gave no frames to verify on; expected a video or image folder")
        return frames
    try:
        from bimatting.matting import samples  # noqa: PLC0415 - optional: InputError without it
    except ImportError:
        raise InputError("no sample footage in this install; pass frames with --verify-input") from None
    return samples.sample_frames(count, size or samples.DEFAULT_SIZE)


def verify_file(
    path, network, *, verify_input=None, downsample_ratio=None, frames=None, align_ties=True, progress=True
):
    """Verify an exported file; returns the report, raises RuntimeFailure when out of tolerance."""
    import onnx

    static = static_setting(onnx.load(str(path), load_external_data=False))
    clip = load_frames(verify_input, size=static[0] if static else None, count=frames or DEFAULT_FRAMES)
    if static is None and downsample_ratio is None:
        downsample_ratio = auto_downsample_ratio(*clip[0].shape[:2])
    report = compare(path, network, clip, downsample_ratio, progress=progress, align_ties=align_ties)
    if not report["passed"]:
        worst = report["worst"]
        raise RuntimeFailure(
            f"onnxruntime and PyTorch disagree: pha max {worst['pha_max']:.2e} mean "
            f"{worst['pha_mean']:.2e}, fgr max {worst['fgr_max']:.2e} mean {worst['fgr_mean']:.2e} "
            f"(tolerance max {TOLERANCE['max']}, mean {TOLERANCE['mean']})" + _parting(report)
        )
    return report


def _parting(report):
    first = report.get("first_parting")
    if not first:
        return ""
    return (
        f"; they first part at frame {first['frame']} in {first['site']} (largest |x| {first['largest_abs']:.1e}, "
        f"{report['decisions_flipped']} decisions flipped far from a tie)"
    )
