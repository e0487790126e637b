"""Stage 4, evaluation: lm-eval base vs tuned (``lmeval``), dataset metrics (``metrics`` the maths,
``dataset_metrics`` the ``teams-rl metrics`` command), the membership-inference test (``privacy``), the paired
bootstrap ``intervals``, the policy-vs-random ``compare``, ``plots`` and the Markdown/terminal ``report``; ``run``
ties them into ``teams-rl evaluate``."""
