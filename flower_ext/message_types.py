"""Two names of Flower's Message API that its packages do not export, named from their submodules in this one
place: ``Mod``, the type of a ClientApp mod (``flwr.clientapp.typing``), and ``ErrorCode``, the codes an
error reply carries (``flwr.common.constant``). Re-exported as they are; nothing in Flower is changed.
"""

from __future__ import annotations

from flwr.clientapp.typing import Mod
from flwr.common.constant import ErrorCode

__all__ = ["ErrorCode", "Mod"]
