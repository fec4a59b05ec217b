"""Fuzzing every reader minivit has: `python -m tests.fuzz` (the long run, from the repository
root) and tests/fuzz/test_fuzz.py (a short run in the suite). See docs/reliability.md.

    formats.py          each format: seed files written by minivit, mutations, loaders, checks
    mutate.py           byte-level and structure-aware mutations
    runner.py           one case (format, seed, kind) made, loaded and judged
    __main__.py         the long run: workers under time and address-space limits, replay
    atheris_targets.py  coverage-guided fuzzing of the lowest-level parsers (atheris)
"""
