from decimal import Decimal

from rich.console import Console

from cryptomon.supervisor import status_table


def render(snap) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(status_table(snap))
    return console.export_text()


def test_status_table_shows_processes_market_and_totals():
    snap = {
        "processes": {
            "ingest": {
                "alive": True,
                "pid": 11,
                "restarts": 0,
                "http": 200,
                "count": 12345,
                "rate": 250.4,
                "lag": None,
            },
            "worker": {"alive": True, "pid": 12, "restarts": 2, "http": 503, "count": 9000, "rate": 0.0, "lag": 42},
            "spark": {"alive": False, "pid": 13, "restarts": 1, "http": 0, "count": None, "rate": None, "lag": None},
        },
        "market": {
            "symbols": {
                "BTCUSDT": {
                    "vwap": Decimal("97000.123456789012"),
                    "spread": Decimal("0.015"),
                    "anomalies": 3,
                    "spread_warnings": 1,
                },
                "ETHUSDT": {"vwap": None, "spread": None, "anomalies": 0, "spread_warnings": 0},
            },
            "rows": {"trades": 1000, "book_ticker": 400, "trade_metrics": 12, "spread_metrics": 20},
        },
    }
    text = render(snap)
    assert "ingest" in text and "12,345" in text and "250" in text
    assert "unhealthy" in text and "42" in text  # worker answering 503, with its lag
    assert "down" in text  # spark not alive
    assert "97000.1235" in text and "0.015000" in text
    assert "trades: 1,000" in text and "spread_metrics: 20" in text


def test_status_table_without_database():
    text = render({"processes": {}, "market": {"symbols": {}, "rows": None}})
    assert "database unreachable" in text
