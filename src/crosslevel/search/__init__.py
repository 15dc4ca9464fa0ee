"""Cross-level search: the joint space, its objectives, the Optuna study and the report."""
