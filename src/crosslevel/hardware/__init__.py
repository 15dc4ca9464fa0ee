"""The hardware level: device catalogue and the calibrated cost model."""
