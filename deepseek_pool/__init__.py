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
    ProxyAuthenticationError,
    RateLimitError,
    RetryBudgetExceeded,
    ServiceUnavailableError,
    SpendCapReached,
    StorageUnavailable,
    TLSError,
    UnprocessableEntityError,
)
from .models import ModelPrice
from .params import (
    AssistantMessageParam,
    ChatParams,
    ChatRequest,
    FIMParams,
    FunctionParam,
    MessageParam,
    Messages,
    NamedToolChoiceParam,
    ReasoningEffort,
    ResponseFormatParam,
    StreamOptionsParam,
    SubmitParams,
    SystemMessageParam,
    ThinkingParam,
    ToolCallFunctionParam,
    ToolCallParam,
    ToolChoiceParam,
    ToolMessageParam,
    ToolParam,
    UserMessageParam,
)
from .pool.pool import DeepSeekPool, DrainStopped, PoolStats, Result
from .process import ProcessTuning, tune_process
from .telemetry import Telemetry
from .types import Balance, ChatChunk, ChatCompletion, ChatCompletionBuilder, FIMCompletion, Usage
from .wire.adapter import DeepSeekAdapter
from .wire.calls import CallControl, CallHandle, RetryEvent
from .wire.retry import DeepSeekRetry

__version__ = "0.1.0"

__all__ = [
    "APIConnectionError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AssistantMessageParam",
    "AuthenticationError",
    "BadRequestError",
    "Balance",
    "CallControl",
    "CallHandle",
    "ChatChunk",
    "ChatCompletion",
    "ChatCompletionBuilder",
    "ChatParams",
    "ChatRequest",
    "ChatStream",
    "ConfigurationError",
    "DeepSeekAdapter",
    "DeepSeekClient",
    "DeepSeekError",
    "DeepSeekPool",
    "DeepSeekRetry",
    "DrainStopped",
    "FIMCompletion",
    "FIMParams",
    "FunctionParam",
    "IncompleteResponseError",
    "InsufficientBalanceError",
    "InternalServerError",
    "Limiter",
    "LimiterStats",
    "MessageParam",
    "Messages",
    "ModelPrice",
    "NamedToolChoiceParam",
    "PoolStats",
    "ProcessTuning",
    "ProxyAuthenticationError",
    "RateLimitError",
    "ReasoningEffort",
    "ResponseFormatParam",
    "Result",
    "RetryBudgetExceeded",
    "RetryEvent",
    "ServiceUnavailableError",
    "SpendCapReached",
    "StorageUnavailable",
    "StreamOptionsParam",
    "SubmitParams",
    "SystemMessageParam",
    "TLSError",
    "Telemetry",
    "ThinkingParam",
    "Timeout",
    "ToolCallFunctionParam",
    "ToolCallParam",
    "ToolChoiceParam",
    "ToolMessageParam",
    "ToolParam",
    "UnprocessableEntityError",
    "Usage",
    "UserMessageParam",
    "__version__",
    "tune_process",
]
