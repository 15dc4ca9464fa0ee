"""The model level: zoo architectures, data sets, quantization."""
