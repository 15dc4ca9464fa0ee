"""The IR every level reads and writes, with its importers and exporters."""
