"""`wofn experiment CONFIG`: the paper's ablation grid as one command (config, runner, report)."""
