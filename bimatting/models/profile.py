"""Parameters, storage and compute of a matting network (BiMatting or RVM), dense and SAB-sparse.

Accounting convention (BiMatting paper, after Bi-Real Net / ReActNet):
    storage = 1 bit per binary weight + 32 bits per other parameter (BN statistics are not
              parameters; they fold into each layer's scale and bias)
    OPs     = FLOPs + BOPs / 64, one op per multiply-accumulate (MAC)
MACs come from forward hooks on every convolution: output elements x Cin/groups x KH x KW; a
layer applied k times (the guided filter's box filter) counts k times. A conv is binary when it is
tagged `binary` (BiConv2d); everything else is full precision.

Sparse OPs: BiMatting's SAB mask gates some convs (`model.masked_convs()`: the decoder's 3x3
branches and ConvGRU_Up 3x3 gates, and decode0's FP 3x3). A kernel that skips the zeros of the
upsampled mask M_up computes those layers only where M_up != 0. With a given density rho every
masked layer is scaled by rho; with `auto` the network runs over real-looking frames and each masked
layer is scaled by the measured fraction of its output positions where M_up != 0 (slightly more
than the coarse density, since bilinear upsampling widens the band). `mask_density` reports the
mean of the coarse (1/16) mask M itself.
"""

import contextlib

import numpy as np
from tqdm import tqdm

from bimatting.errors import InputError
from bimatting.matting.frames import read_frames
from bimatting.models import ARCHS, build_model, model_class

BINARY_OPS_PER_MAC = 1.0 / 64.0
FP_BITS = 32
AUTO_FRAMES = 12
AUTO_CHUNK = 4  # frames per forward call while measuring the mask (memory stays small)
MIN_SIDE = 32  # smallest side (after downsampling) the encoder's 1/16 stride handles sensibly


def count_parameters(model):
    """(total, binary): binary = weights of convs tagged `binary` (their biases stay FP)."""
    total = sum(p.numel() for p in model.parameters())
    binary = sum(m.weight.numel() for m in model.modules() if getattr(m, "binary", False))
    return total, binary


def storage_bits(params_total, params_binary):
    return params_binary + FP_BITS * (params_total - params_binary)


class _MacCounter:
    """Forward hooks on every conv (and linear) of `model`, accumulating dense and sparse MACs.

    `density(module, output)` gives the fraction of the layer computed by a mask-skipping kernel
    (1 for unmasked layers)."""

    def __init__(self, model, density):
        import torch

        self.density = density
        self.dense = {}
        self.sparse = {}
        self.binary = {}
        self._handles = []
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                self.binary[name] = bool(getattr(module, "binary", False))
                self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def record(module, inputs, output):
            macs = _macs(module, output)
            self.dense[name] = self.dense.get(name, 0) + macs
            self.sparse[name] = self.sparse.get(name, 0.0) + macs * float(self.density(module, output))

        return record

    def close(self):
        for handle in self._handles:
            handle.remove()


def _macs(module, output):
    import torch

    if isinstance(module, torch.nn.Linear):
        return output.numel() * module.in_features
    kh, kw = module.kernel_size
    return output.numel() * (module.in_channels // module.groups) * kh * kw


@contextlib.contextmanager
def _evaluating(model):
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _mask_modules(model):
    from bimatting.models.bimatting.decoder import IncoherentMask  # noqa: PLC0415 - torch loads on use

    return [m for m in model.modules() if isinstance(m, IncoherentMask)]


def count_macs(model, clip, downsample_ratio, mask_density, progress=False):
    """Run `model` over `clip` ([T, 3, H, W] float tensor, fed in chunks with recurrent state) and
    return per-frame totals: dict(fp_macs, binary_macs, sparse_fp_macs, sparse_binary_macs,
    masked_fp_macs, masked_binary_macs, measured_mask_density, masked_layers)."""
    import torch.nn.functional as F

    masked = {id(m) for _, m in getattr(model, "masked_convs", lambda: [])()}
    latest_mask = []  # the coarse mask of the current forward call
    coarse_fractions = []  # mean of M per call, weighted by frames

    def density(module, output):
        if id(module) not in masked:
            return 1.0
        if mask_density != "auto":
            return mask_density
        mask_up = F.interpolate(latest_mask[-1], size=output.shape[-2:], mode="bilinear", align_corners=False)
        return (mask_up != 0).float().mean().item()

    def on_mask(module, inputs, output):
        latest_mask[:] = [output]
        coarse_fractions.append((output.mean().item(), output.shape[0]))

    counter = _MacCounter(model, density)
    handles = [m.register_forward_hook(on_mask) for m in _mask_modules(model)]
    try:
        with _evaluating(model):
            states = [None] * 4
            with tqdm(
                total=clip.shape[0], desc="measuring the SAB mask", unit="frame", disable=not progress, leave=False
            ) as bar:
                for start in range(0, clip.shape[0], AUTO_CHUNK):
                    chunk = clip[start : start + AUTO_CHUNK].unsqueeze(0)  # [1, t, 3, H, W]
                    outputs = model(chunk, *states, downsample_ratio=downsample_ratio)
                    states = list(outputs[-4:])
                    bar.update(chunk.shape[1])
    finally:
        counter.close()
        for handle in handles:
            handle.remove()

    frames = clip.shape[0]
    totals = dict.fromkeys(
        ["fp_macs", "binary_macs", "sparse_fp_macs", "sparse_binary_macs", "masked_fp_macs", "masked_binary_macs"], 0
    )
    masked_names = {name for name, _ in getattr(model, "masked_convs", lambda: [])()}
    for name, dense in counter.dense.items():
        kind = "binary" if counter.binary[name] else "fp"
        totals[f"{kind}_macs"] += dense // frames
        totals[f"sparse_{kind}_macs"] += counter.sparse[name] / frames
        if name in masked_names:
            totals[f"masked_{kind}_macs"] += dense // frames
    weight = sum(n for _, n in coarse_fractions)
    totals["measured_mask_density"] = (sum(f * n for f, n in coarse_fractions) / weight) if weight else None
    totals["masked_layers"] = len(masked_names)
    return totals


def synthetic_clip(resolution, frames=AUTO_FRAMES, seed=0):
    """A moving soft-edged blob ("person": head + torso) composited over a textured background,
    [T, H, W, 3] float32 in [0, 1]. Used when no sample footage is packaged."""
    width, height = resolution
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    background = np.stack(
        [0.3 + 0.4 * xx / width, 0.5 + 0.2 * np.sin(yy / height * 6.0), 0.6 - 0.3 * yy / height], axis=-1
    )
    background += rng.normal(0.0, 0.04, background.shape).astype(np.float32)
    clip = []
    for t in range(frames):
        cx = width * (0.35 + 0.3 * t / max(frames - 1, 1))
        head = ((xx - cx) / (0.09 * width)) ** 2 + ((yy - 0.33 * height) / (0.14 * height)) ** 2
        torso = ((xx - cx) / (0.2 * width)) ** 2 + ((yy - 0.95 * height) / (0.45 * height)) ** 2
        alpha = np.clip((1.0 - np.minimum(head, torso)) * 8.0, 0.0, 1.0)[..., None]
        foreground = np.array([0.8, 0.55, 0.45], dtype=np.float32) + 0.1 * np.sin(xx / 7.0)[..., None]
        clip.append(np.clip(alpha * foreground + (1.0 - alpha) * background, 0.0, 1.0).astype(np.float32))
    return np.stack(clip)


def measurement_clip(resolution, frames=AUTO_FRAMES, source=None):
    """(clip [T, H, W, 3] float32, description) to measure the mask on: `source` (video or image
    folder) if given, else the packaged sample clip, else a synthetic moving blob."""
    if source is not None:
        clip = read_frames(source, size=resolution, limit=frames)
        return np.stack(clip), f"{len(clip)} frames of '{source}'"
    try:
        from bimatting.matting.samples import sample_frames  # noqa: PLC0415 - optional: else a synthetic clip
    except ImportError:
        return synthetic_clip(resolution, frames), f"synthetic moving blob ({frames} frames)"
    return np.stack(sample_frames(frames, resolution)), f"packaged sample clip ({frames} frames)"


def profile_model(
    model,
    resolution=(512, 288),
    downsample_ratio=1.0,
    *,
    mask_density="auto",
    frames=AUTO_FRAMES,
    frames_source=None,
    reference=None,
    progress=False,
):
    """Counts of `model` at `resolution` (width, height); `reference` (RVM) gives the ratios.

    Returns a flat dict (the JSON of `bimatting profile`)."""
    import torch

    width, height = resolution
    if not 0.0 < downsample_ratio <= 1.0:
        raise InputError(f"downsample ratio {downsample_ratio} must be in (0, 1]; e.g. 0.25 for 1080p")
    if min(width, height) * downsample_ratio < MIN_SIDE:
        raise InputError(
            f"resolution {width}x{height} at downsample ratio {downsample_ratio} is below "
            f"{MIN_SIDE} px on its short side; use a larger resolution or ratio"
        )
    masked = bool(getattr(model, "masked_convs", lambda: [])())
    report = {"resolution": [width, height], "downsample_ratio": downsample_ratio}
    report["params_total"], report["params_binary"] = count_parameters(model)
    report["params_fp"] = report["params_total"] - report["params_binary"]
    report["storage_bits"] = storage_bits(report["params_total"], report["params_binary"])
    report["storage_bytes"] = report["storage_bits"] / 8

    if masked and mask_density == "auto":
        clip, measured_on = measurement_clip(resolution, frames, frames_source)
        clip = torch.from_numpy(np.ascontiguousarray(clip.transpose(0, 3, 1, 2)))
    else:
        clip = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
        measured_on = None
    counts = count_macs(model, clip, downsample_ratio, mask_density if masked else 1.0, progress)
    for key in ("fp_macs", "binary_macs", "masked_fp_macs", "masked_binary_macs"):
        report[key] = counts[key]
    report["ops_dense"] = counts["fp_macs"] + counts["binary_macs"] * BINARY_OPS_PER_MAC
    report["ops_sparse"] = counts["sparse_fp_macs"] + counts["sparse_binary_macs"] * BINARY_OPS_PER_MAC
    report["mask_density"] = (
        (counts["measured_mask_density"] if mask_density == "auto" else mask_density) if masked else None
    )
    report["mask_density_source"] = (measured_on if mask_density == "auto" else "given") if masked else None

    if reference is not None:
        ref = report if reference is model else profile_model(reference, resolution, downsample_ratio, mask_density=1.0)
        report["rvm"] = {key: ref[key] for key in ("params_total", "storage_bytes", "fp_macs", "ops_dense")}
        report["storage_ratio_vs_rvm"] = ref["storage_bytes"] / report["storage_bytes"]
        report["ops_ratio_vs_rvm_dense"] = ref["ops_dense"] / report["ops_dense"]
        report["ops_ratio_vs_rvm_sparse"] = ref["ops_dense"] / report["ops_sparse"]
    else:
        for key in ("rvm", "storage_ratio_vs_rvm", "ops_ratio_vs_rvm_dense", "ops_ratio_vs_rvm_sparse"):
            report[key] = None
    return report


# -- models to profile ----------------------------------------------------------------------------


def _arch_of(model):
    for arch in ARCHS:
        try:
            if isinstance(model, model_class(arch)):
                return arch
        except ModuleNotFoundError:
            continue
    return None


def _checkpoint_loader():
    """bimatting.load_model, or None where this install has no checkpoint support."""
    try:
        from bimatting.weights.checkpoints import load_model  # noqa: PLC0415 - torch loads on use
    except ModuleNotFoundError as error:
        if error.name != "bimatting.weights.checkpoints":
            raise
        return None
    return load_model


def load_for_profile(checkpoint=None, arch=None):
    """(model, arch, weights description) for `bimatting profile`.

    checkpoint None: the packaged default model for BiMatting (an untrained network when none is
    packaged: architecture counts do not need weights), an untrained network for RVM."""
    if arch is not None:
        model_class(arch)  # InputError for an unknown name
    load_model = _checkpoint_loader()
    if checkpoint is None:
        arch = arch or "bimatting"
        reason = "counts do not depend on weights"
        if arch == "bimatting":
            if load_model is None:
                reason = "no checkpoint support in this install"
            else:
                try:
                    return load_model("default", arch=arch), arch, "packaged default model"
                except InputError as error:
                    reason = str(error).split(";")[0]
        return build_model(arch), arch, f"untrained network ({reason})"
    if load_model is None:
        raise InputError(
            f"cannot read checkpoint '{checkpoint}': this install has no checkpoint support "
            "(bimatting.weights.checkpoints); profile an architecture with --arch instead"
        )
    model = load_model(str(checkpoint), arch=arch)
    found = _arch_of(model)
    if arch is not None and found != arch:
        raise InputError(f"checkpoint '{checkpoint}' holds a {found} network, but --arch {arch} was given")
    return model, found, f"checkpoint '{checkpoint}'"


def rvm_reference():
    """An RVM network to compare against, or None where this install has none."""
    try:
        return build_model("rvm")
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("bimatting.models.rvm"):
            raise
        return None


def profile(
    checkpoint=None,
    arch=None,
    resolution=(512, 288),
    downsample_ratio=1.0,
    *,
    mask_density="auto",
    frames=AUTO_FRAMES,
    frames_source=None,
    progress=False,
):
    """What `bimatting profile` reports: profile_model of the loaded model, compared with RVM."""
    model, arch, weights = load_for_profile(checkpoint, arch)
    reference = model if arch == "rvm" else rvm_reference()
    report = {"arch": arch, "weights": weights}
    report.update(
        profile_model(
            model,
            resolution,
            downsample_ratio,
            mask_density=mask_density,
            frames=frames,
            frames_source=frames_source,
            reference=reference,
            progress=progress,
        )
    )
    if report["mask_density"] is not None and mask_density == "auto" and weights.startswith("untrained"):
        # An untrained coarse head puts alpha edges everywhere: the density is real but not representative.
        report["mask_density_source"] += ", untrained network: not representative of a trained model"
    return report


def format_report(report):
    """A small aligned table of `report` (as returned by `profile`)."""
    giga, mega = 1e9, 1e6
    rvm = (report.get("rvm") or {}) if report["arch"] != "rvm" else {}  # no column comparing RVM with itself

    def ratio(key):
        value = report.get(key)
        return f"{value:.1f}x" if value and rvm else ""

    width, height = report["resolution"]
    lines = [
        f"model        {report['arch']}: {report['weights']}",
        f"resolution   {width}x{height}, downsample ratio {report['downsample_ratio']:g}",
    ]
    if report["mask_density"] is not None:
        lines.append(f"mask         density {report['mask_density']:.3f} ({report['mask_density_source']})")
    rows = [
        ("", report["arch"], "rvm" if rvm else "", "rvm / this" if rvm else ""),
        ("parameters", f"{report['params_total']:,}", f"{rvm['params_total']:,}" if rvm else "", ""),
        ("  binary weights", f"{report['params_binary']:,}", "0" if rvm else "", ""),
        (
            "storage (MB)",
            f"{report['storage_bytes'] / mega:.3f}",
            f"{rvm['storage_bytes'] / mega:.3f}" if rvm else "",
            ratio("storage_ratio_vs_rvm"),
        ),
        ("FP MACs (G)", f"{report['fp_macs'] / giga:.3f}", f"{rvm['fp_macs'] / giga:.3f}" if rvm else "", ""),
        ("binary MACs (G)", f"{report['binary_macs'] / giga:.3f}", "0" if rvm else "", ""),
        (
            "OPs dense (G)",
            f"{report['ops_dense'] / giga:.3f}",
            f"{rvm['ops_dense'] / giga:.3f}" if rvm else "",
            ratio("ops_ratio_vs_rvm_dense"),
        ),
    ]
    if report["mask_density"] is not None:
        rows.append(
            (
                "OPs sparse (G)",
                f"{report['ops_sparse'] / giga:.3f}",
                f"{rvm['ops_dense'] / giga:.3f}" if rvm else "",
                ratio("ops_ratio_vs_rvm_sparse"),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    lines.append("OPs = FP MACs + binary MACs / 64; storage = 1 bit per binary weight + 32 bits per other parameter")
    return "\n".join(lines)
