"""Money: what a batch may spend, and what each call costs.

Owns the spend cap (:mod:`~deepseek_pool.money.spend`: reserve before a call, settle
after). Prices and model ids live as data in :mod:`deepseek_pool.models`.

May import: the foundation modules (:mod:`deepseek_pool.errors`,
:mod:`~deepseek_pool.models`, :mod:`~deepseek_pool.types`) and the standard library;
nothing of the wire, the client or the pool.
"""
