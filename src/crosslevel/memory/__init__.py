"""The memory level: tensor lifetimes, arena planners, bounds."""
