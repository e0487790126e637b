"""Stage 5, publishing: ``teams-rl push dataset|model`` (``push``) with cards rendered from templates (``cards``)
and the dataset's provenance: recipes, licence, lineage and roles (``provenance``)."""
