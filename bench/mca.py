"""llvm-mca throughput of the binary conv's inner loop vs the float conv's, for a board (no board).

    python bench/mca.py                                  # rpi4 (Cortex-A72) and rpi5 (A76, udot), 3x3 64->64
    python bench/mca.py --target rpi5 --json             # one board, machine-readable
    python bench/mca.py --target host                    # this x86-64 machine (its -mcpu)
    python bench/mca.py --save-reports mca-reports/      # + both loops and full llvm-mca reports

Both kernels are compiled for the target by the code a compiled network uses: the bitserial
BinaryConv2d kernel (deploy/compiler/kernels/standalone.py, the AArch64 bitserial schedule) and a float
conv2d of the same shape through `bimatting compile`'s Relax pipeline (its FP layers' ConvNCHW
rule, deploy/compiler/schedules/fp.py). Only LLVM's assembly is needed (`inspect_source("asm")`), so no
board and no linking; the cross compiler is still checked, as `bimatting compile` would.

Extraction rule (one hot loop per kernel): in the assembly, every branch whose target label is
defined *above* it closes a loop spanning [label, branch]. Loops holding the kernel's work
instruction (binary: `cnt vN.16b`/`vN.8b`, the popcount every XNOR word goes through, before
`uadalp` or `udot`; float: `fmla`) are candidates; the innermost ones (containing no other
candidate) are kept and, of these, the one with the most work instructions is the hot loop (a
vectorized main loop beats its remainder loop). Its instructions, labels kept and directives
dropped, are fed to `llvm-mca -mtriple=<target triple> -mcpu=<target cpu>`.

Work per iteration is counted from the instructions themselves:
    binary: bit-MACs = sum over `cnt` of its bits (16b: 128, 8b: 64); one bit-MAC is one +-1
            product, the work one float MAC does in the same layer
    float:  MACs = sum over `fmla` of its lanes (4s: 4, 2s: 2; scalar `fmadd s`: 1)
On x86-64 (AT&T assembly, `#` comments, `j..` branches) the popcount of a vector is `vpopcntq`
with AVX-512 VPOPCNTDQ, else a `vpshufb` nibble table closed by one `vpsadbw` per vector:
bit-MACs = the register's bits per `vpopcntq` / `vpsadbw` (xmm 128, ymm 256, zmm 512); float
MACs = the lanes of each `vfmadd...ps` (xmm 4, ymm 8, zmm 16; scalar `ss` 1). llvm-mca's
model is the judge, with its errors: LLVM 14's znver3 model gives a 256-bit FMA a throughput of
1 per cycle (8 fp32 MACs/cycle), where Zen 3 issues two; the compiled float conv measures ~10
MACs/cycle there (3x3 32->16 at 288x512, one thread), so the x86 ratio overstates the binary
loop's lead by up to 2x.
cycles/iteration = llvm-mca's Total Cycles / Iterations (steady state, loop-carried dependencies
included); Block RThroughput (resource bound only) is shown too. llvm-mca assumes L1 hits and
perfect branch prediction, so these are upper bounds on the loops, not layer timings.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bimatting.atomic import write_bytes
from bimatting.binops import layout
from bimatting.deploy.target import check_compiler, resolve
from bimatting.errors import InputError
from bitserial_kernels import build_float_conv  # bench/ is on sys.path when a bench script runs

GOAL = 18.0  # the second speed issue: binary inner loop >= 18x the float conv's inner loop (llvm-mca)
MCA_ITERATIONS = 1000  # enough that the first iteration's pipeline fill is < 0.1% of the total

LABEL = re.compile(r"^\s*([.\w$]+):")
BRANCH = re.compile(r"^\s*(b\.\w+|b|cbn?z|tbn?z)\s+.*?([.\w$]+)\s*$")
POPCOUNT = re.compile(r"^\s*cnt\s+v\d+\.(16b|8b)")
FMA = re.compile(r"^\s*(?:fmla\s+v\d+\.(4s|2s)|fmadd\s+(s)\d+)")
POPCOUNT_BITS = {"16b": 128, "8b": 64}
FMA_LANES = {"4s": 4, "2s": 2, "s": 1}
# x86-64, AT&T syntax: the destination register is the last operand
BRANCH_X86 = re.compile(r"^\s*(j\w+)\s+([.\w$]+)\s*$")
POPCOUNT_X86 = re.compile(r"^\s*(?:vpsadbw|vpopcntq)\s+.*%([xyz])mm\d+\s*$")
FMA_X86 = re.compile(r"^\s*(?:vfmadd\d+p(?:s)\s+.*%([xyz])mm\d+|vfmadd\d+(s)s\s.*)\s*$")
VECTOR_BITS_X86 = {"x": 128, "y": 256, "z": 512}
FMA_LANES_X86 = {"x": 4, "y": 8, "z": 16, "s": 1}
ISA = {  # per instruction set: comment start, backward-branch regex, (work regex, units) per kernel
    "aarch64": {"comment": "//", "branch": BRANCH, "binary": (POPCOUNT, POPCOUNT_BITS), "float": (FMA, FMA_LANES)},
    "x86_64": {
        "comment": "#",
        "branch": BRANCH_X86,
        "binary": (POPCOUNT_X86, VECTOR_BITS_X86),
        "float": (FMA_X86, FMA_LANES_X86),
    },
}


class Missing(Exception):
    """A tool this bench needs is not installed; the message says which and how to get it."""


# -- building the two kernels -----------------------------------------------------------------


def _llvm_asm(runtime_module):
    """Assembly of every LLVM module in an import tree (a Relax executable nests its kernels)."""
    parts = [runtime_module.inspect_source("asm")] if runtime_module.kind == "llvm" else []
    for child in runtime_module.imports:
        parts.append(_llvm_asm(child))
    return "\n".join(parts)


def binary_conv_asm(cin, cout, height, width, tvm_target):
    from bimatting.binops.geometry import ConvGeometry  # noqa: PLC0415 - loads onnx, as TVM below

    # TVM loads in the measurement
    from bimatting.deploy.compiler.kernels.standalone import BinaryConvKernel, build  # noqa: PLC0415

    geometry = ConvGeometry(height, width, cin, cout, (3, 3), (1, 1), (1, 1, 1, 1))
    # Weights only set constants of the output transform, not the loop: any values do.
    w = np.random.default_rng(0).standard_normal((cout, cin, 3, 3)).astype(np.float32)
    kernel = BinaryConvKernel(geometry, layout.pack(w), np.ones(cout), np.zeros(cout), tvm_target)
    return _llvm_asm(build([kernel], tvm_target).mod)


def float_conv_asm(cin, cout, height, width, tvm_target):
    return _llvm_asm(build_float_conv(cin, cout, height, width, tvm_target).mod)


# -- finding the hot loop ---------------------------------------------------------------------


def _code_lines(asm, comment="//"):
    """Labels and instructions, comments and directives (.loc, .cfi, .p2align...) dropped."""
    lines = []
    for raw in asm.splitlines():
        line = raw.split(comment)[0].rstrip()
        if not line.strip() or (line.strip().startswith(".") and not LABEL.match(line)):
            continue
        lines.append(line)
    return lines


def hot_loop(asm, work, isa="aarch64"):
    """Lines [label .. backward branch] of the innermost loop with the most `work` matches."""
    lines = _code_lines(asm, ISA[isa]["comment"])
    labels = {}
    loops = []
    for index, line in enumerate(lines):
        label = LABEL.match(line)
        if label:
            labels[label.group(1)] = index
            continue
        branch = ISA[isa]["branch"].match(line)
        if branch and branch.group(2) in labels:  # already defined: a backward branch
            loops.append((labels[branch.group(2)], index))
    counted = [(start, end, sum(bool(work.match(line)) for line in lines[start : end + 1])) for start, end in loops]
    candidates = [loop for loop in counted if loop[2] > 0]
    innermost = [
        (s, e, n)
        for s, e, n in candidates
        if not any(s <= s2 and e2 <= e and (s2, e2) != (s, e) for s2, e2, _ in candidates)
    ]
    if not innermost:
        raise RuntimeError(f"no loop with a /{work.pattern}/ instruction in the assembly")
    start, end, _ = max(innermost, key=lambda loop: loop[2])  # max keeps the first on ties
    return lines[start : end + 1]


def instructions(loop):
    return [line for line in loop if not LABEL.match(line)]


def work_per_iteration(loop, pattern, units):
    """Sum of `units` over the work instructions (the regex's first matched group picks it)."""
    total = 0
    for line in instructions(loop):
        match = pattern.match(line)
        if match:
            total += units[next(g for g in match.groups() if g)]
    return total


# -- llvm-mca ---------------------------------------------------------------------------------


def run_mca(mca, loop, triple, cpu):
    with tempfile.NamedTemporaryFile("w", suffix=".s") as source:
        source.write("\n".join(loop) + "\n")
        source.flush()
        done = subprocess.run(
            [mca, f"-mtriple={triple}", f"-mcpu={cpu}", f"-iterations={MCA_ITERATIONS}", source.name],
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"llvm-mca failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def parse_mca(report):
    def field(name):
        match = re.search(rf"^{name}:\s+([\d.]+)", report, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"llvm-mca report has no '{name}' line")
        return float(match.group(1))

    iterations = field("Iterations")
    return {
        "instructions": field("Instructions") / iterations,
        "cycles": field("Total Cycles") / iterations,
        "block_rthroughput": field("Block RThroughput"),
    }


# -- main -------------------------------------------------------------------------------------


def check_tools(target_name, mca_path):
    """(resolved target, llvm-mca path); Missing with one line when a tool is absent."""
    mca = shutil.which(mca_path)
    if mca is None:
        raise Missing(
            f"'{mca_path}' not found; install LLVM's llvm-mca (Debian: apt-get install llvm) or pass --llvm-mca PATH"
        )
    try:
        target = resolve(target_name)
        if target.isa not in ISA:
            raise Missing(f"target '{target_name}' is {target.isa}; this bench reads {' and '.join(ISA)} assembly")
        check_compiler(target)
    except InputError as error:
        raise Missing(str(error)) from None
    return target, mca


KERNELS = [  # name, builder, kind (ISA's work instruction), MAC unit
    ("binary (bitserial)", binary_conv_asm, "binary", "bit-MAC"),
    ("float (fp32 ConvNCHW)", float_conv_asm, "float", "fp32 MAC"),
]


def measure(target, mca, shape):
    # TVM loads in the measurement
    from bimatting.deploy.compiler.schedules.primfunc import target_triple  # noqa: PLC0415

    tvm_target = target.tvm_target
    triple, cpu = target.llvm.get("mtriple") or target_triple(tvm_target), target.llvm["mcpu"]
    rows = []
    for name, builder, kind, unit in KERNELS:
        work, units = ISA[target.isa][kind]
        loop = hot_loop(builder(*shape, tvm_target), work, target.isa)
        report = run_mca(mca, loop, triple, cpu)
        row = {
            "kernel": name,
            **parse_mca(report),
            "macs": work_per_iteration(loop, work, units),
            "mac_unit": unit,
            "loop": "\n".join(loop),
            "report": report,
        }
        row["macs_per_cycle"] = row["macs"] / row["cycles"]
        row["macs_per_cycle_rthroughput"] = row["macs"] / row["block_rthroughput"]
        rows.append(row)
    return rows


def save_reports(directory, rows):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for row, stem in zip(rows, ("binary", "float")):
        write_bytes(directory / f"{stem}_loop.s", (row["loop"] + "\n").encode())
        write_bytes(directory / f"{stem}_mca.txt", row["report"].encode())


def report(target, mca, shape, args):
    """Measure one target; print its table (or return its JSON record)."""
    rows = measure(target, mca, shape)
    if args.save_reports:
        save_reports(Path(args.save_reports) / target.name if len(args.target) > 1 else args.save_reports, rows)
    binary, fp = rows
    ratio = binary["macs_per_cycle"] / fp["macs_per_cycle"]
    ratio_rt = binary["macs_per_cycle_rthroughput"] / fp["macs_per_cycle_rthroughput"]
    cpu = target.llvm["mcpu"]
    if args.json:
        return {
            "target": target.name,
            "mcpu": cpu,
            "shape": shape,
            "goal": GOAL,
            "ratio": ratio,
            "ratio_block_rthroughput": ratio_rt,
            "kernels": [{k: v for k, v in r.items() if k not in ("loop", "report")} for r in rows],
        }
    print(
        f"3x3 {shape[0]}->{shape[1]} at {shape[2]}x{shape[3]}, target {target.name}, "
        f"llvm-mca -mcpu={cpu}, per iteration of the hot inner loop"
    )
    print(f"{'kernel':<22} {'instr':>6} {'cycles':>7} {'RThru':>6} {'MACs':>6} {'MACs/cycle':>11}  unit")
    for r in rows:
        print(
            f"{r['kernel']:<22} {r['instructions']:>6.0f} {r['cycles']:>7.2f} {r['block_rthroughput']:>6.1f}"
            f" {r['macs']:>6} {r['macs_per_cycle']:>11.2f}  {r['mac_unit']}"
        )
    verdict = "met" if ratio >= GOAL else "NOT met"
    print(
        f"binary/float: {ratio:.1f}x by cycles/iteration ({ratio_rt:.1f}x by Block RThroughput); "
        f"goal >= {GOAL:.0f}x {verdict}"
    )
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--target",
        action="append",
        help="a board from targets/: AArch64 or x86-64; repeat for several (default: rpi4 and rpi5)",
    )
    parser.add_argument("--shape", default="64,64,64,64", help="CIN,COUT,H,W (3x3, stride 1, pad 1)")
    parser.add_argument("--llvm-mca", default="llvm-mca", help="llvm-mca executable (name or path)")
    parser.add_argument("--save-reports", metavar="DIR", help="write both loops and llvm-mca reports here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.target = args.target or ["rpi4", "rpi5"]
    shape = [int(v) for v in args.shape.split(",")]
    records = []
    for index, name in enumerate(args.target):
        try:
            target, mca = check_tools(name, args.llvm_mca)
        except Missing as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)
        if index and not args.json:
            print()
        records.append(report(target, mca, shape, args))
    if args.json:
        print(json.dumps(records[0] if len(records) == 1 else records, indent=2))


if __name__ == "__main__":
    main()
