"""Sparse packing against zstd and memcpy on real ReLU activations (part of `edgesdk bench
codec`).

The data are the cut tensors (pool1, pool2, pool3: ReLU then max-pool) of the bundled
digits model (edgesdk.models) on its test digits, in the form this machine runs
(digits_bundle(): ONNX where onnxruntime imports, else TFLite, e.g. on 32-bit Raspberry Pi
OS), run with the bundle's runtime. Each digit's tensor is quantized on its own (symmetric,
one scale per tensor), as a device sends it.

Bytes, per digit (mean over the digits): the packed codes ("plain", what compress="none"
sends), the sparse stream (bitmap + non-zero codes), zstd level 1 of the packed codes, and
zstd level 1 of the sparse stream, each as produced, whether or not encode would keep it.

Time, on the codes of BATCH digits at once (n codes, one per byte, each digit with its own
scale), interleaved in one run (edgesdk.bench), median of the rounds:

    memcpy       np.copyto of the n code bytes: the reference
    sparse       the sparse stage over those n code bytes (native sparse_pack into a
                 preallocated buffer): bitmap + compaction + packing at `bits`
    unsparse     its inverse (decode side): the n codes from the stream
    zstd         zstd level 1 of the packed codes, as encode runs it (compress_if_pays)
    enc:MODE     codec.encode(x, bits, compress=MODE) of the float32 batch (BATCH digits as
                 one tensor, one scale): the whole encode, MODE none, sparse, zstd,
                 sparse+zstd

Targets (8 bits, every cut): the sparse stream at least MIN_RATIO times smaller than the
packed codes, and the sparse stage at most MAX_X_MEMCPY times memcpy of the same n bytes.
"""

from __future__ import annotations

import functools
from types import ModuleType

import numpy as np

from .. import codec
from ..codec import _numpy_kernels, _zstd
from . import Stats, Timing, format_table, ratio, time_interleaved

BITS = (8, 4, 2)
SCHEME = "symmetric"
LEVEL = 1
BATCH = 64  # digits whose codes are timed together
DIGITS = {"full": 750, "quick": 40}  # test digits for the byte counts (750: all of them)
MIN_RATIO = 1.5  # packed 8-bit bytes / sparse bytes
MAX_X_MEMCPY = 2.0  # sparse stage time / memcpy of the same n code bytes
ENCODE_MODES = ("none", "sparse", "zstd", "sparse+zstd")


def digits_activations(n_digits: int) -> tuple[list[tuple[str, str, np.ndarray]], str]:
    """([(cut id, tensor name, array (n_digits, *shape[1:]))], "") for the cut tensors of
    the bundled digits model on its first n_digits test digits, in the form this machine
    runs (edgesdk.models.digits_bundle: ONNX where onnxruntime imports, else TFLite), or
    ([], why) when the model cannot run here (no runtime for either form)."""
    try:
        from ..bundle import Bundle
        from ..models import digits_bundle, load_digits_test
        from ..runtime import open_segments, run_chain

        bundle = Bundle.load(digits_bundle())
        segments = open_segments(bundle)
    except Exception as exc:  # ImportError, MissingDependency, a runtime's own errors
        return [], f"{type(exc).__name__}: {exc}"
    x, _ = load_digits_test()
    stop = max(c.after_segment for c in bundle.cuts) + 1
    first = bundle.segments[0].inputs[0]
    names = [(c.id, t.name) for c in bundle.cuts for t in c.tensors]
    runs = [run_chain(segments, {first: x[i:i + 1]}, 0, stop)
            for i in range(min(n_digits, len(x)))]
    return [(cut, name, np.concatenate([env[name] for env in runs]).astype(np.float32))
            for cut, name in names], ""


def _bytes(kernels: ModuleType, tensors: np.ndarray, bits: int) -> dict:
    """Mean bytes per digit tensor of each form, and the fraction of zero codes."""
    comp = _zstd._compressor(LEVEL)
    plain = sparse = zstd = both = zeros = 0.0
    for t in tensors:
        one = t[None]
        packed, _, zps = kernels.quantize_pack(one, bits, SCHEME)
        stream = kernels.quantize_sparse(one, bits, SCHEME)[0]
        codes = kernels.unpack(packed, bits, one.size)
        plain += packed.size
        sparse += stream.size
        zstd += len(comp.compress(packed.tobytes()))
        both += len(comp.compress(stream.tobytes()))
        zeros += float(np.mean(codes == zps[0]))
    m = len(tensors)
    return {"plain": plain / m, "sparse": sparse / m, "zstd": zstd / m,
            "sparse_zstd": both / m, "zero_codes": zeros / m}


def _batch_codes(kernels: ModuleType, tensors: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    """The codes (one per byte) of the first BATCH digits, each quantized on its own."""
    out = []
    zero = 1 << (bits - 1)  # symmetric: the same zero point for every digit
    for t in tensors[:BATCH]:
        packed = kernels.quantize_pack(t[None], bits, SCHEME)[0]
        out.append(kernels.unpack(packed, bits, t.size))
    return np.concatenate(out), zero


def bench_one(cut: str, name: str, tensors: np.ndarray, bits: int,
              native: ModuleType | None, rounds: int, min_time: float) -> dict:
    """One cut tensor x bits: bytes over every digit, times on a batch (a JSON-ready row)."""
    kernels = native or _numpy_kernels
    sizes = _bytes(kernels, tensors, bits)
    codes, zero = _batch_codes(kernels, tensors, bits)
    n = codes.size
    dst = np.empty_like(codes)
    stream = kernels.sparse_pack(codes, zero, bits)
    packed = memoryview(kernels.pack(codes, bits)).cast("B")
    xb = np.ascontiguousarray(tensors[:BATCH])
    if native is not None:
        from .. import _native  # the binding itself: preallocated buffers, as memcpy has

        out = np.empty(n // 8 + 1 + n, np.uint8)[: (n + 7) // 8 + (n * bits + 7) // 8]
        back = np.empty(n, np.uint8)
        sparse = functools.partial(_native.sparse_pack, codes, out, zero, bits)
        unsparse = functools.partial(_native.sparse_unpack, stream, back, zero, bits)
    else:
        sparse = functools.partial(_numpy_kernels.sparse_pack, codes, zero, bits)
        unsparse = functools.partial(_numpy_kernels.sparse_unpack, stream, n, zero, bits)
    cases = {
        "memcpy": functools.partial(np.copyto, dst, codes),
        "sparse": sparse,
        "unsparse": unsparse,
        "zstd": functools.partial(_zstd.compress_if_pays, packed, LEVEL),
    }
    for mode in ENCODE_MODES:
        cases[f"enc:{mode}"] = functools.partial(codec.encode, xb, bits=bits, compress=mode)
    t: dict[str, Timing] = time_interleaved(cases, rounds, min_time)
    us = {k: v.stats().scaled(1e6) for k, v in t.items()}
    st = {
        "time_us": us,
        "sparse_x_memcpy": ratio(t["sparse"], t["memcpy"]),
        "unsparse_x_memcpy": ratio(t["unsparse"], t["memcpy"]),
        "zstd_x_sparse": ratio(t["zstd"], t["sparse"]),
        "enc_sparse_x_none": ratio(t["enc:sparse"], t["enc:none"]),
        "enc_zstd_x_sparse": ratio(t["enc:zstd"], t["enc:sparse"]),
    }
    plain_over_sparse = sizes["plain"] / sizes["sparse"]
    targets = []
    if bits == 8 and native is not None:  # as the rest of the report: targets need native
        targets.append({
            "name": f"{cut} 8-bit sparse >= {MIN_RATIO}x smaller than plain codes",
            "limit": MIN_RATIO, "value": round(plain_over_sparse, 3),
            "ci": [round(plain_over_sparse, 3)] * 2, "pass": plain_over_sparse >= MIN_RATIO,
            "conclusive": True,  # bytes: no noise
        })
        s = st["sparse_x_memcpy"]
        targets.append({
            "name": f"{cut} 8-bit sparse stage <= {MAX_X_MEMCPY}x memcpy",
            "limit": MAX_X_MEMCPY, "value": round(s.median, 3),
            "ci": [round(s.low, 3), round(s.high, 3)], "pass": s.median <= MAX_X_MEMCPY,
            "conclusive": s.high <= MAX_X_MEMCPY or s.low > MAX_X_MEMCPY,
        })

    def d(s: Stats) -> dict:
        return s.as_dict()

    return {
        "cut": cut, "tensor": name, "shape": list(tensors.shape[1:]), "bits": bits,
        "digits": len(tensors), "batch_digits": min(BATCH, len(tensors)), "batch_codes": n,
        "bytes_per_digit": {k: round(v, 1) for k, v in sizes.items() if k != "zero_codes"},
        "zero_codes": round(sizes["zero_codes"], 4),
        "plain_over_sparse": round(plain_over_sparse, 3),
        "plain_over_zstd": round(sizes["plain"] / sizes["zstd"], 3),
        "plain_over_sparse_zstd": round(sizes["plain"] / sizes["sparse_zstd"], 3),
        "batch_calls": {k: v.batch for k, v in t.items()},
        "time_us": {k: d(v) for k, v in us.items()},
        **{k: d(v) for k, v in st.items() if k != "time_us"},
        "targets": targets,
        "pass": all(c["pass"] for c in targets) if targets else None,
    }


def run(native: ModuleType | None, rounds: int, min_time: float, quick: bool) -> dict:
    """The section of the codec report (JSON-ready): {"available", "why", "rows", ...}."""
    from ..models import digits_bundle

    digits = DIGITS["quick" if quick else "full"]
    tensors, why = digits_activations(digits)
    rows = [bench_one(cut, name, arr, bits, native, rounds, min_time)
            for cut, name, arr in tensors for bits in BITS]
    return {
        "available": bool(tensors), "why": why or None,
        "data": f"edgesdk.models {digits_bundle().name} cut tensors on {digits} test digits",
        "batch_digits": BATCH, "targets": {"min_ratio_8bit": MIN_RATIO,
                                           "max_x_memcpy_8bit": MAX_X_MEMCPY},
        "rows": rows,
    }


def _pm(s: dict | None, digits: int = 1) -> str:
    """pm() of a Stats.as_dict(): `median ±half-width of the CI`."""
    if s is None:
        return "n/a"
    return f"{s['median']:.{digits}f} ±{(s['ci_high'] - s['ci_low']) / 2:.{digits}f}"


def _verdict(row: dict) -> str:
    if not row["targets"]:
        return ""
    missed = [c for c in row["targets"] if not c["pass"]]
    mark = "" if all(c["conclusive"] for c in row["targets"]) else "*"
    if not missed:
        return "PASS" + mark
    return "MISS(" + ",".join("bytes" if "smaller" in c["name"] else "x mem"
                              for c in missed) + ")" + mark


def format_text(section: dict) -> list[str]:
    """The lines of the section (run's result, or the JSON report's "sparse") in `edgesdk
    bench codec`'s text report."""
    out = ["", "Sparse packing on real ReLU activations: "
           f"{section['data']} (one scale per digit tensor)"]
    if not section["available"]:
        return out + [f"  not run: the digits model does not run here ({section['why']})"]
    rows = section["rows"]
    header = ["cut", "tensor", "bits", "zero codes", "plain B", "sparse B", "zstd B",
              "sp+zstd B", "plain/sparse", "plain/zstd", "plain/sp+z"]
    body = []
    for r in rows:
        b = r["bytes_per_digit"]
        body.append([r["cut"], f"{r['tensor']} {'x'.join(map(str, r['shape']))}", r["bits"],
                     f"{r['zero_codes']:.3f}", f"{b['plain']:.0f}", f"{b['sparse']:.1f}",
                     f"{b['zstd']:.1f}", f"{b['sparse_zstd']:.1f}",
                     f"{r['plain_over_sparse']:.3f}", f"{r['plain_over_zstd']:.3f}",
                     f"{r['plain_over_sparse_zstd']:.3f}"])
    out += ["Bytes per digit tensor, mean over the digits (each stage's output as produced):",
            format_table(header, body, "llr" + "r" * 8), ""]
    n_batch = rows[0]["batch_digits"] if rows else BATCH
    out.append(f"Time on the codes of {n_batch} digits at once (n codes, one byte each; "
               "median ± CI half-width over the rounds; ratios per round):")
    header = ["cut", "bits", "n", "memcpy us", "sparse us", "x memcpy", "unsparse us",
              "x memcpy", "zstd us", "zstd/sparse", "enc none", "enc sparse", "enc zstd",
              "enc sp+z", "enc zstd/sparse", "target"]
    body = []
    for r in rows:
        us = r["time_us"]
        body.append([r["cut"], r["bits"], r["batch_codes"], _pm(us["memcpy"], 2),
                     _pm(us["sparse"], 2), _pm(r["sparse_x_memcpy"], 2),
                     _pm(us["unsparse"], 2), _pm(r["unsparse_x_memcpy"], 2), _pm(us["zstd"]),
                     _pm(r["zstd_x_sparse"]), _pm(us["enc:none"]), _pm(us["enc:sparse"]),
                     _pm(us["enc:zstd"]), _pm(us["enc:sparse+zstd"]),
                     _pm(r["enc_zstd_x_sparse"], 2), _verdict(r)])
    out += [format_table(header, body, "lrr" + "r" * 12 + "l"), ""]
    out += [
        "memcpy: np.copyto of the n code bytes. sparse: the sparse stage over the same n code",
        "  bytes (bitmap + the non-zero codes packed at `bits`, into a preallocated buffer).",
        "  unsparse: its inverse. zstd: zstd level 1 of the n*bits/8 packed bytes, as encode",
        "  runs it. enc MODE: codec.encode(x, bits, compress=MODE) of the batch as one float32",
        "  tensor (the whole encode: statistics, quantize, pack or sparse, zstd), in us.",
        f"target (8 bits): plain/sparse >= {MIN_RATIO} (bytes) and sparse <= {MAX_X_MEMCPY}x "
        "memcpy (time); * = the CI spans the limit.",
    ]
    return out


__all__ = ["BITS", "bench_one", "digits_activations", "format_text", "run"]
