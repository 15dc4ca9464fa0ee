"""The device and link catalogue: built-in entries, user overrides, validation errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from rich.console import Console

from crosslevel.errors import UsageError
from crosslevel.hardware.devices import (
    DEVICE_FORMAT,
    KINDS,
    LINK_FORMAT,
    catalogue_dict,
    devices_dict,
    devices_table,
    get_device,
    get_link,
    links_dict,
    links_table,
    load_devices,
    load_links,
    probe_host,
)

REQUIRED_DEVICES = {
    "stm32f746": "mcu",
    "stm32h743": "mcu",
    "nrf52840": "mcu",
    "esp32s3": "mcu",
    "rpi4": "sbc",
    "rpi_zero_2w": "sbc",
    "jetson_nano": "edge",
    "snapdragon_8gen2_x3": "phone",
    "host": "host",
}
REQUIRED_LINKS = {"ble", "lora", "nbiot", "wifi", "lte", "5g", "ethernet"}


def _write(tmp_path: Path, doc: object, name: str = "extra.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def test_builtin_catalogue_has_every_required_device_with_a_source() -> None:
    devices = load_devices()
    for name, kind in REQUIRED_DEVICES.items():
        device = devices[name]
        assert device.kind == kind
        assert len(device.source) > 20, f"{name} needs a real source"
        assert device.macs_derivation, f"{name} must say how its peaks were derived"
        assert device.peak_int8_macs_per_s > 0 and device.peak_fp32_macs_per_s > 0
        assert device.memory_bytes > 0
        assert set(device.estimated) | set(device.measured) <= set(device.to_dict())
    assert all(d.kind in KINDS for d in devices.values())
    # MCUs are sized by SRAM, everything else by DRAM.
    assert devices["nrf52840"].sram_bytes == 256 * 1024 and devices["nrf52840"].ram_bytes is None
    assert devices["rpi4"].ram_bytes is not None and devices["rpi4"].sram_bytes is None


def test_cortex_m7_peak_follows_its_derivation() -> None:
    m7 = get_device("stm32f746")
    assert m7.peak_int8_macs_per_s == 2 * m7.clock_hz  # SMLAD: 2 MAC/cycle
    assert m7.peak_fp32_macs_per_s == m7.clock_hz  # one VFMA.F32 per cycle


def test_host_is_probed_from_this_machine() -> None:
    host = get_device("host")
    probed = probe_host()
    assert host.cores == len(os.sched_getaffinity(0)) == probed["cores"]
    assert "cores" in host.measured and "memory_bandwidth_bytes_per_s" in host.measured
    if "clock_hz" in probed:
        assert host.clock_hz == probed["clock_hz"]
    unprobed = load_devices(probe=False)["host"]
    assert unprobed.source == host.source


def test_get_device_is_case_insensitive_and_lists_known_names() -> None:
    assert get_device("STM32F746").name == "stm32f746"
    with pytest.raises(UsageError) as err:
        get_device("arduino_uno")
    assert "arduino_uno" in str(err.value) and "nrf52840" in str(err.value)


def test_user_file_adds_and_overrides_devices(tmp_path: Path) -> None:
    new = {
        **get_device("stm32f746").to_dict(),
        "name": "my_board",
        "clock_hz": 100_000_000,
        "source": "my own measurements on the bench",
    }
    extra = _write(
        tmp_path,
        {
            "format": DEVICE_FORMAT,
            "devices": [new, {"name": "stm32f746", "clock_hz": 180_000_000}],
        },
    )
    devices = load_devices(extra)
    assert devices["my_board"].clock_hz == 100_000_000
    assert devices["my_board"].sram_bytes == get_device("stm32f746").sram_bytes
    # The override changes only the field it names; the rest stays built in.
    assert devices["stm32f746"].clock_hz == 180_000_000
    assert devices["stm32f746"].flash_bytes == 1024 * 1024
    assert get_device("my_board", devices).kind == "mcu"


def test_dict_form_reloads_as_a_user_file(tmp_path: Path) -> None:
    doc = devices_dict(load_devices())
    assert doc["format"] == DEVICE_FORMAT
    reloaded = load_devices(_write(tmp_path, json.loads(json.dumps(doc))))
    assert reloaded["rpi4"] == load_devices()["rpi4"]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[" * 100_000, "not valid JSON"),
        ({"format": "crosslevel.devices/2", "devices": []}, "expected 'crosslevel.devices/1'"),
        ({"format": DEVICE_FORMAT, "devices": {"a": 1}}, "must be a list of objects"),
        ({"format": DEVICE_FORMAT, "devices": [{"name": "x", "kind": "mcu"}]}, "missing field"),
        ({"format": DEVICE_FORMAT, "devices": [{"name": "rpi4", "kind": "toaster"}]}, "toaster"),
        ({"format": DEVICE_FORMAT, "devices": [{"name": "rpi4", "cores": -4}]}, "'cores'"),
        ({"format": DEVICE_FORMAT, "devices": [{"name": "rpi4", "cores": True}]}, "'cores'"),
        ({"format": DEVICE_FORMAT, "devices": [{"name": "rpi4", "cores": 2.5}]}, "'cores'"),
        ({"format": DEVICE_FORMAT, "devices": [{"name": "rpi4", "clock_hz": "fast"}]}, "clock_hz"),
        ({"format": DEVICE_FORMAT, "devices": [{"name": "rpi4", "clokc_hz": 1}]}, "clokc_hz"),
        ({"format": DEVICE_FORMAT, "devices": [{"name": "rpi4", "source": ""}]}, "'source'"),
        ({"format": DEVICE_FORMAT, "devices": [{"name": "rpi4", "ram_bytes": None}]},
         "sram_bytes (MCU) or ram_bytes"),
        ({"format": DEVICE_FORMAT, "devices": [{"name": "rpi4"}, {"name": "rpi4"}]},
         "more than once"),
        ({"format": DEVICE_FORMAT, "devices": [{"clock_hz": 1}]}, "non-empty string 'name'"),
    ],
)  # fmt: skip
def test_bad_device_file_gives_one_clear_error(tmp_path: Path, doc: object, message: str) -> None:
    path = _write(tmp_path, doc)
    with pytest.raises(UsageError) as err:
        load_devices(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_non_finite_numbers_are_refused(tmp_path: Path) -> None:
    text = json.dumps({"format": DEVICE_FORMAT, "devices": [{"name": "rpi4", "idle_power_w": 1}]})
    path = _write(tmp_path, text.replace("1}", "NaN}"))
    with pytest.raises(UsageError, match="idle_power_w"):
        load_devices(path)


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        load_devices(tmp_path / "nope.json")


def test_table_renders_every_device_and_link() -> None:
    console = Console(record=True, width=240)
    console.print(devices_table(load_devices()))
    console.print(links_table())
    text = console.export_text()
    for name in [*REQUIRED_DEVICES, *REQUIRED_LINKS]:
        assert name in text
    assert "(m)" in text and "*" in text  # measured and estimated fields are marked


def test_catalogue_json_holds_devices_and_links_and_reloads(tmp_path: Path) -> None:
    doc = catalogue_dict(load_devices())
    assert {d["name"] for d in doc["devices"]} >= set(REQUIRED_DEVICES)
    assert {link["name"] for link in doc["links"]} >= REQUIRED_LINKS
    assert load_devices(_write(tmp_path, doc))["esp32s3"] == get_device("esp32s3")


def test_links_load_with_sources_and_user_overrides(tmp_path: Path) -> None:
    links = load_links()
    assert REQUIRED_LINKS <= set(links)
    assert all(len(link.source) > 20 for link in links.values())
    assert links["lora"].bandwidth_up_bps < links["ble"].bandwidth_up_bps
    assert links["ble"].bandwidth_up_bps < links["wifi"].bandwidth_up_bps
    assert links["ethernet"].rtt_ms < links["wifi"].rtt_ms < links["lte"].rtt_ms
    wifi = get_link("WiFi")
    assert wifi.transfer_ms(1_000_000) > wifi.transfer_ms(1_000) > wifi.rtt_ms / 2
    extra = _write(tmp_path, {"format": LINK_FORMAT, "links": [{"name": "wifi", "rtt_ms": 40.0}]})
    assert load_links(extra)["wifi"].rtt_ms == 40.0
    assert links_dict(load_links(extra))["format"] == LINK_FORMAT
    with pytest.raises(UsageError, match="known links"):
        get_link("carrier_pigeon")
    bad = _write(tmp_path, {"format": LINK_FORMAT, "links": [{"name": "wifi", "rtt_ms": 0}]})
    with pytest.raises(UsageError, match="rtt_ms"):
        load_links(bad)
