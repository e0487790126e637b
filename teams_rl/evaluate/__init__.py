"""Stage 4, evaluation: lm-eval base vs tuned (``lmeval``), dataset metrics (``metrics`` the maths,
``dataset_metrics`` the ``teams-rl metrics`` command), the membership-inference test (``privacy``), the paired
bootstrap ``intervals``, the policy-vs-random ``compare``, ``plots`` and the Markdown/terminal ``report``; ``run``
ties them into ``teams-rl evaluate``, from the inputs it checks before any model loads (``inputs``: the task folder,
the tuned model, the privacy rows)."""
