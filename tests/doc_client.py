"""A client of the offload protocol written from docs/protocol.md and docs/wire-format.md
alone: raw pyzmq + msgpack + zstandard + numpy, no edgesdk. If this file needs something
the documents do not say, the documents are incomplete (tests/test_doc_client.py runs it
against a real `edgesdk serve`).

    with DocClient("tcp://127.0.0.1:5555") as client:
        welcome = client.hello()                          # the welcome envelope (a dict)
        outputs = client.infer(bundle_id, "c1", [array], bits=8)   # {name: np.ndarray}

Errors are DocError(code, message) for `error` replies and DocBusy for `busy`.
"""

from __future__ import annotations

import time

import msgpack
import numpy as np
import zmq
import zstandard

VERSION = 1


class DocError(Exception):
    """An `error` reply (protocol.md, Error codes)."""

    def __init__(self, code: str, message: str, envelope: dict) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.envelope = envelope


class DocBusy(Exception):
    """A `busy` reply."""


# -- wire format (docs/wire-format.md) ------------------------------------------------------


def _packb(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # str for text, bin for bytes


def encode_tensor(x: np.ndarray, bits: int = 32, compress: bool = False) -> list[bytes]:
    """[header, payload] for a float tensor: bits 32 or 16 (float), or 8 (symmetric, one
    scale for the tensor). compress: the payload as one zstd frame with its content size."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if bits in (32, 16):
        payload = x.astype("<f4" if bits == 32 else "<f2").tobytes()  # C order, little-endian
        scheme, scales, zero_points = "float", b"", b""
    elif bits == 8:
        # symmetric: scale = absmax / (2^(bits-1) - 1), zero point 2^(bits-1), codes
        # [1, 2^bits - 1]; c = clamp(rint(x * (1/scale)), range - zp) + zp, float32
        absmax = np.float32(np.max(np.abs(x))) if x.size else np.float32(0)
        scale = np.float32(absmax / np.float32(127))
        if not scale >= np.float32(2.0**-100):
            scale = np.float32(1)
        zp = 128
        inv = np.float32(1) / scale
        codes = np.clip(np.rint(x * inv), 1 - zp, 255 - zp).astype(np.int32) + zp
        payload = codes.astype(np.uint8).tobytes()  # 8 bits: byte i is element i
        scheme = "symmetric"
        scales = np.array([scale], dtype="<f4").tobytes()
        zero_points = bytes([zp])
    else:
        raise ValueError(f"this client encodes bits 32, 16 or 8, not {bits}")
    raw_len = len(payload)
    codec = "none"
    if compress:
        payload = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(payload)
        codec = "zstd"
    header = {"v": 1, "dtype": "float32", "shape": list(x.shape), "bits": bits,
              "scheme": scheme, "axis": None, "scales": scales, "zero_points": zero_points,
              "codec": codec, "raw_len": raw_len}
    return [_packb(header), payload]


def _unpack_codes(payload: bytes, n: int, bits: int) -> np.ndarray:
    raw = np.frombuffer(payload, dtype=np.uint8)
    if bits == 8:
        return raw[:n].astype(np.int32)
    per = 8 // bits  # little-endian within each byte: element per*i + k in bits k*bits...
    shifts = np.arange(per, dtype=np.uint8) * bits
    codes = (raw[:, None] >> shifts[None, :]) & ((1 << bits) - 1)
    return codes.reshape(-1)[:n].astype(np.int32)


def decode_tensor(header_frame: bytes, payload: bytes) -> np.ndarray:
    """The array of a [header, payload] pair (any mode of the wire format)."""
    h = msgpack.unpackb(header_frame, raw=False)
    if h["v"] != 1:
        raise ValueError(f"wire format version {h['v']}")
    payload = bytes(payload)
    if h["codec"] in ("zstd", "sparse+zstd"):
        payload = zstandard.ZstdDecompressor().decompress(payload)
    if len(payload) != h["raw_len"]:
        raise ValueError(f"payload is {len(payload)} bytes, raw_len {h['raw_len']}")
    shape, bits = tuple(h["shape"]), h["bits"]
    n = int(np.prod(shape, dtype=np.int64))
    if bits == 32:
        x = np.frombuffer(payload, dtype="<f4")
    elif bits == 16:
        x = np.frombuffer(payload, dtype="<f2")
    else:
        scales = np.frombuffer(h["scales"], dtype="<f4")
        zps = np.frombuffer(h["zero_points"], dtype=np.uint8).astype(np.int32)
        if h["codec"] in ("sparse", "sparse+zstd"):  # bitmap, then the codes it marks
            nb = (n + 7) // 8
            keep = np.unpackbits(np.frombuffer(payload[:nb], np.uint8), count=n,
                                 bitorder="little").astype(bool)
            codes = np.full(n, zps[0] if zps.size else 0, dtype=np.int32)
            codes[keep] = _unpack_codes(payload[nb:], int(keep.sum()), bits)
        else:
            codes = _unpack_codes(payload, n, bits)
        if h["axis"] is None:
            x = ((codes - zps[0]).astype(np.float32) * scales[0]).astype(np.float32)
        else:  # [outer][shape[a]][inner], group g = index along the axis
            a = h["axis"]
            outer = int(np.prod(shape[:a], dtype=np.int64))
            inner = int(np.prod(shape[a + 1:], dtype=np.int64))
            c = codes.reshape(outer, shape[a], inner)
            x = ((c - zps[None, :, None]).astype(np.float32) * scales[None, :, None])
    return np.asarray(x, dtype=np.float32).reshape(shape).astype(h["dtype"])


# -- the protocol (docs/protocol.md) ---------------------------------------------------------


class DocClient:
    """One DEALER socket; requests numbered from 1; replies matched by id."""

    def __init__(self, endpoint: str, server_key: bytes | None = None,
                 client_pair: tuple[bytes, bytes] | None = None) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if server_key is not None:  # CURVE: the server's public key, our own pair
            self.sock.curve_serverkey = server_key
            self.sock.curve_publickey, self.sock.curve_secretkey = client_pair
        self.sock.connect(endpoint)
        self._next_id = 1
        self.dropped: list[dict] = []  # replies to no request of ours (id 0, late ones)

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()

    def __enter__(self) -> DocClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def new_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    def send(self, envelope: dict, frames=()) -> None:
        self.sock.send_multipart([_packb(envelope), *frames])

    def receive(self, rid: int, timeout_s: float) -> tuple[dict, list[bytes]]:
        """The reply whose id is `rid` (others are dropped); TimeoutError after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(max(1, int(left * 1e3))):
                raise TimeoutError(f"no reply to request {rid} within {timeout_s} s")
            frames = self.sock.recv_multipart()
            env = msgpack.unpackb(frames[0], raw=False)
            if env.get("id") == rid:
                return env, frames[1:]
            self.dropped.append(env)

    def call(self, kind: str, budget_ms: float, frames=(), **fields) -> tuple[dict, list]:
        """Send one request and wait for its answer; DocError / DocBusy for error / busy."""
        rid = self.new_id()
        self.send({"v": VERSION, "kind": kind, "id": rid, "budget_ms": float(budget_ms),
                   **fields}, frames)
        env, payload = self.receive(rid, budget_ms / 1e3)
        if env["kind"] == "error":
            raise DocError(env["error"], env["message"], env)
        if env["kind"] == "busy":
            raise DocBusy(f"queue {env.get('queue')} of {env.get('max_queue')}")
        expected = {"hello": "welcome", "heartbeat": "heartbeat", "infer": "result"}[kind]
        if env["kind"] != expected or env["v"] != VERSION:
            raise ValueError(f"a {env['kind']} (v{env['v']}) reply to a {kind} request")
        return env, payload

    def hello(self, budget_ms: float = 5000.0) -> dict:
        return self.call("hello", budget_ms)[0]

    def heartbeat(self, budget_ms: float = 2000.0) -> dict:
        return self.call("heartbeat", budget_ms)[0]

    def infer(self, bundle: str, cut: str, tensors, bits: int = 32, compress: bool = False,
              budget_ms: float = 5000.0) -> tuple[dict[str, np.ndarray], dict]:
        """Send the cut's tensors (in the welcome's order); returns ({output: array},
        the result envelope)."""
        frames: list[bytes] = []
        for x in tensors:
            frames += encode_tensor(x, bits, compress)
        env, payload = self.call("infer", budget_ms, frames, bundle=bundle, cut=cut)
        names = env["outputs"]
        if len(payload) != 2 * len(names):
            raise ValueError(f"{len(payload)} frames for outputs {names}")
        return {name: decode_tensor(payload[2 * i], payload[2 * i + 1])
                for i, name in enumerate(names)}, env
