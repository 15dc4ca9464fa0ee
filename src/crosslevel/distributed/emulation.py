"""Network emulation for split-inference tests and benchmarks (Linux, root).

``EmulatedLink`` creates two network namespaces (device, edge) joined by a veth pair, on a
/30 of 10.213.0.0/16 that no interface here uses, and shapes both directions with the
``tbf`` queueing discipline (this kernel has no ``netem``). Delay and jitter come from a
small user-space TCP proxy in the edge namespace (``python -m
crosslevel.distributed.emulation proxy``) that holds every chunk for half the RTT each way,
plus or minus half the jitter (uniform, seeded; a TCP stream keeps its order, so a chunk
never overtakes the one before it). Packet loss is an ``iptables`` rule in each namespace
(``-o VETH -m statistic --mode random --probability P -j DROP``: both directions lose P);
an outage is the veth set down. Everything it created is removed on exit (deleting a
namespace deletes its veth end, its qdisc and its iptables rules, and kills nothing else);
every process it starts is bounded by a timeout and killed by its own pid. ``measure``
reports the rate and the RTT distribution actually achieved, ``loss`` the packets the
rules actually dropped over those the veth sent (kernel counters), not the settings.

This module imports only the standard library so that the helpers start fast inside the
namespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import socket
import statistics
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


def loss_available() -> str | None:
    """None if ``EmulatedLink(loss=...)`` works here, else the missing capability."""
    missing = available()
    if missing is None and shutil.which("iptables") is None:
        return "the 'iptables' command (packet loss)"
    return missing


def _sh(*argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout)


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
    jitter_ms: float = 0.0
    loss: float = 0.0
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}x{next(_LINKS)}")
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    proxied: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not 0.01 <= self.rate_mbit <= 10000 or not 0 <= self.rtt_ms <= 5000:
            raise ValueError("rate must be 0.01..10000 Mbit/s and RTT 0..5000 ms")
        if not 0 <= self.jitter_ms <= self.rtt_ms or not 0 <= self.loss < 0.5:
            raise ValueError("jitter must be 0..RTT ms and loss 0..0.5")
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
            self._shape(ns, dev, "add")
            # One skb per wire packet (no TCP segmentation offload), so that the loss rule
            # drops packets, not 64 KiB super-packets, and the counters count packets.
            self.ns(ns, "ip", "link", "set", dev, "gso_max_segs", "1")
            if self.loss > 0:
                self.ns(ns, "iptables", "-A", "OUTPUT", "-o", dev, "-m", "statistic", "--mode",
                        "random", "--probability", f"{self.loss:.6f}", "-j", "DROP")  # fmt: skip

    def _shape(self, ns: str, dev: str, verb: str) -> None:
        # tbf: burst of at least one MTU-sized packet plus 1 ms at the rate.
        burst = max(1600, int(self.rate_mbit * 1e6 / 8 / 1000))
        self.ns(ns, "tc", "qdisc", verb, "dev", dev, "root", "tbf", "rate",
                f"{self.rate_mbit}mbit", "burst", str(burst), "latency", "200ms")  # fmt: skip

    def set_rate(self, rate_mbit: float) -> None:
        """Change the link rate of both directions while processes use it (a throttle)."""
        if not 0.01 <= rate_mbit <= 10000:
            raise ValueError("rate must be 0.01..10000 Mbit/s")
        self.rate_mbit = rate_mbit
        for ns, dev in ((self.device_ns, self.veth[0]), (self.edge_ns, self.veth[1])):
            self._shape(ns, dev, "change")

    def loss_counts(self) -> dict[str, Any]:
        """Packets each side's veth sent and its loss rule dropped (kernel counters), and
        the loss rate achieved over both directions."""
        sent = dropped = 0
        for ns, dev in ((self.device_ns, self.veth[0]), (self.edge_ns, self.veth[1])):
            stats = json.loads(self.ns(ns, "ip", "-s", "-j", "link", "show", dev).stdout)
            sent += int(stats[0]["stats64"]["tx"]["packets"])
            if self.loss > 0:
                rules = self.ns(ns, "iptables", "-L", "OUTPUT", "-v", "-x", "-n").stdout
                dropped += sum(int(line.split()[0]) for line in rules.splitlines()
                               if "DROP" in line and "statistic" in line)  # fmt: skip
        total = sent + dropped
        return {"sent": sent, "dropped": dropped, "loss": dropped / total if total else 0.0,
                "set_loss": self.loss, "label": "measured: kernel counters"}  # fmt: skip

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
    def ns(self, ns: str, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return _sh("ip", "netns", "exec", ns, *argv, timeout=timeout)

    def start(
        self, ns: str, argv: list[str], quota: CpuQuota | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a process inside namespace ``ns`` (and CPU ``quota`` from its start);
        killed (by pid) on close."""
        full = ["ip", "netns", "exec", ns, *argv]
        if quota is not None:  # outside the namespace: `ip netns exec` remounts /sys
            full = quota.wrap(full)
        pipe = subprocess.PIPE
        proc = subprocess.Popen(full, stdin=pipe, stdout=pipe, stderr=pipe)
        self.procs.append(proc)
        return proc

    def set_up(self, up: bool) -> None:
        """Outage on/off: the device's veth end down or up."""
        self.ns(self.device_ns, "ip", "link", "set", self.veth[0], "up" if up else "down")

    def edge_address(self, port: int) -> str:
        """Where the device reaches ``port`` on the edge (through the delay proxy if any),
        once something listens on it there (up to 60 s: a server may still be starting)."""
        _wait_listening(self, self.edge_ns, "127.0.0.1", port, timeout_s=60)
        if self.rtt_ms <= 0:
            return f"{self.edge_ip}:{port}"
        proxy_port = port + 1
        if port in self.proxied:  # one proxy per port, reused by later servers on it
            return f"{self.edge_ip}:{proxy_port}"
        self.proxied.add(port)
        argv = [sys.executable, "-m", __name__, "proxy", self.edge_ip, str(proxy_port)]
        argv += ["127.0.0.1", str(port), str(self.rtt_ms), str(self.jitter_ms)]
        self.start(self.edge_ns, argv)
        _wait_listening(self, self.edge_ns, self.edge_ip, proxy_port)
        return f"{self.edge_ip}:{proxy_port}"

    def measure(self, nbytes: int = 400_000, pings: int = 10) -> dict[str, Any]:
        """Rate (Mbit/s) and RTT (ms: median, p10, p90, standard deviation over ``pings``)
        achieved from device to edge, measured."""
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
    link.ns(ns, sys.executable, "-c", code, timeout=timeout_s + 10)


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

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this group from its first instruction (a shell joins the
        group, then execs it), so that no start-up work escapes the quota."""
        join = f'echo $$ > {self.path}/cgroup.procs && exec "$@"'
        return ["sh", "-c", join, "sh", *argv]

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
    rtts.sort()
    rtt = rtts[len(rtts) // 2]
    start = time.perf_counter()
    conn.sendall(b"N" + nbytes.to_bytes(8, "big") + bytes(nbytes))
    _recv_exact(conn, 1)
    elapsed = time.perf_counter() - start - rtt / 1e3
    conn.close()
    return {
        "rate_mbit": nbytes * 8 / max(elapsed, 1e-6) / 1e6,
        "rtt_ms": rtt,
        "rtt_p10_ms": rtts[len(rtts) // 10],
        "rtt_p90_ms": rtts[len(rtts) * 9 // 10],
        "rtt_std_ms": statistics.pstdev(rtts),
    }


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    delay_s: float,
    jitter_s: float,
    rng: random.Random,
) -> None:
    """Forward bytes, each chunk released ``delay_s`` (plus or minus ``jitter_s / 2``,
    uniform) after it arrived, never before the chunk ahead of it (order kept)."""
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
    due = 0.0
    try:
        while True:
            data = await reader.read(1 << 16)
            wait = max(0.0, delay_s + jitter_s * (rng.random() - 0.5))
            due = max(due, time.monotonic() + wait)
            await queue.put((due, data))
            if not data:
                break
    finally:  # a reset connection ends the pump too, so the other side sees EOF
        queue.put_nowait((time.monotonic(), b""))
        with contextlib.suppress(Exception):
            await task


async def _proxy(
    host: str, port: int, to_host: str, to_port: int, rtt_ms: float, jitter_ms: float
) -> None:
    half, jitter = rtt_ms / 2000.0, jitter_ms / 1000.0
    rng = random.Random(0)  # seeded: a run's delays repeat

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(to_host, to_port)
        except OSError:
            w.close()
            return
        await asyncio.gather(
            _pipe(r, uw, half, jitter, rng),
            _pipe(ur, w, half, jitter, rng),
            return_exceptions=True,
        )

    server = await asyncio.start_server(handle, host, port)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> None:
    if argv[0] == "sink":
        _sink(argv[1], int(argv[2]))
    elif argv[0] == "probe":
        print(json.dumps(_probe(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))))
    elif argv[0] == "proxy":
        numbers = (float(argv[5]), float(argv[6]))
        asyncio.run(_proxy(argv[1], int(argv[2]), argv[3], int(argv[4]), *numbers))
    else:
        raise SystemExit(f"unknown helper {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
