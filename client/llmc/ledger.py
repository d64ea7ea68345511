"""What runs cost and how blueprints fare: ``llmc usage``, ``llmc stats``, ``llmc metrics``,
and the budget and cooldown lines of ``llmc status``.

Invariants:
- Human output by default; ``--json`` prints the daemon's JSON document and nothing else.
- The bar column of ``llmc usage`` (Unicode blocks, scaled to the largest group) is drawn
  only when stdout is a terminal; on a pipe the table is plain text, one group a line.
- A daemon that cannot tell its budgets (an older llmd) leaves ``llmc status`` as it was.
"""

from __future__ import annotations

import datetime as _dt
import sys

from llmc import exitcodes
from llmc.calling import as_object, call, connect, dump
from llmc.connection import ClientError
from llmc.output import format_value, table, terminal_width, write

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from llmc.connection import Connection

BAR_WIDTH = 20
_EIGHTHS = " ▏▎▍▌▋▊▉"


def bar(value: float, largest: float, width: int = BAR_WIDTH) -> str:
    """A horizontal bar of ``value`` out of ``largest``, ``width`` cells at most."""
    if largest <= 0 or value <= 0:
        return ""
    eighths = round(min(value / largest, 1.0) * width * 8)
    full, part = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[part] if part else "")


def window(args: argparse.Namespace, today: _dt.date | None = None) -> dict[str, Any]:
    """``usage.summary``'s params from ``--today``, ``--week``, ``--month``, ``--since``."""
    today = _dt.date.today() if today is None else today
    params: dict[str, Any] = {}
    if args.since:
        params["since"] = args.since
    elif args.today:
        params["since"] = today.isoformat()
    elif args.week:
        params["since"] = (today - _dt.timedelta(days=today.weekday())).isoformat()
    elif args.month:
        params["since"] = today.replace(day=1).isoformat()
    if args.by:
        params["by"] = [args.by]
    return params


def _money(value: object) -> str:
    return f"${value:.2f}" if isinstance(value, int | float) else "-"


def usage_table(result: dict[str, Any], *, bars: bool, width: int | None) -> str:
    """The rows of ``usage.summary`` as a table, with a bar column when ``bars``."""
    by = [key for key in result.get("by") or [] if isinstance(key, str)]
    groups = [g for g in result.get("groups") or [] if isinstance(g, dict)]
    total = result.get("total") if isinstance(result.get("total"), dict) else {}
    assert isinstance(total, dict)
    if not by:
        groups = [total]
    # Cost when any is known, else runs: what the bar measures.
    measure = "cost_usd" if any(isinstance(g.get("cost_usd"), int | float)
                                for g in groups) else "runs"
    largest = max((float(g.get(measure) or 0) for g in groups), default=0.0)
    headers = [key.upper() for key in by] + ["RUNS", "OK", "FAILED", "TOKENS IN",
                                             "TOKENS OUT", "COST", "TIME"]
    rows = []
    for g in groups:
        row = [format_value(g.get(key)) if g.get(key) is not None else "-" for key in by]
        row += [format_value(g.get("runs")), format_value(g.get("succeeded")),
                format_value(g.get("failed")), format_value(g.get("input_tokens")),
                format_value(g.get("output_tokens")), _money(g.get("cost_usd")),
                f"{float(g.get('duration_s') or 0):.0f}s"]
        if bars:
            row.append(bar(float(g.get(measure) or 0), largest))
        rows.append(row)
    if by and len(groups) > 1:
        rows.append(["total"] + [""] * (len(by) - 1) + [
            format_value(total.get("runs")), format_value(total.get("succeeded")),
            format_value(total.get("failed")), format_value(total.get("input_tokens")),
            format_value(total.get("output_tokens")), _money(total.get("cost_usd")),
            f"{float(total.get('duration_s') or 0):.0f}s"] + ([""] if bars else []))
    if bars:
        headers.append("COST" if measure == "cost_usd" else "RUNS")
    return table(headers, rows, width, flex=0)


def budget_lines(conn: Connection, blueprint: str | None = None) -> list[str]:
    """``budget NAME: $3.10 of $5 today`` per budget set (``all`` for ``[budget]``), with
    a warning mark from 80 % on; none from a daemon without budgets."""
    try:
        result = as_object(call(conn, "budget.status"), "budget.status")
    except ClientError:
        # The health table is the answer; the budgets only add to it.
        return []
    lines = []
    for use in result.get("budgets") or []:
        if not isinstance(use, dict):
            continue
        name = use.get("blueprint") or "all"
        if blueprint is not None and name not in (blueprint, "all"):
            continue
        mark = (" (exhausted until " + _clock(use.get("resets_at")) + ")"
                if use.get("exhausted") else " (over 80 %)" if use.get("warning") else "")
        lines.append(f"budget {name}: {format_value(use.get('text'))}{mark}\n")
    return lines


def _clock(stamp: object) -> str:
    """An RFC 3339 timestamp as local ``HH:MM`` (with the date when not today)."""
    if not isinstance(stamp, str):
        return format_value(stamp)
    try:
        moment = _dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone()
    except ValueError:
        return stamp
    if moment.date() == _dt.datetime.now().astimezone().date():
        return moment.strftime("%H:%M")
    return moment.strftime("%Y-%m-%d %H:%M")


def cooling_text(stamp: object, now: float | None = None) -> str:
    """``cooling down until 15:00 (2h 10m)``."""
    left = ""
    if isinstance(stamp, str):
        try:
            moment = _dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            seconds = int(moment.timestamp() - (_dt.datetime.now().timestamp()
                                                 if now is None else now))
        except ValueError:
            seconds = -1
        if seconds >= 0:
            hours, rest = divmod(seconds, 3600)
            left = (f" ({hours}h {rest // 60}m)" if hours else
                    f" ({rest // 60}m {rest % 60}s)" if rest >= 60 else f" ({rest}s)")
    return f"cooling down until {_clock(stamp)}{left}"


def cmd_usage(args: argparse.Namespace) -> int:
    """``llmc usage``: the ledger over a window, grouped, with the budgets' use."""
    params = window(args)
    with connect(args) as conn:
        result = as_object(call(conn, "usage.summary", params or None), "usage.summary")
        budgets = [] if args.json else budget_lines(conn)
    if args.json:
        dump(result)
        return exitcodes.OK
    bars = sys.stdout.isatty()
    write(usage_table(result, bars=bars, width=terminal_width()) + "".join(budgets))
    return exitcodes.OK


def _percent(value: object) -> str:
    return f"{value * 100:.0f}%" if isinstance(value, int | float) else "-"


def _secs(value: object) -> str:
    return f"{value:.1f}s" if isinstance(value, int | float) else "-"


def cmd_stats(args: argparse.Namespace) -> int:
    """``llmc stats``: per blueprint over the last hour and day (``daemon.stats``)."""
    with connect(args) as conn:
        result = as_object(call(conn, "daemon.stats"), "daemon.stats")
    if args.json:
        dump(result)
        return exitcodes.OK
    rows = []
    blueprints = result.get("blueprints")
    for name, periods in (blueprints.items() if isinstance(blueprints, dict) else []):
        for period in ("hour", "day"):
            s = periods.get(period) if isinstance(periods, dict) else None
            if not isinstance(s, dict) or not s.get("runs"):
                continue
            rows.append([name, period, format_value(s.get("runs")),
                         _percent(s.get("failure_rate")),
                         ", ".join(f"{k} {v}" for k, v in (s.get("failures") or {}).items()
                                   if v) or "-",
                         _secs(s.get("duration_p50_s")), _secs(s.get("duration_p90_s")),
                         _secs(s.get("first_output_p50_s")), format_value(s.get("retries")),
                         format_value(s.get("fallbacks")), _percent(s.get("warm_share"))])
    if not rows:
        write("no runs in the last day\n")
        return exitcodes.OK
    write(table(["NAME", "LAST", "RUNS", "FAILED", "BY CLASS", "P50", "P90", "FIRST OUT",
                 "RETRIES", "FALLBACKS", "WARM"], rows, terminal_width(), flex=4))
    return exitcodes.OK


def cmd_metrics(args: argparse.Namespace) -> int:
    """``llmc metrics``: the Prometheus text exposition, as the daemon writes it."""
    with connect(args) as conn:
        result = as_object(call(conn, "daemon.metrics"), "daemon.metrics")
    if args.json:
        dump(result)
    else:
        write(str(result.get("text") or ""))
    return exitcodes.OK
