"""Schedule templates for the bitserial kernels (kernels/bitserial.py), shared by x86 and AArch64.

The per-target files (x86.py, aarch64.py) pick the word type, the tile candidates and defaults;
these functions apply them with `tvm.s_tir.Schedule`. Every tile size is either a fixed integer
(`tunable=False`, the default schedule) or sampled with `sample_categorical` (`tunable=True`),
so the same function is MetaSchedule's design space (`ms.space_generator.ScheduleFn`).

Popcount convolution, vectorized over output channels (`schedule_bconv`, AArch64: a 128-bit
vector holds 8 uint16 or 4 uint32 words, as many as a layer has output channels):
    for n*y (parallel) / x tile of `owt` columns / o tile of `vec` channels:
        acc[owt, vec] (registers) = 0
        for ry, rx, rc: for xi (unrolled): acc[xi, :] += popcount(a[xi] ^ w[ry, rx, rc, :])  # vector
        output transform of the tile (scale, correction, PReLU, mask), stored to NCHW
The weight words of one (ry, rx, rc) are a contiguous vector over o; the activation word is
broadcast. LLVM lowers the vector popcount to `vpopcntq` (AVX-512 VPOPCNTDQ), a `vpshufb`
nibble table (AVX2), or `cnt` + `uadalp` / `udot` on NEON.

Vectorized over output columns (`schedule_bconv_columns`, x86-64):
    for n*y (parallel) / x tile of `lanes` columns / o tile of `ot` channels:
        acc[ot, lanes] (registers) = 0
        for ry, rx, rc: a = words of `lanes` columns (one vector load: a row of a word plane)
            for o (unrolled): acc[o, :] += popcount(a ^ broadcast(w[ry, rx, rc, o]))
        output transform of the tile, one vector store per channel
Both are exact; the column form needs no transpose of the accumulators for the NCHW output and
reads the weight word from memory as the XOR's broadcast operand.
"""


def _choose(sch, candidates, extent, tunable, default):
    """A tile size dividing `extent`: sampled when tunable, else `default` (or the best fit)."""
    fits = [c for c in candidates if extent % c == 0] or [1]
    if tunable and len(fits) > 1:
        return sch.sample_categorical(fits, [1.0 / len(fits)] * len(fits))
    return default if default in fits else fits[0]


def _extent(sch, loop):
    return int(sch.get(loop).extent)


def schedule_pack(sch, block_name, lanes):
    """bpack / brepack: the image's words (`<name>_image`, a sum over the bits of a word) are
    vectorized along image columns (contiguous in the NCHW source) with the bit loop kept rolled
    (unrolling 64 bits x 35 layers made LLVM spend most of a network's compile time here) and the
    variants unrolled inside it (one load of x serves every variant's bit); the bordered copy is a
    plain parallel row loop."""
    image = sch.get_sblock(f"{block_name}_image")
    n, v, k, y, x, b = sch.get_loops(image)
    lanes = max(c for c in (lanes, lanes // 2, lanes // 4, 1) if _extent(sch, x) % c == 0)
    xo, xi = sch.split(x, [None, lanes])
    sch.reorder(n, y, k, xo, b, v, xi)
    sch.parallel(sch.fuse(n, y))
    sch.unroll(v)
    sch.vectorize(xi)
    init = sch.decompose_reduction(image, b)
    sch.vectorize(sch.get_loops(init)[-1])
    border = sch.get_sblock(block_name)
    n, k, y, x = sch.get_loops(border)
    sch.parallel(sch.fuse(n, k, y))


def schedule_bconv(sch, kernel_config, tunable=False):
    """Register-tiled popcount convolution vectorized over output channels."""
    n, y, x, o, ry, rx, rc = sch.get_loops(sch.get_sblock("bconv_popcount"))
    vec = _choose(sch, kernel_config.vec_candidates, _extent(sch, o), tunable, kernel_config.default_vec)
    owt = _choose(sch, kernel_config.owt_candidates, _extent(sch, x), tunable, kernel_config.default_owt)
    return _register_tiles(sch, owt, vec, over_columns=False)


def schedule_bconv_columns(sch, kernel_config, tunable=False):
    """Register-tiled popcount convolution vectorized over output columns, for cores whose vector
    holds several words (AVX-512: 8 uint64). The accumulators are laid out [o][x], so the tile's
    output transform reads them in NCHW order and stores whole vectors, with no transpose."""
    block = sch.get_sblock("bconv_popcount")
    sch.transform_layout(block, ("write", 0), lambda n, y, x, o: (n, y, o, x))
    n, y, x, o, ry, rx, rc = sch.get_loops(block)
    ot = _choose(sch, kernel_config.otile_candidates, _extent(sch, o), tunable, kernel_config.default_otile)
    lanes = _choose(sch, kernel_config.column_candidates, _extent(sch, x), tunable, kernel_config.default_columns)
    return _register_tiles(sch, lanes, ot, over_columns=True)


def _register_tiles(sch, columns, channels, over_columns):
    """Tiles of `columns` x `channels` accumulated in registers, the reduction outside them, rows in
    parallel, the output transform per tile; the vector runs over the tile's columns or channels,
    the other tile axis unrolled."""
    block = sch.get_sblock("bconv_popcount")
    n, y, x, o, ry, rx, rc = sch.get_loops(block)
    xo, xi = sch.split(x, [None, columns])
    oo, oi = sch.split(o, [None, channels])
    unrolled, vector = (oi, xi) if over_columns else (xi, oi)
    sch.reorder(n, y, xo, oo, ry, rx, rc, unrolled, vector)
    sch.parallel(sch.fuse(n, y))
    out = sch.get_sblock("bconv_output")
    sch.reverse_compute_at(out, oo)
    sch.set_scope(block, 0, "local")  # the accumulator tile lives in registers
    sch.unroll(unrolled)
    sch.vectorize(vector)
    init = sch.decompose_reduction(block, ry)  # after annotating: see TVM 0.27 s_tir rules
    sch.vectorize(sch.get_loops(init)[-1])
    # Epilogue of one tile (the loops reverse_compute_at made under `oo`): o outer, x inner
    # (contiguous in NCHW): o unrolled, x vectorized.
    tile_loops = sch.get_loops(out)[-2:]
    sch.unroll(tile_loops[0])
    sch.vectorize(tile_loops[1])
    return sch


def schedule_bytes_op(sch, block_name, lanes):
    """binarize_pack / unpack (the plain ONNX ops): parallel rows, vectorized columns."""
    block = sch.get_sblock(block_name)
    loops = sch.get_loops(block)
    n, c, y, x = loops[:4]
    sch.parallel(sch.fuse(n, c, y))
    lanes = max(v for v in (lanes, lanes // 2, lanes // 4, 1) if _extent(sch, x) % v == 0)
    if lanes > 1:
        _, xi = sch.split(x, [None, lanes])
        if len(loops) > 4:  # a reduction over bits (binarize_pack): bits outside the vector
            sch.reorder(loops[4], xi)
            sch.unroll(loops[4])
            sch.vectorize(xi)
            init = sch.decompose_reduction(block, loops[4])
            sch.vectorize(sch.get_loops(init)[-1])
        else:
            sch.vectorize(xi)
