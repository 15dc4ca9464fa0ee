"""The built-in default of `crosslevel optimize`: a zoo model on offline data and a device
on which the unoptimized float model does not fit.

Why this device: the zoo models with offline data need 12 KiB of arena and 94 KiB of
weights in float32, so they fit every MCU with 256 KiB of SRAM and 1 MiB of flash and
there would be nothing to show. The STM32G031K8 (in the catalogue) is a real, common part
(Cortex-M0+, 8 KiB SRAM, 64 KiB flash): ``digits_cnn`` in float32 misses both limits
(12,288 B arena, 95,784 B of weights), while pruned, factorized or int8 variants fit.
"""

DEFAULT_MODEL = "digits_cnn"
DEFAULT_DATA = "digits"
DEFAULT_DEVICE = "stm32g031k8"  # looked up with hardware.devices.get_device when needed
