"""The computation-graph level: IR-to-IR passes (folding, fusion, elimination)."""
