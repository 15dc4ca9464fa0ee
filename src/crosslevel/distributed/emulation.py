"""Network emulation for split-inference tests and benchmarks (Linux, root).

``EmulatedLink`` creates two network namespaces (device, edge) joined by a veth pair, on a
/30 of 10.213.0.0/16 that no interface here uses, and shapes both directions with the
``tbf`` queueing discipline (this kernel has no ``netem``). Delay and jitter come from a
small user-space TCP proxy in the edge namespace (``python -m
crosslevel.distributed.emulation proxy``) that holds every chunk for half the RTT each way;
an outage is the veth set down. Everything it created is removed on exit (deleting a
namespace deletes its veth end and kills nothing else); every process it starts is bounded
by a timeout and killed by its own pid. ``measure`` reports the rate and RTT actually
achieved, not the settings. Packet loss would need ``iptables`` (not installed here).

This module imports only the standard library so that the helpers start fast inside the
namespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

SUBNET = "10.213"
PROBE_PORT = 47001
_LINKS = itertools.count()  # tags stay unique when one process makes several links


def available() -> str | None:
    """None if namespaces can be made here, else the missing capability."""
    if os.geteuid() != 0:
        return "root (network namespaces)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the {tool!r} command (iproute2)"
    return None


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=20)


def _free_block() -> int:
    """A /30 block index whose addresses no interface here holds."""
    used = _sh("ip", "-o", "addr").stdout
    for block in range(1, 16000):
        if f"{SUBNET}.{block // 64}.{(block % 64) * 4 + 1}/" not in used:
            return block
    raise RuntimeError("no free 10.213.0.0/16 block")


@dataclass
class EmulatedLink:
    """Device and edge namespaces joined by a shaped veth pair (see the module docstring)."""

    rate_mbit: float
    rtt_ms: float = 0.0
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}x{next(_LINKS)}")
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    proxied: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not 0.01 <= self.rate_mbit <= 10000 or not 0 <= self.rtt_ms <= 5000:
            raise ValueError("rate must be 0.01..10000 Mbit/s and RTT 0..5000 ms")
        self.device_ns = f"clx-dev-{self.tag}"
        self.edge_ns = f"clx-edge-{self.tag}"
        self.veth = (f"clxd{self.tag}", f"clxe{self.tag}")
        if len(self.veth[0]) > 15:  # IFNAMSIZ - 1
            raise ValueError(f"tag {self.tag!r} is too long for an interface name")
        block = _free_block()
        base = f"{SUBNET}.{block // 64}.{(block % 64) * 4}"
        prefix = base.rsplit(".", 1)[0]
        last = int(base.rsplit(".", 1)[1])
        self.device_ip = f"{prefix}.{last + 1}"
        self.edge_ip = f"{prefix}.{last + 2}"

    # ----- lifetime ----------------------------------------------------------------
    def __enter__(self) -> EmulatedLink:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create(self) -> None:
        d, e = self.veth
        _sh("ip", "netns", "add", self.device_ns)
        _sh("ip", "netns", "add", self.edge_ns)
        _sh("ip", "link", "add", d, "type", "veth", "peer", "name", e)
        _sh("ip", "link", "set", d, "netns", self.device_ns)
        _sh("ip", "link", "set", e, "netns", self.edge_ns)
        for ns, dev, ip in ((self.device_ns, d, self.device_ip), (self.edge_ns, e, self.edge_ip)):
            self.ns(ns, "ip", "addr", "add", f"{ip}/30", "dev", dev)
            self.ns(ns, "ip", "link", "set", dev, "up")
            self.ns(ns, "ip", "link", "set", "lo", "up")
            self._shape(ns, dev)

    def _shape(self, ns: str, dev: str) -> None:
        # tbf: burst of at least one MTU-sized packet plus 1 ms at the rate.
        burst = max(1600, int(self.rate_mbit * 1e6 / 8 / 1000))
        self.ns(ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                f"{self.rate_mbit}mbit", "burst", str(burst), "latency", "200ms")  # fmt: skip

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        self.procs.clear()
        for ns in (self.device_ns, self.edge_ns):
            _sh("ip", "netns", "delete", ns, check=False)
        # If creation failed before the veth moved into a namespace, it is still here.
        _sh("ip", "link", "delete", self.veth[0], check=False)

    # ----- running things ----------------------------------------------------------
    def ns(self, ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return _sh("ip", "netns", "exec", ns, *argv)

    def start(self, ns: str, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start a process inside namespace ``ns``; killed (by pid) on close."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.procs.append(proc)
        return proc

    def set_up(self, up: bool) -> None:
        """Outage on/off: the device's veth end down or up."""
        self.ns(self.device_ns, "ip", "link", "set", self.veth[0], "up" if up else "down")

    def edge_address(self, port: int) -> str:
        """Where the device reaches ``port`` on the edge: through the delay proxy if any."""
        if self.rtt_ms <= 0:
            return f"{self.edge_ip}:{port}"
        proxy_port = port + 1
        if port in self.proxied:  # one proxy per port, reused by later servers on it
            return f"{self.edge_ip}:{proxy_port}"
        self.proxied.add(port)
        argv = [sys.executable, "-m", __name__, "proxy", self.edge_ip, str(proxy_port)]
        self.start(self.edge_ns, [*argv, "127.0.0.1", str(port), str(self.rtt_ms)])
        _wait_listening(self, self.edge_ns, self.edge_ip, proxy_port)
        return f"{self.edge_ip}:{proxy_port}"

    def measure(self, nbytes: int = 400_000, pings: int = 10) -> dict[str, Any]:
        """Rate (Mbit/s) and RTT (ms) achieved from device to edge, measured."""
        port = PROBE_PORT
        self.start(self.edge_ns, [sys.executable, "-m", __name__, "sink", "0.0.0.0", str(port)])
        _wait_listening(self, self.edge_ns, "127.0.0.1", port)
        address = self.edge_address(port)
        host, p = address.rsplit(":", 1)
        out = self.ns(self.device_ns, sys.executable, "-m", __name__, "probe", host, p,
                      str(nbytes), str(pings))  # fmt: skip
        result: dict[str, Any] = json.loads(out.stdout)
        result.update(set_rate_mbit=self.rate_mbit, set_rtt_ms=self.rtt_ms)
        return result


def _wait_listening(
    link: EmulatedLink, ns: str, host: str, port: int, timeout_s: float = 10
) -> None:
    code = (
        "import socket,sys,time\n"
        f"end=time.time()+{timeout_s}\n"
        "while time.time()<end:\n"
        f"  try: socket.create_connection(({host!r},{port}),0.5).close(); sys.exit(0)\n"
        "  except OSError: time.sleep(0.05)\n"
        "sys.exit(1)\n"
    )
    link.ns(ns, sys.executable, "-c", code)


CPU_CGROUP = "/sys/fs/cgroup/cpu"


class CpuQuota:
    """A cgroup v1 CPU quota: processes added run at ``fraction`` of one core.

    The period is as short as the kernel allows (its minimum quota is 1 ms: period =
    max(1 ms, 1 ms / fraction)) so that a slowed process loses its time in small, even
    slices (the default 100 ms period stalls it for tens of milliseconds at a time). The
    group is removed on exit; processes still in it go back to the root group first.
    """

    def __init__(self, fraction: float, tag: str | None = None) -> None:
        if not 0.01 <= fraction <= 1.0:
            raise ValueError("fraction must be in 0.01..1")
        self.fraction = fraction
        self.path = f"{CPU_CGROUP}/clx-{tag or os.getpid()}"

    def __enter__(self) -> CpuQuota:
        os.makedirs(self.path, exist_ok=False)
        period = max(1000, round(1000 / self.fraction))
        try:
            self._write("cpu.cfs_period_us", str(period))
            self._write("cpu.cfs_quota_us", str(round(period * self.fraction)))
        except OSError:
            os.rmdir(self.path)
            raise
        return self

    def _write(self, name: str, value: str) -> None:
        with open(f"{self.path}/{name}", "w") as f:
            f.write(value)

    def add(self, pid: int) -> None:
        self._write("cgroup.procs", str(pid))

    def __exit__(self, *exc: object) -> None:
        pids: list[str] = []
        with contextlib.suppress(OSError), open(f"{self.path}/cgroup.procs") as f:
            pids = f.read().split()
        for pid in pids:
            with contextlib.suppress(OSError), open(f"{CPU_CGROUP}/cgroup.procs", "w") as f:
                f.write(pid)
        with contextlib.suppress(OSError):
            os.rmdir(self.path)


def measured_slowdown(
    fraction: float, iterations: int = 2_000_000, tag: str | None = None, timeout_s: float = 120.0
) -> float:
    """How many times slower a CPU-bound Python loop runs under ``CpuQuota(fraction)``
    than free (the free run is the best of two, so other load only lowers the ratio)."""
    code = f"import time\nt=time.perf_counter();s=0\nfor i in range({iterations}): s+=i\n"
    code += "print(time.perf_counter()-t)"
    base = min(
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout) for _ in range(2)
    )  # fmt: skip
    with CpuQuota(fraction, tag) as quota:
        waiting = "import sys\nsys.stdin.readline()\n" + code  # joins the group, then runs
        proc = subprocess.Popen([sys.executable, "-c", waiting], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            quota.add(proc.pid)
            out, _ = proc.communicate("\n", timeout=timeout_s)
        finally:
            proc.kill()  # by its own pid; a no-op once it has exited
            proc.wait()
    return float(out) / base


# =============================================================================== helpers
def _sink(host: str, port: int) -> None:
    """Echo small messages; for a message starting with b'N' read N bytes, answer b'K'."""
    srv = socket.create_server((host, port), reuse_port=True)
    while True:
        conn, _ = srv.accept()
        with conn:
            _serve_probe(conn)


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    chunks = []
    while n > 0:
        data = conn.recv(min(n, 1 << 16))
        if not data:
            raise ConnectionError("closed")
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


def _serve_probe(conn: socket.socket) -> None:
    with contextlib.suppress(ConnectionError):
        while True:
            head = _recv_exact(conn, 9)
            kind, size = head[:1], int.from_bytes(head[1:], "big")
            if size > 1 << 28:
                return
            _recv_exact(conn, size)
            conn.sendall(b"K" if kind == b"N" else b"P")


def _probe(host: str, port: int, nbytes: int, pings: int) -> dict[str, float]:
    conn = socket.create_connection((host, port), timeout=30)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rtts = []
    for _ in range(pings):
        start = time.perf_counter()
        conn.sendall(b"P" + (1).to_bytes(8, "big") + b"x")
        _recv_exact(conn, 1)
        rtts.append((time.perf_counter() - start) * 1e3)
    rtt = sorted(rtts)[len(rtts) // 2]
    start = time.perf_counter()
    conn.sendall(b"N" + nbytes.to_bytes(8, "big") + bytes(nbytes))
    _recv_exact(conn, 1)
    elapsed = time.perf_counter() - start - rtt / 1e3
    conn.close()
    return {"rate_mbit": nbytes * 8 / max(elapsed, 1e-6) / 1e6, "rtt_ms": rtt}


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    """Forward bytes, each chunk released ``delay_s`` after it arrived (order kept)."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def pump() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                writer.close()
                return
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            writer.write(data)
            await writer.drain()

    task = asyncio.ensure_future(pump())
    try:
        while True:
            data = await reader.read(1 << 16)
            await queue.put((time.monotonic() + delay_s, data))
            if not data:
                break
    finally:  # a reset connection ends the pump too, so the other side sees EOF
        queue.put_nowait((time.monotonic(), b""))
        with contextlib.suppress(Exception):
            await task


async def _proxy(host: str, port: int, to_host: str, to_port: int, rtt_ms: float) -> None:
    half = rtt_ms / 2000.0

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(to_host, to_port)
        except OSError:
            w.close()
            return
        await asyncio.gather(_pipe(r, uw, half), _pipe(ur, w, half), return_exceptions=True)

    server = await asyncio.start_server(handle, host, port)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> None:
    if argv[0] == "sink":
        _sink(argv[1], int(argv[2]))
    elif argv[0] == "probe":
        print(json.dumps(_probe(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))))
    elif argv[0] == "proxy":
        asyncio.run(_proxy(argv[1], int(argv[2]), argv[3], int(argv[4]), float(argv[5])))
    else:
        raise SystemExit(f"unknown helper {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
