"""The error families every stage tells apart, under one root.

Bad data is set aside (a dead letter, the stream goes on); an unavailable dependency is waited out (the
data is good: retry with backoff); a configuration error stops the program at start (exit code 2).
"""

from __future__ import annotations


class CryptomonError(Exception):
    """Root of every error cryptomon raises on purpose."""


class BadData(CryptomonError):
    """Input that can never be used as it is: dead-letter it and go on (retrying cannot help).

    `reason` is a short label for metrics and dead letters (`not_json`, `bad_decimal`, …), `detail` the
    sentence a person reads."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Unavailable(CryptomonError):
    """A dependency is down, full or limiting (database, Kafka, the exchange, the disk): wait and retry."""


class ConfigError(CryptomonError):
    """A setting, an argument or the installation is wrong: nothing works until a person fixes it."""
