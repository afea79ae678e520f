"""Money: what a batch may spend, and what each call costs.

Owns the spend cap (:mod:`~deepseek_pool.money.spend`: reserve before a call, settle
after), DeepSeek's peak calendar and the off-peak gate of a pool
(:mod:`~deepseek_pool.money.offpeak`), with China's public holidays as data
(:mod:`~deepseek_pool.money.holidays_cn`). Prices, model ids and the peak windows live as
data in :mod:`deepseek_pool.models`.

May import: the foundation modules (:mod:`deepseek_pool.errors`,
:mod:`~deepseek_pool.models`, :mod:`~deepseek_pool.types`) and the standard library;
nothing of the wire, the client or the pool.
"""
