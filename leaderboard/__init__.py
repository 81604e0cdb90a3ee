"""Leaderboard: lm_eval result folders in; tables, a static HTML page and plots out.

    collect.py   lm_eval output folders -> one tidy DataFrame (one row per model) + the runs behind it
    paired.py    paired bootstrap / permutation tests over logged per-document values (and BOLD group gaps)
    flips.py     flip rates: preference items whose preferred sentence changed, per direction
    degeneration.py  the flag: toxicity or bias "gains" of a model that may just be broken
    columns.py   which metrics the page shows, their labels and better directions
    plots.py     PNG plots; render.py  CSV, Markdown, HTML (templates/leaderboard.html.j2)
    sitedir.py   the site folder: built beside it, swapped in atomically, under a lock
    cli.py       `compfair leaderboard` and `build()`, the Python entry point
    compare.py   `compfair compare`: GPT-2 / DialoGPT / BlenderBot baseline presets
"""
