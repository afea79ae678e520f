"""The batch runner: JSONL in, results out, append-only and resumable, nothing lost.

Owns :func:`~deepseek_pool.batch.runner.run_batch` and its file handling, bounded JSON
lines (:mod:`~deepseek_pool.batch.jsonl`), and what a run tells its user: progress, the
running tally and the summary (:mod:`~deepseek_pool.batch.progress`).

May import: :mod:`deepseek_pool.pool` and everything below it. Never the CLI, which stands
on it; the runner is a library function, so it sets no process-wide state.
"""
