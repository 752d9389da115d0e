"""cryptomon: real-time crypto market monitoring (Binance -> Kafka -> TimescaleDB -> Spark -> Grafana)."""

__version__ = "0.1.0"
