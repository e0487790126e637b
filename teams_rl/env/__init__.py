"""The evolution environment: seeds, the action space and its prompts, rewrite parsing and screens, the reviewer,
``EvolutionEnv`` itself, how a stage builds it, and the dataset files synthesis writes."""
