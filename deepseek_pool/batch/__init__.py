"""The batch runner: JSONL in, results out, append-only and resumable, nothing lost.

Owns :func:`~deepseek_pool.batch.runner.run_batch` and ``run_lines`` (:mod:`~deepseek_pool.batch.runner`),
the input file read, checked and fed to the pool (:mod:`~deepseek_pool.batch.input_file`),
the locked, resumable output (:mod:`~deepseek_pool.batch.results_file`), the lines it
writes (:mod:`~deepseek_pool.batch.result_lines`), what both files share
(:mod:`~deepseek_pool.batch.paths`), bounded JSON lines (:mod:`~deepseek_pool.batch.jsonl`),
and what a run tells its user: progress, the running tally and the summary
(:mod:`~deepseek_pool.batch.progress`).

May import: :mod:`deepseek_pool.pool` and everything below it; today the pool, the wire
(:mod:`deepseek_pool.wire`, for what a cancelled retry looks like), the spend cap
(:mod:`deepseek_pool.money`, which counts what earlier runs on an output spent) and the
foundation modules :mod:`deepseek_pool.errors`, :mod:`~deepseek_pool.models` and
:mod:`~deepseek_pool.types`. Never the CLI or
contrib, which stand on it; the runner is a library function, so it sets no process-wide
state.
"""
