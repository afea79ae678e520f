"""deepseek_pool: call the DeepSeek API many times at once from synchronous Python.

::

    import deepseek_pool as dp

    client = dp.DeepSeekClient()
    print(client.chat("Say hi").content)
"""

from __future__ import annotations

from .budget.limiter import Limiter, LimiterStats
from .client import ChatStream, DeepSeekClient
from .config import Timeout
from .errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    DeepSeekError,
    IncompleteResponseError,
    InsufficientBalanceError,
    InternalServerError,
    RateLimitError,
    RetryBudgetExceeded,
    ServiceUnavailableError,
    SpendCapReached,
    StorageUnavailable,
    UnprocessableEntityError,
)
from .models import ModelPrice
from .pool.pool import DeepSeekPool, DrainStopped, PoolStats, Result
from .process import ProcessTuning, tune_process
from .types import Balance, ChatChunk, ChatCompletion, ChatCompletionBuilder, FIMCompletion, Usage
from .wire.calls import CallControl, CallHandle, RetryEvent
from .wire.retry import DeepSeekRetry

__version__ = "0.1.0"

__all__ = [
    "APIConnectionError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "Balance",
    "CallControl",
    "CallHandle",
    "ChatChunk",
    "ChatCompletion",
    "ChatCompletionBuilder",
    "ChatStream",
    "ConfigurationError",
    "DeepSeekClient",
    "DeepSeekError",
    "DeepSeekPool",
    "DeepSeekRetry",
    "DrainStopped",
    "FIMCompletion",
    "IncompleteResponseError",
    "InsufficientBalanceError",
    "InternalServerError",
    "Limiter",
    "LimiterStats",
    "ModelPrice",
    "PoolStats",
    "ProcessTuning",
    "RateLimitError",
    "Result",
    "RetryBudgetExceeded",
    "RetryEvent",
    "ServiceUnavailableError",
    "SpendCapReached",
    "StorageUnavailable",
    "Timeout",
    "UnprocessableEntityError",
    "Usage",
    "__version__",
    "tune_process",
]
