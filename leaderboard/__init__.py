"""Leaderboard: lm_eval result folders in; tables, a static HTML page and plots out."""
