"""The device and link catalogue: what each target can compute, hold and send.

The built-in catalogue ships as package data (``catalogue/devices.json`` with
``"format": "crosslevel.devices/1"`` and ``catalogue/links.json`` with
``"format": "crosslevel.links/1"``). A user file of the same format adds devices, or
overrides built-in ones by name: an entry whose name is already known may give only the
fields it changes (``{"name": "stm32f746", "clock_hz": 180000000}``); a new name must give
every required field. Every file is validated on load and a bad one ends in one
:class:`~crosslevel.errors.UsageError` naming the file, the entry and the field.

Peak MAC rates are per core (single-threaded inference, as TFLM runs and as the host
calibration measures); each entry says how its peaks were derived and which fields are
estimates, because a cost model is only as honest as its inputs. The ``host`` entry is
refreshed at load from this machine (``probe_host``) so it stays true on another machine.
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from rich.table import Table

from crosslevel.errors import UsageError

DEVICE_FORMAT = "crosslevel.devices/1"
LINK_FORMAT = "crosslevel.links/1"
KINDS = ("mcu", "sbc", "phone", "edge", "host")
MAX_CATALOGUE_BYTES = 4 * 1024 * 1024  # a catalogue is a few KiB; refuse absurd files early


@dataclass(frozen=True)
class Device:
    """One target. Sizes in bytes, rates per second, peaks for one core (see module doc)."""

    name: str
    kind: str
    cpu: str
    clock_hz: int
    cores: int
    sram_bytes: int | None
    ram_bytes: int | None
    flash_bytes: int | None
    peak_int8_macs_per_s: float
    peak_fp32_macs_per_s: float
    memory_bandwidth_bytes_per_s: float
    active_power_w: float
    idle_power_w: float
    source: str
    macs_derivation: str = ""
    memory_derivation: str = ""
    estimated: tuple[str, ...] = ()
    measured: tuple[str, ...] = ()

    @property
    def memory_bytes(self) -> int:
        """Working memory for activations: on-chip SRAM of an MCU, else DRAM."""
        return int(self.sram_bytes if self.sram_bytes is not None else self.ram_bytes or 0)

    def peak_macs_per_s(self, dtype: str) -> float:
        """Peak MAC rate of one core for ``"int8"`` or ``"float32"`` arithmetic."""
        return self.peak_int8_macs_per_s if dtype == "int8" else self.peak_fp32_macs_per_s

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["estimated"] = list(self.estimated)
        data["measured"] = list(self.measured)
        return data


@dataclass(frozen=True)
class Link:
    """A network link between device, edge and cloud (typical sustained rates)."""

    name: str
    bandwidth_up_bps: float
    bandwidth_down_bps: float
    rtt_ms: float
    source: str
    peak_bps: float | None = None

    def transfer_ms(self, nbytes: int, up: bool = True) -> float:
        """One-way time to send ``nbytes``: serialization at the typical rate + half an RTT."""
        rate = self.bandwidth_up_bps if up else self.bandwidth_down_bps
        return nbytes * 8 / rate * 1000.0 + self.rtt_ms / 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- schema
# field name -> (accepted kinds of value, nullable). Numbers must be finite and > 0.
_INT, _NUM, _STR, _LIST = "int", "number", "string", "list of strings"
_DEVICE_FIELDS: dict[str, tuple[str, bool]] = {
    "name": (_STR, False),
    "kind": (_STR, False),
    "cpu": (_STR, False),
    "clock_hz": (_INT, False),
    "cores": (_INT, False),
    "sram_bytes": (_INT, True),
    "ram_bytes": (_INT, True),
    "flash_bytes": (_INT, True),
    "peak_int8_macs_per_s": (_NUM, False),
    "peak_fp32_macs_per_s": (_NUM, False),
    "memory_bandwidth_bytes_per_s": (_NUM, False),
    "active_power_w": (_NUM, False),
    "idle_power_w": (_NUM, False),
    "source": (_STR, False),
}
_DEVICE_OPTIONAL: dict[str, tuple[str, bool]] = {
    "macs_derivation": (_STR, False),
    "memory_derivation": (_STR, False),
    "estimated": (_LIST, False),
    "measured": (_LIST, False),
    "notes": (_STR, False),
}
_LINK_FIELDS: dict[str, tuple[str, bool]] = {
    "name": (_STR, False),
    "bandwidth_up_bps": (_NUM, False),
    "bandwidth_down_bps": (_NUM, False),
    "rtt_ms": (_NUM, False),
    "source": (_STR, False),
}
_LINK_OPTIONAL: dict[str, tuple[str, bool]] = {"peak_bps": (_NUM, True), "notes": (_STR, False)}


def _check_value(where: str, key: str, value: Any, kind: str, nullable: bool) -> None:
    if value is None:
        if not nullable:
            raise UsageError(f"{where}: field {key!r} must not be null")
        return
    if kind == _STR:
        if not isinstance(value, str) or not value.strip():
            raise UsageError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
    elif kind == _LIST:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"{where}: field {key!r} must be a list of strings")
    else:
        # bool is an int in Python; a JSON true is never a size or a rate.
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if kind == _INT:
            ok = ok and float(value).is_integer()
        if not ok or not math.isfinite(float(value)) or value <= 0:
            raise UsageError(
                f"{where}: field {key!r} must be a positive finite {kind}, got {value!r}"
            )


def _check_entry(
    where: str,
    entry: dict[str, Any],
    required: dict[str, tuple[str, bool]],
    optional: dict[str, tuple[str, bool]],
) -> None:
    allowed = {**required, **optional}
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise UsageError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    missing = [k for k in required if k not in entry]
    if missing:
        raise UsageError(f"{where}: missing field(s) {missing}")
    for key, value in entry.items():
        kind, nullable = allowed[key]
        _check_value(where, key, value, kind, nullable)


def _check_device(where: str, entry: dict[str, Any]) -> None:
    _check_entry(where, entry, _DEVICE_FIELDS, _DEVICE_OPTIONAL)
    if entry["kind"] not in KINDS:
        raise UsageError(f"{where}: kind {entry['kind']!r} is not one of {list(KINDS)}")
    if entry["sram_bytes"] is None and entry["ram_bytes"] is None:
        raise UsageError(f"{where}: give sram_bytes (MCU) or ram_bytes (DRAM device)")
    bad = [f for f in (*entry.get("estimated", []), *entry.get("measured", [])) if f not in entry]
    if bad:
        raise UsageError(f"{where}: 'estimated'/'measured' name unknown field(s) {bad}")


def _read_json(path: Path, what: str) -> Any:
    """Read one JSON document; every failure becomes one UsageError naming the file."""
    try:
        if Path(path).stat().st_size > MAX_CATALOGUE_BYTES:
            raise UsageError(f"{what} file {path} is larger than the 4 MiB limit")
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, deep nesting
        raise UsageError(f"{what} file {path} is not valid JSON: {exc}") from None


def _entries(doc: Any, path: Path, fmt: str, key: str) -> list[dict[str, Any]]:
    if not isinstance(doc, dict):
        raise UsageError(f'{path}: expected a JSON object with "format": "{fmt}"')
    if doc.get("format") != fmt:
        raise UsageError(f'{path}: "format" is {doc.get("format")!r}, expected {fmt!r}')
    items = doc.get(key)
    if not isinstance(items, list) or not all(isinstance(e, dict) for e in items):
        raise UsageError(f"{path}: {key!r} must be a list of objects")
    names = [e.get("name") for e in items]
    dupes = sorted({str(n) for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"{path}: {key} named more than once: {dupes}")
    return items


def _device_from(entry: dict[str, Any]) -> Device:
    data = {k: v for k, v in entry.items() if k != "notes"}
    for key in ("clock_hz", "cores", "sram_bytes", "ram_bytes", "flash_bytes"):
        if data.get(key) is not None:
            data[key] = int(data[key])
    data["estimated"] = tuple(data.get("estimated", ()))
    data["measured"] = tuple(data.get("measured", ()))
    return Device(**data)


def _builtin(name: str) -> Path:
    return Path(str(resources.files("crosslevel.hardware").joinpath("catalogue", name)))


# ----------------------------------------------------------------------------- host probe
# (int8 MACs, fp32 MACs) per cycle per core, by the widest SIMD the CPU reports.
# x86: two FMA pipes of the vector width; int8 via VPDPBUSD (VNNI) or VPMADDUBSW (AVX2).
# Arm: four 128-bit pipes on big cores is too optimistic in general, so assume two.
_SIMD_PER_CYCLE: list[tuple[str, int, int]] = [
    ("avx512_vnni", 128, 32),
    ("avx512f", 64, 32),
    ("avx2", 64, 16),
    ("avx", 16, 8),
    ("asimddp", 32, 8),  # Arm SDOT: 16 int8 MACs per 128-bit instruction, two pipes
    ("asimd", 16, 8),
]


def _cpuinfo() -> dict[str, str]:
    """First-processor fields of /proc/cpuinfo ({} where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if info:
                break
            continue
        key, _, value = line.partition(":")
        info.setdefault(key.strip().lower(), value.strip())
    return info


def probe_host() -> dict[str, Any]:
    """Fields of the ``host`` entry read off this machine (only those it could read).

    Cores come from the CPU affinity mask, RAM from sysconf, the clock from /proc/cpuinfo,
    and the peaks from the SIMD flags x clock (table above). Memory bandwidth is not
    re-measured here (that takes a benchmark); the catalogue keeps its measured value.
    """
    found: dict[str, Any] = {"cores": len(os.sched_getaffinity(0))}
    try:
        found["ram_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        pass
    info = _cpuinfo()
    model = info.get("model name") or info.get("hardware") or platform.processor()
    flags = set((info.get("flags") or info.get("features") or "").split())
    mhz = info.get("cpu mhz")
    clock_hz = int(float(mhz) * 1e6) if mhz and mhz.replace(".", "", 1).isdigit() else None
    simd = next((entry for entry in _SIMD_PER_CYCLE if entry[0] in flags), None)
    if model:
        isa = f"{platform.machine()} {simd[0].upper()}" if simd else platform.machine()
        found["cpu"] = f"{model} ({isa}; read from /proc/cpuinfo)"
    if clock_hz:
        found["clock_hz"] = clock_hz
        if simd:
            found["peak_int8_macs_per_s"] = float(simd[1] * clock_hz)
            found["peak_fp32_macs_per_s"] = float(simd[2] * clock_hz)
    return found


def _refresh_host(entry: dict[str, Any]) -> dict[str, Any]:
    probed = probe_host()
    merged = {**entry, **probed}
    measured = set(entry.get("measured", [])) | {
        k for k in probed if k not in ("peak_int8_macs_per_s", "peak_fp32_macs_per_s")
    }
    merged["measured"] = sorted(measured)
    return merged


# ----------------------------------------------------------------------------- loading
def _load_device_entries(path: Path) -> list[dict[str, Any]]:
    return _entries(_read_json(path, "device catalogue"), path, DEVICE_FORMAT, "devices")


def load_devices(extra: Path | None = None, probe: bool = True) -> dict[str, Device]:
    """The built-in devices, the host refreshed from this machine, then ``extra``'s.

    An ``extra`` entry with a known name overrides only the fields it gives; a new name
    must be complete. Raises UsageError for a bad file, naming file, entry and field.
    """
    builtin_path = _builtin("devices.json")
    merged: dict[str, dict[str, Any]] = {}
    for entry in _load_device_entries(builtin_path):
        if probe and entry.get("name") == "host":
            entry = _refresh_host(entry)
        merged[str(entry.get("name"))] = entry
    sources = {name: builtin_path for name in merged}
    if extra is not None:
        for entry in _load_device_entries(Path(extra)):
            name = entry.get("name")
            if not isinstance(name, str) or not name.strip():
                raise UsageError(f"{extra}: every device needs a non-empty string 'name'")
            merged[name] = {**merged.get(name, {}), **entry}
            sources[name] = Path(extra)
    devices: dict[str, Device] = {}
    for name, entry in merged.items():
        _check_device(f"{sources[name]}: device {name!r}", entry)
        devices[name] = _device_from(entry)
    return devices


def load_links(extra: Path | None = None) -> dict[str, Link]:
    """The built-in links, then ``extra``'s (same merge rules as ``load_devices``)."""
    merged: dict[str, dict[str, Any]] = {}
    sources: dict[str, Path] = {}
    for path in [_builtin("links.json"), *([Path(extra)] if extra is not None else [])]:
        for entry in _entries(_read_json(path, "link catalogue"), path, LINK_FORMAT, "links"):
            name = entry.get("name")
            if not isinstance(name, str) or not name.strip():
                raise UsageError(f"{path}: every link needs a non-empty string 'name'")
            merged[name] = {**merged.get(name, {}), **entry}
            sources[name] = path
    links: dict[str, Link] = {}
    for name, entry in merged.items():
        _check_entry(f"{sources[name]}: link {name!r}", entry, _LINK_FIELDS, _LINK_OPTIONAL)
        links[name] = Link(**{k: v for k, v in entry.items() if k != "notes"})
    return links


def _lookup(what: str, name: str, known: dict[str, Any]) -> Any:
    if name in known:
        return known[name]
    folded = {k.lower(): v for k, v in known.items()}
    if name.lower() in folded:
        return folded[name.lower()]
    raise UsageError(f"unknown {what} {name!r}; known {what}s: {', '.join(sorted(known))}")


def get_device(name: str, devices: dict[str, Device] | None = None) -> Device:
    """The device called ``name`` (case-insensitive); UsageError lists the known names."""
    return _lookup("device", name, devices if devices is not None else load_devices())  # type: ignore[no-any-return]


def get_link(name: str, links: dict[str, Link] | None = None) -> Link:
    """The link called ``name`` (case-insensitive); UsageError lists the known names."""
    return _lookup("link", name, links if links is not None else load_links())  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- rendering
def _size(nbytes: int | None) -> str:
    if nbytes is None:
        return "-"
    if nbytes >= 1024**3:
        return f"{nbytes / 1024**3:.1f} GiB"
    if nbytes >= 1024**2:
        return f"{nbytes / 1024**2:.1f} MiB"
    return f"{nbytes / 1024:.0f} KiB"


def _mark(device: Device, key: str, text: str) -> str:
    """Suffix a value with * when estimated and (m) when measured on this machine."""
    if key in device.measured:
        return f"{text} (m)"
    if key in device.estimated:
        return f"{text}*"
    return text


def devices_table(devices: dict[str, Device] | list[Device]) -> Table:
    """A Rich table of the catalogue (``crosslevel devices``)."""
    rows = list(devices.values()) if isinstance(devices, dict) else list(devices)
    table = Table(
        title="Device catalogue",
        caption="peaks per core; * estimate (see --json for derivations and sources); "
        "(m) measured on this machine",
    )
    for col in ("name", "kind", "cpu", "clock", "cores", "SRAM/RAM", "flash"):
        table.add_column(col, overflow="fold")
    for col in ("int8 GMAC/s", "fp32 GMAC/s", "mem GB/s", "active W", "idle W"):
        table.add_column(col, justify="right")
    for d in rows:
        memory = _size(d.sram_bytes) + " SRAM" if d.sram_bytes is not None else _size(d.ram_bytes)
        table.add_row(
            d.name,
            d.kind,
            d.cpu.split(",")[0],
            _mark(d, "clock_hz", f"{d.clock_hz / 1e6:.0f} MHz"),
            _mark(d, "cores", str(d.cores)),
            _mark(d, "ram_bytes", memory),
            _size(d.flash_bytes),
            _mark(d, "peak_int8_macs_per_s", f"{d.peak_int8_macs_per_s / 1e9:.3g}"),
            _mark(d, "peak_fp32_macs_per_s", f"{d.peak_fp32_macs_per_s / 1e9:.3g}"),
            _mark(
                d,
                "memory_bandwidth_bytes_per_s",
                f"{d.memory_bandwidth_bytes_per_s / 1e9:.3g}",
            ),
            _mark(d, "active_power_w", f"{d.active_power_w:.3g}"),
            _mark(d, "idle_power_w", f"{d.idle_power_w:.2g}"),
        )
    return table


def devices_dict(devices: dict[str, Device] | list[Device]) -> dict[str, Any]:
    """The catalogue as a ``crosslevel.devices/1`` document (``crosslevel devices --json``)."""
    rows = list(devices.values()) if isinstance(devices, dict) else list(devices)
    return {"format": DEVICE_FORMAT, "devices": [d.to_dict() for d in rows]}


def links_dict(links: dict[str, Link] | list[Link]) -> dict[str, Any]:
    """The links as a ``crosslevel.links/1`` document."""
    rows = list(links.values()) if isinstance(links, dict) else list(links)
    return {"format": LINK_FORMAT, "links": [link.to_dict() for link in rows]}


def catalogue_dict(
    devices: dict[str, Device] | list[Device], links: dict[str, Link] | None = None
) -> dict[str, Any]:
    """Devices and links in one document (``crosslevel devices --json``).

    It is a valid ``crosslevel.devices/1`` file (loaders ignore the extra ``links`` key),
    so a user can save it, edit it and pass it back with ``--file``.
    """
    doc = devices_dict(devices)
    doc["links"] = links_dict(links if links is not None else load_links())["links"]
    return doc


def links_table(links: dict[str, Link] | list[Link] | None = None) -> Table:
    """A Rich table of the network links."""
    known = load_links() if links is None else links
    rows = list(known.values()) if isinstance(known, dict) else list(known)
    table = Table(title="Network links", caption="typical sustained rates; see --json for sources")
    table.add_column("name")
    for col in ("up Mbit/s", "down Mbit/s", "peak Mbit/s", "RTT ms"):
        table.add_column(col, justify="right")
    for link in rows:
        table.add_row(
            link.name,
            f"{link.bandwidth_up_bps / 1e6:.3g}",
            f"{link.bandwidth_down_bps / 1e6:.3g}",
            "-" if link.peak_bps is None else f"{link.peak_bps / 1e6:.3g}",
            f"{link.rtt_ms:g}",
        )
    return table


__all__ = [
    "DEVICE_FORMAT",
    "catalogue_dict",
    "links_table",
    "KINDS",
    "LINK_FORMAT",
    "Device",
    "Link",
    "devices_dict",
    "devices_table",
    "get_device",
    "get_link",
    "links_dict",
    "load_devices",
    "load_links",
    "probe_host",
]
