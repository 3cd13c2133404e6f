"""The codec microbenchmark: `edgesdk bench codec` and benchmarks/bench_codec.py.

For CNN-like activation shapes (float32, ReLU-sparse: max(N(0, 1), 0), seeded) and 8, 4
and 2 bits it times, interleaved in one run (see :mod:`edgesdk.bench`):

    memcpy   np.copyto of the float32 tensor into a preallocated one: the reference
    native   the fused quantize+pack C kernel (symmetric, one scale per tensor)
    numpy    the same in the numpy fallback
    zstd     compressing the packed payload as encode does (level 1, only if it pays)
    encode   codec.encode(x, bits) with the default compress="zstd"
    decode   codec.decode of those frames

and reports bytes on the wire (header + payload) against the float32 size. Targets: the
native fused kernel at 8 bits within 1.5x memcpy, at 4 bits within 2x, and at least 3x
faster than numpy. Every tensor is hot in cache for every contender alike.

Then, on real activations (the bundled digits model's cut tensors), the sparse packing
(compress="sparse") against zstd and memcpy: bytes per tensor, the sparse stage against
memcpy of the same code bytes, and the whole encode per entropy stage; see
:mod:`edgesdk.bench.codec_sparse` for what is timed against what, and its targets.

The numpy fallback allocates several tensor-sized temporaries per call; how often those
come back from the OS as fresh pages (page faults) depends on what else the process
allocates, so its times vary with the neighbouring workload by more than the quoted
intervals (interleaved with the other contenders here, it is slower than timed alone).

    edgesdk bench codec [--json] [--quick] [--isa {best,all}] [--rounds N]

(edgesdk.cli.bench parses those options and prints; this module measures.)
"""

from __future__ import annotations

import functools
import os
import platform
from importlib import metadata
from types import ModuleType

import numpy as np

from .. import __version__, codec
from ..codec import _numpy_kernels, _zstd
from ..errors import ConfigError
from . import Stats, Timing, codec_sparse, format_table, pm, ratio, time_interleaved

SHAPES = ((64, 56, 56), (128, 28, 28), (256, 13, 13), (512, 7, 7))
BITS = (8, 4, 2)
SCHEME = "symmetric"
LEVEL = 1
SEED = 0
# bits -> largest native quantize+pack time as a multiple of memcpy
MAX_X_MEMCPY = {8: 1.5, 4: 2.0}
MIN_SPEEDUP = 3.0  # native over numpy, every bits

FULL = {"rounds": 31, "min_time": 2e-3}
QUICK = {"rounds": 5, "min_time": 5e-4}


def _native() -> tuple[ModuleType | None, str]:
    """The native kernel module, or None and why it is unavailable.

    It is imported directly, so the native kernel is measured even when the codec itself
    was told to use numpy (EDGESDK_NATIVE=0)."""
    try:
        from ..codec import _native_kernels
    except ImportError as exc:
        return None, str(exc)
    return _native_kernels, ""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Hardware", "Processor")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "zstandard": _version("zstandard"),
    }


def activation(shape: tuple[int, ...], seed: int = SEED) -> np.ndarray:
    """A ReLU-sparse float32 activation: max(N(0, 1), 0), about half zeros."""
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal(shape, dtype=np.float32), np.float32(0))


def _check(name: str, limit: float, value: Stats, at_most: bool) -> dict:
    """A target verdict on the median; conclusive when the whole CI is on one side."""
    passed = value.median <= limit if at_most else value.median >= limit
    inside = value.high <= limit if at_most else value.low >= limit
    outside = value.low > limit if at_most else value.high < limit
    return {"name": name, "limit": limit, "value": round(value.median, 3),
            "ci": [round(value.low, 3), round(value.high, 3)], "pass": passed,
            "conclusive": inside or outside}


def bench_one(shape: tuple[int, ...], bits: int, native: ModuleType | None,
              isas: tuple[str, ...], best_isa: str | None, rounds: int,
              min_time: float) -> dict:
    """Measure one shape x bits; returns a JSON-ready row with Stats objects under "_"."""
    x = activation(shape)
    dst = np.empty_like(x)
    ref_kernels = native or _numpy_kernels
    packed = ref_kernels.quantize_pack(x, bits, SCHEME)[0]
    raw = memoryview(packed).cast("B")
    zcodec, zout = _zstd.compress_if_pays(raw, LEVEL)
    frames = codec.encode(x, bits=bits)
    identical = None
    if native is not None:
        identical = bool(np.array_equal(packed, _numpy_kernels.quantize_pack(x, bits, SCHEME)[0]))

    cases = {
        "memcpy": functools.partial(np.copyto, dst, x),
        "numpy": functools.partial(_numpy_kernels.quantize_pack, x, bits, SCHEME),
        "zstd": functools.partial(_zstd.compress_if_pays, raw, LEVEL),
        "encode": functools.partial(codec.encode, x, bits=bits),
        "decode": functools.partial(codec.decode, frames),
    }
    setups = {}
    if native is not None:
        cases["native"] = functools.partial(native.quantize_pack, x, bits, SCHEME)
        extra = [i for i in isas if i != best_isa]
        for isa in extra:
            cases[f"isa:{isa}"] = cases["native"]
            setups[f"isa:{isa}"] = functools.partial(native.set_isa, isa)
        if extra:  # every other case runs with the default build
            restore = functools.partial(native.set_isa, best_isa)
            setups.update({name: restore for name in cases if not name.startswith("isa:")})
    try:
        t: dict[str, Timing] = time_interleaved(cases, rounds, min_time, setups)
    finally:
        if native is not None and best_isa is not None:
            native.set_isa(best_isa)

    us = {name: timing.stats().scaled(1e6) for name, timing in t.items()}
    st = {
        "time_us": us,
        "numpy_x_memcpy": ratio(t["numpy"], t["memcpy"]),
        "native_x_memcpy": ratio(t["native"], t["memcpy"]) if native else None,
        "native_speedup": ratio(t["numpy"], t["native"]) if native else None,
        "isa": {},
    }
    targets = []
    if native is not None:
        for isa in isas:
            name = "native" if isa == best_isa else f"isa:{isa}"
            st["isa"][isa] = {"time_us": us[name], "x_memcpy": ratio(t[name], t["memcpy"]),
                              "x_best": ratio(t[name], t["native"])}
        if bits in MAX_X_MEMCPY:
            targets.append(_check(f"native {bits}-bit quantize+pack <= {MAX_X_MEMCPY[bits]}x "
                                  "memcpy", MAX_X_MEMCPY[bits], st["native_x_memcpy"], True))
        targets.append(_check(f"native >= {MIN_SPEEDUP}x faster than numpy", MIN_SPEEDUP,
                              st["native_speedup"], False))
    wire = len(frames[0]) + memoryview(frames[1]).nbytes

    def d(s: Stats | None) -> dict | None:
        return None if s is None else s.as_dict()

    return {
        "shape": list(shape),
        "bits": bits,
        "fp32_bytes": x.nbytes,
        "wire_bytes": wire,
        "wire_over_fp32": round(wire / x.nbytes, 4),
        "packed_bytes": len(raw),
        "zstd_codec": zcodec,  # "none": zstd did not pay, encode sends the packed bytes
        "zstd_ratio": round(len(raw) / len(zout), 3),
        "native_equals_numpy": identical,
        "batch_calls": {name: timing.batch for name, timing in t.items()},
        "time_us": {name: d(s) for name, s in us.items()
                    if not name.startswith("isa:")},
        "native_x_memcpy": d(st["native_x_memcpy"]),
        "numpy_x_memcpy": d(st["numpy_x_memcpy"]),
        "native_speedup": d(st["native_speedup"]),
        "isa": {isa: {k: d(v) for k, v in r.items()} for isa, r in st["isa"].items()},
        "targets": targets,
        "pass": all(c["pass"] for c in targets) if targets else None,
        "_": st,
    }


def _verdict(row: dict) -> str:
    if not row["targets"]:
        return "n/a"
    mark = "" if all(c["conclusive"] for c in row["targets"]) else "*"
    missed = [c for c in row["targets"] if not c["pass"]]
    if not missed:
        return "PASS" + mark
    what = ",".join("x mem" if "memcpy" in c["name"] else "speedup" for c in missed)
    return f"MISS({what}){mark}"


def _main_table(rows: list[dict]) -> str:
    header = ["shape", "bits", "memcpy us", "native us", "x memcpy", "numpy us", "x memcpy",
              "nat/np", "zstd us", "zstd x", "encode us", "decode us", "wire B", "fp32 B",
              "wire/fp32", "target"]
    body = []
    for r in rows:
        st, us = r["_"], r["_"]["time_us"]
        body.append([
            "x".join(map(str, r["shape"])), r["bits"], pm(us["memcpy"], 2),
            pm(us.get("native"), 2), pm(st["native_x_memcpy"], 2), pm(us["numpy"]),
            pm(st["numpy_x_memcpy"]), pm(st["native_speedup"]), pm(us["zstd"]),
            f"{r['zstd_ratio']:.2f}" + ("" if r["zstd_codec"] == "zstd" else " (off)"),
            pm(us["encode"]), pm(us["decode"]), r["wire_bytes"], r["fp32_bytes"],
            f"{r['wire_over_fp32']:.3f}", _verdict(r),
        ])
    return format_table(header, body, "lr" + "r" * 13 + "l")


def _isa_table(rows: list[dict]) -> str:
    header = ["shape", "bits", "isa", "qpack us", "x memcpy", "x best"]
    body = []
    for r in rows:
        for isa, s in r["_"]["isa"].items():
            body.append(["x".join(map(str, r["shape"])), r["bits"], isa, pm(s["time_us"], 2),
                         pm(s["x_memcpy"], 2), pm(s["x_best"], 2)])
    return format_table(header, body, "lrlrrr")


def format_text(report: dict, rows: list[dict]) -> str:
    """The text report of :func:`run` (what `edgesdk bench codec` prints)."""
    out: list[str] = []
    write = out.append
    m, b, s = report["machine"], report["backend"], report["settings"]
    write(f"edgesdk {report['edgesdk']} codec benchmark")
    write(f"machine: {m['cpu']}, {m['cpu_count']} CPUs, {m['platform']}")
    write(f"python {m['python']}, numpy {m['numpy']}, zstandard {m['zstandard']}")
    if b["native_available"]:
        write(f"native kernels: ISA {b['isa']} (builds this CPU runs: "
              f"{', '.join(b['isas_available'])})")
    else:
        write("native kernels: NOT AVAILABLE - numpy fallback only; native columns and "
              f"targets are n/a ({b['native_error']})")
    write(f"encode/decode use the codec backend: {b['codec_backend']}")
    write(f"data: float32 max(N(0,1), 0), seed {s['seed']}; scheme {s['scheme']}, one scale "
          f"per tensor; zstd level {s['zstd_level']}")
    write(f"timing: {s['rounds']} interleaved rounds, batches >= {s['min_time_s'] * 1e3:g} ms; "
          "median ± half-width of the ~95% CI of the median")
    write("")
    write(_main_table(rows))
    write("")
    write("x memcpy, nat/np: per-round ratios (times / memcpy; numpy / native), then median.")
    write("zstd x: packed bytes / zstd bytes ('off': zstd did not pay, encode sends them raw).")
    write("wire B: header + payload frames of codec.encode.")
    write("numpy us depends on allocator state (page faults of its temporaries) beyond the "
          "quoted intervals.")
    write(f"target: native x memcpy <= {MAX_X_MEMCPY[8]} at 8 bits, <= {MAX_X_MEMCPY[4]} at "
          f"4 bits; nat/np >= {MIN_SPEEDUP}. Judged on the median; * = the CI spans the "
          "limit, so the verdict is within noise.")
    if report["isa_rows"]:
        write("")
        write("Fused native quantize+pack per ISA build (runtime dispatch):")
        write(_isa_table(rows))
    out.extend(codec_sparse.format_text(report["sparse"]))
    summary = report["summary"]
    write("")
    if summary["all_pass"] is None:
        write("targets: not evaluated (no native kernels)")
    elif summary["all_pass"]:
        write(f"targets: all {summary['checked']} met")
    else:
        write(f"targets: {len(summary['missed'])} of {summary['checked']} missed:")
        for miss in summary["missed"]:
            write(f"  {miss}")
    if summary["mismatch"]:
        write(f"WARNING: native and numpy packed bytes differ for {summary['mismatch']}")
    return "\n".join(out)


def run(rounds: int | None = None, quick: bool = False, isa: str = "best"
        ) -> tuple[dict, list[dict]]:
    """Run the benchmark: (the JSON-ready report, the rows with their Stats for
    :func:`format_text`). quick: a smoke test, not a measurement. isa "all": also time the
    fused kernel in every ISA build this CPU runs."""
    mode = QUICK if quick else FULL
    rounds = rounds if rounds is not None else mode["rounds"]
    if rounds < 1:
        raise ConfigError(f"rounds is {rounds}, expected >= 1")
    if isa not in ("best", "all"):
        raise ConfigError(f"isa is {isa!r}, expected 'best' or 'all'")

    native, native_error = _native()
    best_isa = native.isa() if native else None
    available = native.available_isas() if native else ()
    isas = available if isa == "all" else ((best_isa,) if native else ())

    rows = [bench_one(shape, bits, native, isas, best_isa, rounds, mode["min_time"])
            for shape in SHAPES for bits in BITS]
    sparse = codec_sparse.run(native, rounds, mode["min_time"], quick)

    checked = [c for r in rows + sparse["rows"] for c in r["targets"]]
    missed = [f"{'x'.join(map(str, r['shape']))} {r['bits']}-bit: {c['name']}: "
              f"{c['value']} [{c['ci'][0]}, {c['ci'][1]}]"
              for r in rows + sparse["rows"] for c in r["targets"] if not c["pass"]]
    report = {
        "benchmark": "codec",
        "edgesdk": __version__,
        "machine": machine_info(),
        "backend": {
            "codec_backend": codec.backend,
            "native_available": native is not None,
            "native_error": native_error or None,
            "isa": best_isa,
            "isas_available": list(available),
        },
        "settings": {
            "rounds": rounds,
            "min_time_s": mode["min_time"],
            "quick": quick,
            "isa": isa,
            "seed": SEED,
            "scheme": SCHEME,
            "zstd_level": LEVEL,
            "data": "float32 max(N(0,1), 0)",
            "uncertainty": "ci_low/ci_high: distribution-free CI of the median over rounds "
                           "(coverage ci_level); q1/q3: interquartile range",
        },
        "targets": {"native_x_memcpy_max": {str(k): v for k, v in MAX_X_MEMCPY.items()},
                    "native_speedup_min": MIN_SPEEDUP},
        "isa_rows": isa == "all" and native is not None,
        "rows": [{k: v for k, v in r.items() if k != "_"} for r in rows],
        "sparse": sparse,
        "summary": {
            "checked": len(checked),
            "all_pass": (not missed) if checked else None,
            "missed": missed,
            "mismatch": [f"{'x'.join(map(str, r['shape']))} {r['bits']}-bit" for r in rows
                         if r["native_equals_numpy"] is False],
        },
    }
    return report, rows


__all__ = ["BITS", "SHAPES", "activation", "bench_one", "format_text", "machine_info", "run"]
