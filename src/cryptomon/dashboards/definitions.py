"""The panels of the two dashboards and the alert rules, with their SQL (Grafana PostgreSQL macros).

`$symbol` is a multi-value variable: Grafana expands it to a quoted list ('BTCUSDT','ETHUSDT'), so every
query says `symbol IN ($symbol)`. Alert rules read the flags the Spark job and the book stage computed, so
their thresholds are those stages' configuration (CRYPTOMON_VOLATILITY_THRESHOLD[S],
CRYPTOMON_SPREAD_WARNING_FACTOR, CRYPTOMON_LIQUIDITY_BAND and _DROP_FRACTION), not a second copy of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Panel:
    """One panel: its title, chart type, SQL (with Grafana's macros) and place on the grid."""

    key: str
    title: str
    type: str  # Grafana panel plugin id: timeseries, bargauge, stat, table
    sql: str
    format: str  # time_series | table
    columns: tuple[str, ...]  # the columns the panel expects, in order
    unit: str = "none"
    description: str = ""
    width: int = 8
    height: int = 8


@dataclass(frozen=True)
class Dashboard:
    """A dashboard: its uid, title and panels, rendered for Grafana and for the web view alike."""

    uid: str
    title: str
    file: str
    panels: tuple[Panel, ...]
    repeat_by_symbol: bool = False  # one row of panels per selected symbol
    tags: tuple[str, ...] = ("cryptomon",)


@dataclass(frozen=True)
class AlertRule:
    """An alert rule: the SQL that gives each symbol's value, its threshold and the mail it sends."""

    uid: str
    title: str
    sql: str  # one row per symbol (a label) with a numeric `value`; fires when value > 0
    lookback_seconds: int
    summary: str
    labels: dict[str, str] = field(default_factory=dict)


MARKET_OVERVIEW = Dashboard(
    uid="cryptomon-market-overview",
    title="Market Overview",
    file="market-overview.json",
    repeat_by_symbol=True,
    panels=(
        Panel(
            "vwap",
            "VWAP (1-minute windows)",
            "timeseries",
            'SELECT window_start AS "time", vwap::double precision AS "VWAP"\n'
            "FROM trade_metrics\n"
            "WHERE $__timeFilter(window_start) AND symbol IN ($symbol)\n"
            "ORDER BY 1",
            "time_series",
            ("time", "VWAP"),
            unit="currencyUSD",
            width=10,
            description="Volume-weighted average price per 1-minute window, from the Spark job.",
        ),
        Panel(
            "trade_count",
            "Trades per minute",
            "bargauge",
            "SELECT $__timeGroupAlias(window_start, '1m'), sum(trade_count) AS \"trades\"\n"
            "FROM trade_metrics\n"
            "WHERE $__timeFilter(window_start) AND symbol IN ($symbol)\n"
            "GROUP BY 1 ORDER BY 1",
            "time_series",
            ("time", "trades"),
            width=6,
            description="Number of trades (trade events, not aggTrades) per 1-minute window.",
        ),
        Panel(
            "avg_spread",
            "Average spread (30-second windows)",
            "timeseries",
            'SELECT window_start AS "time", avg_spread::double precision AS "avg spread",\n'
            '       max_spread::double precision AS "max spread"\n'
            "FROM spread_metrics\n"
            "WHERE $__timeFilter(window_start) AND symbol IN ($symbol)\n"
            "ORDER BY 1",
            "time_series",
            ("time", "avg spread", "max spread"),
            unit="currencyUSD",
            description="Best ask minus best bid, averaged per 30-second window.",
        ),
        Panel(
            "book_depth",
            "Book depth within 10 bps (30-second windows)",
            "timeseries",
            'SELECT window_start AS "time", bid_depth_10bps::double precision AS "bid depth",\n'
            '       ask_depth_10bps::double precision AS "ask depth"\n'
            "FROM book_liquidity\n"
            "WHERE $__timeFilter(window_start) AND symbol IN ($symbol)\n"
            "ORDER BY 1",
            "time_series",
            ("time", "bid depth", "ask depth"),
            unit="currencyUSD",
            width=12,
            description="Quote currency bid and offered within 10 bps of the mid, from the order book stage "
            "(a window whose book did not know the band whole has none).",
        ),
        Panel(
            "book_imbalance",
            "Book imbalance within 10 bps",
            "timeseries",
            'SELECT window_start AS "time", imbalance_10bps::double precision AS "imbalance"\n'
            "FROM book_liquidity\n"
            "WHERE $__timeFilter(window_start) AND symbol IN ($symbol)\n"
            "ORDER BY 1",
            "time_series",
            ("time", "imbalance"),
            width=12,
            description="(bid − ask) / (bid + ask) of the depth within 10 bps: above 0 the book leans to the bids.",
        ),
    ),
)

RISK_MONITOR = Dashboard(
    uid="cryptomon-risk-monitor",
    title="Risk Monitor",
    file="risk-monitor.json",
    panels=(
        Panel(
            "volatility_alerts",
            "Volatility alerts",
            "stat",
            'SELECT count(*) AS "volatility alerts"\n'
            "FROM trade_metrics\n"
            "WHERE $__timeFilter(window_start) AND symbol IN ($symbol) AND volatility_alert",
            "table",
            ("volatility alerts",),
            description="1-minute windows whose price stddev exceeded the symbol's threshold.",
        ),
        Panel(
            "volume_spikes",
            "Volume spikes",
            "stat",
            'SELECT count(*) AS "volume spikes"\n'
            "FROM trade_metrics\n"
            "WHERE $__timeFilter(window_start) AND symbol IN ($symbol) AND volume_spike",
            "table",
            ("volume spikes",),
            description="1-minute windows whose volume exceeded K times the mean of the previous windows.",
        ),
        Panel(
            "spread_warnings",
            "Spread warnings",
            "stat",
            'SELECT count(*) AS "spread warnings"\n'
            "FROM spread_metrics\n"
            "WHERE $__timeFilter(window_start) AND symbol IN ($symbol) AND spread_warning",
            "table",
            ("spread warnings",),
            description="30-second windows whose max spread exceeded F times their min spread.",
        ),
        Panel(
            "liquidity_drops",
            "Liquidity drops",
            "stat",
            'SELECT count(*) AS "liquidity drops"\n'
            "FROM book_metrics\n"
            "WHERE $__timeFilter(window_start) AND symbol IN ($symbol) AND liquidity_drop",
            "table",
            ("liquidity drops",),
            description="30-second windows whose book depth (CRYPTOMON_LIQUIDITY_BAND) fell below "
            "CRYPTOMON_LIQUIDITY_DROP_FRACTION of its median over the previous 30 minutes.",
        ),
        Panel(
            "anomalies",
            "Anomaly events",
            "table",
            'SELECT window_start AS "time", symbol,\n'
            "       concat_ws(' + ', CASE WHEN volatility_alert THEN 'volatility' END,\n"
            "                        CASE WHEN volume_spike THEN 'volume spike' END) AS \"event\",\n"
            '       vwap::double precision AS "vwap", price_stddev AS "price stddev",\n'
            '       volume::double precision AS "volume", trade_count AS "trades"\n'
            "FROM trade_metrics\n"
            "WHERE $__timeFilter(window_start) AND symbol IN ($symbol) AND (volatility_alert OR volume_spike)\n"
            "ORDER BY window_start DESC LIMIT 500",
            "table",
            ("time", "symbol", "event", "vwap", "price stddev", "volume", "trades"),
            width=12,
            height=10,
        ),
        Panel(
            "spread_warning_events",
            "Spread warnings",
            "table",
            'SELECT window_start AS "time", symbol, min_spread::double precision AS "min spread",\n'
            '       max_spread::double precision AS "max spread", avg_spread::double precision AS "avg spread",\n'
            '       update_count AS "updates"\n'
            "FROM spread_metrics\n"
            "WHERE $__timeFilter(window_start) AND symbol IN ($symbol) AND spread_warning\n"
            "ORDER BY window_start DESC LIMIT 500",
            "table",
            ("time", "symbol", "min spread", "max spread", "avg spread", "updates"),
            width=12,
            height=10,
        ),
    ),
)

DASHBOARDS = (MARKET_OVERVIEW, RISK_MONITOR)

ALERT_RULES = (
    AlertRule(
        "cryptomon-volatility-alert",
        "VolatilityAlert",
        "SELECT symbol, count(*) FILTER (WHERE volatility_alert)::double precision AS value\n"
        "FROM trade_metrics\n"
        "WHERE $__timeFilter(window_start)\n"
        "GROUP BY symbol",
        lookback_seconds=180,
        summary="Price stddev of {{ $labels.symbol }} is above its threshold in a recent 1-minute window",
        labels={"severity": "warning"},
    ),
    AlertRule(
        "cryptomon-spread-warning",
        "SpreadWarning",
        "SELECT symbol, count(*) FILTER (WHERE spread_warning)::double precision AS value\n"
        "FROM spread_metrics\n"
        "WHERE $__timeFilter(window_start)\n"
        "GROUP BY symbol",
        lookback_seconds=120,
        summary="Spread of {{ $labels.symbol }} exceeded 3x its minimum in a recent 30-second window",
        labels={"severity": "warning"},
    ),
    AlertRule(
        "cryptomon-liquidity-drop",
        "LiquidityDrop",
        "SELECT symbol, count(*) FILTER (WHERE liquidity_drop)::double precision AS value\n"
        "FROM book_metrics\n"
        "WHERE $__timeFilter(window_start)\n"
        "GROUP BY symbol",
        lookback_seconds=120,
        summary="Book depth of {{ $labels.symbol }} fell below its trailing median by the configured fraction "
        "in a recent 30-second window",
        labels={"severity": "warning"},
    ),
)
