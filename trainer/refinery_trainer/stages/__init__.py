"""Stage workflows. Each module exposes `run(ctx: StageContext) -> dict[str, float]` (the metrics).

The registry of stage types lives in `refinery_trainer.cli` (modules are imported only when run).
"""
