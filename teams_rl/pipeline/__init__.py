"""``teams-rl run``: the whole method from one recipe (train-policy, synthesize, a random baseline, sft, evaluate,
push), each stage a subprocess writing into one run folder, skipped when finished and resumed when it crashed.

``plan`` decides what to run, ``validate`` parses every stage's command before any runs, ``state`` records what
finished, ``run`` runs it, ``report`` writes report.md/html.
"""
