"""Summary tables and plots for bench results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# (field, label, format) per scenario, in the order the table shows them.
_ROWS: dict[str, list[tuple[str, str, str]]] = {
    "fanout": [
        ("viewers", "viewers", "{:,}"),
        ("rooms", "rooms", "{:,}"),
        ("workers", "worker processes", "{}"),
        ("rounds", "rounds (medians)", "{}"),
        ("blob_kind", "blobs", "{}"),
        ("compress", "viewers offer permessage-deflate", "{}"),
        ("frames_per_s", "frames/s delivered (gateway)", "{:,.0f}"),
        ("gateway_cpu_us_per_frame", "gateway CPU per frame", "{:.2f} us"),
        ("gateway_user_cpu_us_per_frame", "  of which in user space", "{:.2f} us"),
        ("gateway_softirqd_cpu_us_per_frame", "  of which in ksoftirqd", "{:.2f} us"),
        ("fanout", "gateway --fanout", "{}"),
        ("floor_cpu_us_per_frame", "raw-socket floor CPU per frame", "{:.2f} us"),
        ("cfloor_cpu_us_per_frame", "C send() loop floor CPU per frame", "{:.2f} us"),
        ("stock_cpu_us_per_frame", "stock broadcast() CPU per frame", "{:.2f} us"),
        ("ratio_vs_floor", "gateway / floor", "{:.2f}x"),
        ("ratio_vs_cfloor", "gateway / C send() loop", "{:.2f}x"),
        ("speedup_vs_stock", "stock / gateway (speedup)", "{:.2f}x"),
        ("blob_bytes", "blob bytes (mean)", "{:,.0f}"),
        ("gateway_bytes_per_frame", "gateway bytes per frame", "{:,.0f}"),
        ("floor_bytes_per_frame", "floor bytes per frame", "{:,.0f}"),
        ("stock_bytes_per_frame", "stock bytes per frame", "{:,.0f}"),
        ("memory_kib_per_viewer", "gateway memory per idle viewer", "{:.2f} KiB"),
        ("stock_memory_kib_per_viewer", "stock memory per idle viewer", "{:.2f} KiB"),
        ("dropped", "frames dropped (gateway)", "{:,}"),
        ("client_cpu_us_per_frame", "load-client CPU per frame", "{:.2f} us"),
    ],
    "connect": [
        ("viewers", "viewers", "{:,}"),
        ("workers", "worker processes", "{}"),
        ("handshakes_per_s", "handshakes/s", "{:,.0f}"),
        ("memory_kib_per_viewer", "memory per idle viewer", "{:.2f} KiB"),
        ("storm_recovery_s", "reconnect storm: all back in", "{:.2f} s"),
    ],
    "ingest": [
        ("events", "events", "{:,}"),
        ("partitions", "partitions", "{}"),
        ("events_per_s", "pipeline events/s", "{:,.0f}"),
        ("ceiling_events_per_s", "consume-only ceiling events/s", "{:,.0f}"),
        ("ratio_vs_ceiling", "pipeline / ceiling", "{:.2f}"),
        ("events_per_blob", "events per blob", "{:.1f}"),
    ],
    "e2e": [
        ("viewers", "viewers", "{:,}"),
        ("rooms", "rooms (Zipf)", "{:,}"),
        ("produced_events_per_s", "events/s produced", "{:,.0f}"),
        ("events_per_s", "events/s delivered to viewers", "{:,.0f}"),
        ("frames_per_s", "frames/s delivered", "{:,.0f}"),
        ("compress", "viewers offer permessage-deflate", "{}"),
        ("bytes_per_frame", "bytes per frame", "{:,.0f}"),
        ("latency_ms.p50", "latency p50", "{:.1f} ms"),
        ("latency_ms.p90", "latency p90", "{:.1f} ms"),
        ("latency_ms.p99", "latency p99", "{:.1f} ms"),
        ("latency_ms.p999", "latency p99.9", "{:.1f} ms"),
        ("dropped", "frames dropped", "{:,}"),
        ("lost", "events lost", "{:,}"),
        ("duplicated", "events duplicated", "{:,}"),
        ("churn_s", "churn: drop and resume every", "{:g} s"),
        ("churned", "connections dropped (churn)", "{:,}"),
        ("resumed", "rooms resumed (recovered)", "{:,}"),
        ("recovered_false", "rooms not recovered", "{:,}"),
    ],
    "fuzz": [
        ("cases", "cases run", "{:,}"),
        ("seed", "seed", "{}"),
        ("cases_per_s", "cases/s", "{:,.0f}"),
        ("concurrency", "cases at once", "{}"),
        ("good_viewers", "good viewers", "{}"),
        ("blobs_checked", "blob deliveries checked", "{:,}"),
        ("gateway_starts", "gateway starts", "{}"),
        ("fds_before", "gateway descriptors before", "{:,}"),
        ("fds_after", "gateway descriptors after", "{:,}"),
        ("rss_mib_before", "gateway RSS before", "{:.1f} MiB"),
        ("rss_mib_after", "gateway RSS after", "{:.1f} MiB"),
        ("failures", "failures", "{:,}"),
    ],
}


def _get(result: dict[str, Any], field: str) -> Any:
    value: Any = result
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def table(scenario: str, result: dict[str, Any]) -> str:
    rows = []
    for field, label, fmt in _ROWS[scenario]:
        value = _get(result, field)
        rows.append((label, "-" if value is None else fmt.format(value)))
    width = max(len(label) for label, _ in rows)
    lines = [f"roomcast bench {scenario}", "-" * (width + 16)]
    lines += [f"{label:<{width}}  {value:>12}" for label, value in rows]
    return "\n".join(lines) + "\n"


def plot(scenario: str, runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if scenario == "e2e":
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in runs:
            lat = r.get("latency_samples") or []
            if lat:
                ys = [(i + 1) / len(lat) for i in range(len(lat))]
                ax.plot(lat, ys, label=f"{r['viewers']:,} viewers")
        ax.set_xscale("log")
        ax.set_xlabel("produce -> viewer latency (ms)")
        ax.set_ylabel("fraction of events")
        ax.set_title(f"roomcast e2e latency CDF (window {runs[0].get('window_ms')} ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    else:
        xs = [r["viewers"] for r in runs]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
        series = {
            "fanout": [
                ("gateway_cpu_us_per_frame", "gateway"),
                ("floor_cpu_us_per_frame", "raw-socket floor"),
                ("stock_cpu_us_per_frame", "stock broadcast()"),
            ],
            "connect": [("memory_kib_per_viewer", "memory per idle viewer (KiB)")],
            "ingest": [("events_per_s", "pipeline"), ("ceiling_events_per_s", "ceiling")],
        }[scenario]
        for key, label in series:
            ys = [r.get(key) for r in runs]
            if any(y is not None for y in ys):
                a1.plot(xs, ys, marker="o", label=label)
        a1.set_xlabel("viewers")
        a1.set_ylabel("CPU per delivered frame (us)" if scenario == "fanout" else "")
        a1.legend()
        a1.grid(True, alpha=0.3)
        second = {
            "fanout": "frames_per_s",
            "connect": "handshakes_per_s",
            "ingest": "events_per_s",
        }[scenario]
        a2.plot(xs, [r.get(second) for r in runs], marker="o")
        a2.set_xlabel("viewers")
        a2.set_ylabel(second.replace("_", " "))
        a2.grid(True, alpha=0.3)
        fig.suptitle(f"roomcast bench {scenario}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
