"""A PNG of the fraction of the ceiling per shape: one bar group per shape, one bar per backend and peer.

A peer's fraction comes from the same bytes as ours: fraction * our time / the peer's time.
"""

from __future__ import annotations

from pathlib import Path


def _series(records: list[dict]) -> tuple[list[str], dict[str, list[float | None]]]:
    groups: list[str] = []
    for r in records:
        label = r["shape"] + (f"\n{r['variant']}" if r["variant"] else "")
        if label not in groups:
            groups.append(label)
    ours: dict[str, dict[str, float]] = {}
    peers: dict[str, dict[str, float]] = {}
    for r in records:
        label = r["shape"] + (f"\n{r['variant']}" if r["variant"] else "")
        if r["fraction"] is None:
            continue
        ours.setdefault(r["backend"], {})[label] = r["fraction"]
        for peer, us in r["peers"].items():
            peers.setdefault(peer, {})[label] = r["fraction"] * r["median_us"] / us
    bars = {**ours, **{name: values for name, values in peers.items() if name not in ours}}
    return groups, {name: [values.get(g) for g in groups] for name, values in bars.items()}


def plot(path: str | Path, ops: list[str], records: list[dict], title: str) -> list[Path]:
    """One PNG at ``path``, or ``<path>/<op>.png`` per op when ``path`` is a directory (or has no .png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lower() == ".png" and not path.is_dir():
        targets = [(path, ops)]
    else:
        targets = [(path / f"{op}.png", [op]) for op in ops]
    written = []
    for file, file_ops in targets:
        chosen = [op for op in file_ops if any(r["op"] == op for r in records)]
        if not chosen:
            continue
        fig, axes = plt.subplots(len(chosen), 1, figsize=(10, 4 * len(chosen)), squeeze=False)
        for ax, op in zip(axes[:, 0], chosen):
            groups, series = _series([r for r in records if r["op"] == op])
            width = 0.8 / max(len(series), 1)
            for i, (name, values) in enumerate(series.items()):
                xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
                ax.bar(xs, [v if v is not None else 0.0 for v in values], width, label=name)
            ax.set_xticks(range(len(groups)))
            ax.set_xticklabels(groups)
            ceiling = next(r["ceiling"] for r in records if r["op"] == op)
            ax.set_ylabel(f"fraction of {ceiling}")
            ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
            ax.set_title(f"{op}: {title}")
            ax.legend(fontsize="small")
        fig.tight_layout()
        file.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(file, dpi=110)
        plt.close(fig)
        written.append(file)
    return written
