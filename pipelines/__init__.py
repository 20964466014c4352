"""Batch stages of movie-mlops: crawl, features, train, evaluate, rollout.

Each stage is a plain function (importable, testable) with a thin Typer CLI around it
(`python -m pipelines.<stage>`). Importing any module here has no side effects.
"""
