"""``teams-rl run``: the whole method from one recipe (train-policy, synthesize, a random baseline, sft, evaluate,
push), each stage a subprocess writing into one run folder, skipped when finished and resumed when it crashed.

``plan`` decides what to run, ``run`` runs it and keeps the record, ``report`` writes report.md and report.html.
"""

from teams_rl.pipeline.run import cli

__all__ = ["cli"]
