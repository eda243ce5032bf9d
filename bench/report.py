"""Markdown tables and PNG plots from the benchmark's results dict."""
from __future__ import annotations

import os

ORDER = ["kiln", "kiln-passes-off", "eager", "torch.compile", "torch.compile+freezing", "onnxruntime"]
PEERS = ["eager", "torch.compile", "torch.compile+freezing", "onnxruntime"]
SHORT = {"kiln": "Kiln", "kiln-passes-off": "Kiln (passes off)", "eager": "eager",
         "torch.compile": "compile", "torch.compile+freezing": "compile+freeze", "onnxruntime": "ORT"}


def mib(b) -> str:
    return "–" if b is None else f"{b / 2**20:.1f}"


def _ms(e, n) -> str:
    if n not in e.get("median_ms", {}):
        return "–"
    m = e["median_ms"][n]
    f = ".3f" if m < 1 else ".2f" if m < 100 else ".0f"
    return f"{m:{f}} ({e['q1_ms'][n]:{f}}–{e['q3_ms'][n]:{f}})"


def _names(cfg) -> list[str]:
    seen = set()
    for e in cfg["seqs"].values():
        seen.update(e.get("median_ms", {}))
    return [n for n in ORDER if n in seen]


def markdown(results: dict) -> str:
    m = results.get("machine", {})
    fl = results.get("floor_inputs", {})
    out = ["# Kiln benchmark results", ""]
    out.append(f"Run {results.get('started', '?')} – {results.get('finished', 'in progress')}; "
               f"{results.get('rounds')} interleaved rounds per shape; {m.get('threads')} threads for every runtime.")
    out.append("")
    out.append(f"- CPU: {m.get('cpu')} ({m.get('cores')} cores, {m.get('hypervisor') or 'bare metal'} guest; "
               f"SIMD {', '.join(m.get('simd', []))}); memory {m.get('memory_bytes', 0) / 2**30:.1f} GiB")
    v = m.get("versions", {})
    out.append("- versions: " + ", ".join(f"{k} {v[k]}" for k in v if v[k]))
    if fl:
        out.append(f"- measured ceilings: sgemm {fl.get('sgemm_gflops', 0):.0f} GFLOP/s (the higher of "
                   f"Kiln's packed GEMM and the BLAS, 2048³, same run), "
                   f"read bandwidth {fl.get('read_gbps', 0):.1f} GB/s")
    out.append("")
    out.append("Times are medians in ms with the interquartile range in parentheses. Ratios are peer time ÷ Kiln "
               "time (> 1: Kiln is faster). Floor = max(FLOPs ÷ sgemm peak, weight bytes ÷ read bandwidth). "
               "Other load = cores used by other processes on this machine while the shape was timed.")
    for key, cfg in results.get("configs", {}).items():
        out += ["", f"## {cfg.get('label', key)} (`{key}`)", ""]
        if cfg.get("error"):
            out.append(f"**Failed:** {cfg['error']}")
            continue
        out.append(f"{cfg.get('params', 0) / 1e6:.1f} M parameters, weights {mib(cfg.get('weight_bytes'))} MiB (fp32).")
        notes = []
        for n, c in cfg.get("contestants", {}).items():
            if c.get("status") != "ok":
                notes.append(f"{n} skipped: {c.get('reason')}")
        names = _names(cfg)
        peers = [n for n in PEERS if n in names]
        out.append("")
        hdr = ["seq", "GFLOP", "floor ms"] + [SHORT[n] for n in names] + ["Kiln × floor"] + \
              [f"{SHORT[p]} ÷ Kiln" for p in peers] + ["other load"]
        out.append("| " + " | ".join(hdr) + " |")
        out.append("|" + "---|" * len(hdr))
        for s, e in cfg["seqs"].items():
            if e.get("skipped"):
                notes.append(f"seq {s} skipped: {e['skipped']}")
                continue
            for n, why in e.get("excluded", {}).items():
                notes.append(f"seq {s}: {n} excluded: {why}")
            med = e.get("median_ms", {})
            row = [s, f"{e['flops'] / 1e9:.1f}", f"{e['floor_ms']:.2f}" if "floor_ms" in e else "–"]
            row += [_ms(e, n) for n in names]
            row.append(f"{e['kiln_x_floor']:.2f}" if "kiln_x_floor" in e else "–")
            row += [f"{med[p] / med['kiln']:.2f}" if p in med and "kiln" in med else "–" for p in peers]
            row.append(f"{e['foreign_load']:.2f}" if "foreign_load" in e else "–")
            out.append("| " + " | ".join(row) + " |")
        # build cost
        out += ["", "Build cost (s): " + "; ".join(
            f"{n} {c['compile_s']:.1f}" for n, c in cfg.get("contestants", {}).items()
            if c.get("status") == "ok" and c.get("compile_s") is not None) + ". First call per shape (s): " +
            "; ".join(f"seq {s}: " + ", ".join(f"{SHORT.get(n, n)} {t:.2f}" for n, t in e.get("first_call_s", {}).items())
                      for s, e in cfg["seqs"].items() if e.get("first_call_s"))]
        # memory
        mem_rows = []
        for s, e in cfg["seqs"].items():
            mm = e.get("memory", {})
            if not mm:
                continue
            k = mm.get("kiln", {})
            row = [s, mib(k.get("arena_bytes")), mib(k.get("activation_bytes"))]
            row += [mib(mm.get(n, {}).get("activation_bytes")) for n in PEERS]
            mem_rows.append(row)
        if mem_rows:
            out += ["", "Activation memory (MiB): Kiln = planned arena (+ the logits output); PyTorch = peak "
                    "bytes live in its CPU allocator during the call (includes the logits); ORT = RSS growth "
                    "over its calls (approximate arena).", ""]
            hdr = ["seq", "Kiln arena", "Kiln arena+out"] + [SHORT[n] for n in PEERS]
            out.append("| " + " | ".join(hdr) + " |")
            out.append("|" + "---|" * len(hdr))
            out += ["| " + " | ".join(r) + " |" for r in mem_rows]
            wb = {n: c.get("weight_bytes") for n, c in cfg.get("contestants", {}).items() if c.get("status") == "ok"}
            out += ["", "Weights held (MiB): " + ", ".join(f"{SHORT.get(n, n)} {mib(b)}" for n, b in wb.items() if b)
                    + " (ORT: size of the exported model files)."]
        # Kiln profile
        prof_rows = []
        for s, e in cfg["seqs"].items():
            p = e.get("kiln_profile", {}).get("kiln")
            if p and "by_op" in p:
                tot = p["total_ms"] or 1.0
                top = sorted(p["by_op"].items(), key=lambda kv: -kv[1]["ms"])[:5]
                prof_rows.append(f"| {s} | {p['total_ms']:.2f} | " +
                                 ", ".join(f"{op} {v['ms'] / tot * 100:.0f}%" for op, v in top) + " |")
        if prof_rows:
            out += ["", "Kiln per-op profile (the fastest of up to 3 `profile=True` runs):", "", "| seq | total ms | top ops |",
                    "|---|---|---|"] + prof_rows
        if "kiln-passes-off" in names:
            out += ["", "Passes off vs on (Kiln compiled executor):", "",
                    "| seq | passes on ms | passes off ms | off ÷ on | arena on MiB | arena off MiB |", "|---|---|---|---|---|---|"]
            for s, e in cfg["seqs"].items():
                med = e.get("median_ms", {})
                if "kiln" in med and "kiln-passes-off" in med:
                    mm = e.get("memory", {})
                    out.append(f"| {s} | {med['kiln']:.2f} | {med['kiln-passes-off']:.2f} | "
                               f"{med['kiln-passes-off'] / med['kiln']:.2f} | "
                               f"{mib(mm.get('kiln', {}).get('arena_bytes'))} | "
                               f"{mib(mm.get('kiln-passes-off', {}).get('arena_bytes'))} |")
        for n, c in cfg.get("contestants", {}).items():
            for note in c.get("notes", []) or []:
                if "exporter" in note or "export:" in note:
                    notes.append(f"{n}: {note}")
        if notes:
            out += [""] + [f"- {x}" for x in notes]
    return "\n".join(out) + "\n"


def plots(results: dict, out_dir: str) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    files = []
    cfgs = {k: c for k, c in results.get("configs", {}).items() if c.get("seqs")}
    if not cfgs:
        return files
    # latency vs seq, one panel per model
    n = len(cfgs)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, (key, cfg) in zip(axes.flat, cfgs.items()):
        for name in _names(cfg):
            xs = [e["seq"] for e in cfg["seqs"].values() if name in e.get("median_ms", {})]
            ys = [e["median_ms"][name] for e in cfg["seqs"].values() if name in e.get("median_ms", {})]
            if xs:
                ax.plot(xs, ys, marker="o", lw=2.2 if name == "kiln" else 1.2, label=SHORT[name])
        fxs = [e["seq"] for e in cfg["seqs"].values() if "floor_ms" in e and e.get("median_ms")]
        if fxs:
            ax.plot(fxs, [cfg["seqs"][str(x)]["floor_ms"] for x in fxs], ls=":", color="gray", label="floor")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(cfg.get("label", key), fontsize=9)
        ax.set_xlabel("sequence length")
        ax.set_ylabel("ms (median)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    files.append(_save_figure(plt, fig, out_dir, "latency.png"))
    # memory bars at each config's largest measured seq
    labels, series = [], {n: [] for n in ["kiln"] + PEERS}
    for key, cfg in cfgs.items():
        seqs = [e for e in cfg["seqs"].values() if e.get("memory")]
        if not seqs:
            continue
        e = max(seqs, key=lambda x: x["seq"])
        labels.append(f"{key}\nseq {e['seq']}")
        for name in series:
            series[name].append((e["memory"].get(name, {}).get("activation_bytes") or 0) / 2**20)
    if labels:
        import numpy as np
        fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(labels)), 3.6))
        names = [n for n in series if any(series[n])]
        w = 0.8 / max(1, len(names))
        x = np.arange(len(labels))
        for i, name in enumerate(names):
            ax.bar(x + i * w - 0.4 + w / 2, series[name], w, label=SHORT[name])
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylabel("activation MiB (incl. logits)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
        files.append(_save_figure(plt, fig, out_dir, "memory.png"))
    return files


def _save_figure(plt, fig, out_dir: str, name: str) -> str:
    fig.tight_layout()
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def add_floors(results: dict) -> None:
    """Floor = max(FLOPs / sgemm peak, weight bytes / read bandwidth); Kiln's time as a multiple of it."""
    m = results["machine"]
    peaks = [m.get("sgemm", {}).get("gflops")] + [e.get("sgemm", {}).get("gflops") for e in m.get("remeasured", [])]
    bws = [m.get("bandwidth", {}).get("gbps")] + [e.get("bandwidth", {}).get("gbps") for e in m.get("remeasured", [])]
    peak = max([p for p in peaks if p] or [0])
    bw = max([b for b in bws if b] or [0])
    results["floor_inputs"] = {"sgemm_gflops": peak, "read_gbps": bw}
    if not peak or not bw:
        return
    for cfg in results["configs"].values():
        for e in cfg["seqs"].values():
            compute = e["flops"] / (peak * 1e9)
            memory = cfg["weight_bytes"] / (bw * 1e9)
            e["floor_ms"] = 1e3 * max(compute, memory)
            e["floor_bound"] = "compute" if compute >= memory else "memory"
            if "kiln" in e.get("median_ms", {}):
                e["kiln_x_floor"] = e["median_ms"]["kiln"] / e["floor_ms"]


def write(results: dict, out_dir: str, plots_too: bool = True, **kw) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    md = os.path.join(out_dir, "results.md")
    with open(md, "w") as f:
        f.write(markdown(results))
    files = {"markdown": md}
    if kw.get("plots", plots_too):
        files["plots"] = plots(results, out_dir)
    return files


def main(argv=None) -> int:
    """Re-render (and merge) results: python -m bench.report OUT_DIR results.json [more.json ...]"""
    import argparse
    import json
    p = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    p.add_argument("out")
    p.add_argument("results", nargs="+")
    a = p.parse_args(argv)
    merged = None
    for path in a.results:
        with open(path) as f:
            r = json.load(f)
        if merged is None:
            merged = r
        else:
            merged["configs"].update(r["configs"])
            merged.setdefault("machine", {}).setdefault("remeasured", []).append(
                {k: r["machine"][k] for k in ("sgemm", "bandwidth") if k in r.get("machine", {})})
            merged["finished"] = r.get("finished", merged.get("finished"))
            merged.setdefault("parts", []).append({"started": r.get("started"), "finished": r.get("finished"),
                                                   "argv": r.get("argv")})
    add_floors(merged)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(merged, f, indent=1)
    print(write(merged, a.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
