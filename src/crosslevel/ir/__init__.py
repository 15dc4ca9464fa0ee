"""The intermediate representation every level reads and writes, with its importers and exporters."""
