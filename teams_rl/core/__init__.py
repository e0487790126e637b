"""The bottom layer: errors, recipes and their checks, the stage entry, run-folder names, atomic files, model
references, plotting and Markdown. Imports nothing else of teams_rl and nothing heavy at import time."""
