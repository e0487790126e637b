"""Stage 2, synthesis: seeds evolved by a policy's actions, carried out and answered by the expert, into a dataset
with full lineage (``run``, the expert's screened answers and the rejected rows in ``answer``); the shards run as Ray
tasks (``distributed``) from the Ray-free split of the recipe and its budgets (``shards``); shards joined into one
dataset (``merge``); the summary tables (``tables``)."""
