"""Hardware-instruction level: model-specific C for a memory plan, built and verified."""
