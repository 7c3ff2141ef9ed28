"""Helpers for tests of edgekd and of strategies built on it.

:class:`~edgekd.inprocess.InProcessGrid` (real Flower messages, a real ClientApp, no SuperLink)
lives in the production module :mod:`edgekd.inprocess`; it is re-exported here for tests.
"""

from __future__ import annotations

from edgekd.inprocess import CLIENT_APP_EXCEPTION, InProcessGrid

__all__ = ["CLIENT_APP_EXCEPTION", "InProcessGrid"]
