"""Rejected CURVE handshakes are visible: a rate-limited `auth_rejected` log line naming the
device's key and address, and the `edgesdk_auth_rejected_total` counter."""

from __future__ import annotations

import re
import urllib.request

import pytest

from edgesdk.errors import Timeout, Unreachable
from edgesdk.transport import Client
from edgesdk.transport.auth import RejectionLog, generate_keys, load_key_pair
from edgesdk.transport.logs import log

from transport_helpers import ServerProcess, wait_until

pytestmark = pytest.mark.timeout(90)


class _Lines:
    def __init__(self) -> None:
        self.events: list[dict] = []

    def __enter__(self):
        import logging

        class Catch(logging.Handler):
            def emit(inner, record):  # noqa: N805
                if record.getMessage() == "auth_rejected":
                    self.events.append(dict(record.fields))

        self._handler = Catch()
        self._level = log.level
        log.addHandler(self._handler)
        log.setLevel("INFO")
        return self

    def __exit__(self, *exc):
        log.removeHandler(self._handler)
        log.setLevel(self._level)


def test_rejections_are_all_counted_but_logged_once_per_peer_per_minute():
    now = [0.0]
    counted = []
    rejections = RejectionLog(on_reject=lambda: counted.append(1), clock=lambda: now[0],
                              max_peers=2, max_lines=3)
    with _Lines() as lines:
        assert rejections.reject("CURVE", "10.0.0.1", "keyA", "Unknown key")
        for _ in range(50):  # a device reconnecting every 50 ms for a while
            now[0] += 0.05
            assert not rejections.reject("CURVE", "10.0.0.1", "keyA", "Unknown key")
        assert rejections.reject("CURVE", "10.0.0.2", "keyA", "Unknown key")  # another address
        now[0] = 61.0
        assert rejections.reject("CURVE", "10.0.0.1", "keyA", "Unknown key")  # a minute on
        # at most max_lines per minute over all peers: random keys cannot flood the log
        logged = [rejections.reject("CURVE", "10.0.0.9", f"k{i}", "Unknown key")
                  for i in range(5)]
    assert logged == [True, True, False, False, False]
    assert len(counted) == 1 + 50 + 1 + 1 + 5
    assert [(e["address"], e["client_key"], e["count"]) for e in lines.events] == [
        ("10.0.0.1", "keyA", 1), ("10.0.0.2", "keyA", 1), ("10.0.0.1", "keyA", 51),
        ("10.0.0.9", "k0", 1), ("10.0.0.9", "k1", 1)]
    assert len(rejections._peers) == 2  # bounded memory: the oldest peers are forgotten


def _rejected_total(url: str) -> float:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    match = re.search(r"^edgesdk_auth_rejected_total (\S+)$", text, re.M)
    assert match, text
    return float(match.group(1))


@pytest.mark.slow
def test_a_device_with_a_wrong_key_is_logged_once_and_counted_every_time(tmp_path):
    keys, allow = tmp_path / "keys", tmp_path / "allowed"
    for name in ("server", "camera", "intruder"):
        generate_keys(keys, name)
    allow.mkdir()
    (allow / "camera.key").write_bytes((keys / "camera.key").read_bytes())
    intruder_key = load_key_pair(keys / "intruder.key_secret").public.decode()
    with ServerProcess.ops("--curve-secret", str(keys / "server.key_secret"),
                           "--allow", str(allow), "--metrics-port", "0") as server:
        assert _rejected_total(server.metrics_url) == 0
        # libzmq gives up on a socket whose handshake was rejected; a device that keeps
        # trying opens new ones, and each is a handshake the server rejects.
        for _ in range(3):
            with Client(server.endpoint, server_public_key=keys / "server.key",
                        client_keys=keys / "intruder.key_secret") as intruder, \
                    pytest.raises((Unreachable, Timeout)):
                intruder.request([b"x"], budget_s=0.5, bundle="b", cut="c")
        line = server.wait_event("auth_rejected", timeout=5)
        assert line["level"] == "warning" and line["mechanism"] == "CURVE"
        assert line["client_key"] == intruder_key and line["address"] == "127.0.0.1"
        assert wait_until(lambda: _rejected_total(server.metrics_url) == 3, 5)
        rejected = _rejected_total(server.metrics_url)
        # An allowed device is served and adds nothing to either.
        with Client(server.endpoint, server_public_key=keys / "server.key",
                    client_keys=keys / "camera.key_secret") as camera:
            assert camera.request([b"x"], budget_s=5.0, bundle="b", cut="c").frames[0] == b"x"
        assert _rejected_total(server.metrics_url) == rejected
        # Every attempt was counted, one line was logged (the rest within the minute).
        assert len(server.find("auth_rejected")) == 1
