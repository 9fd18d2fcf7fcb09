"""Streaming load and export: ``python -m bitnet_edu.bench load [--shape 2b4t] [--layers N]``.

From ``random_model(shape)`` it writes a GGUF I2_S file (``to_gguf``, timed: the export) and an
HF packed directory (``write_hf_checkpoint``) into a temporary directory, then loads each with
``load_model`` — every step in a fresh subprocess, so each peak RSS (``ru_maxrss`` of that
child) is its own.  A load is compared with the loaded model's own memory
(``memory_report()["total"]``) on top of the RSS of a process that only imports the package:
``ratio = (peak - baseline) / model``.

Targets (2B4T shape): load peak RSS <= 1.3 x model memory (+ the import baseline); export to
GGUF <= 2 GB peak RSS and <= 30 s.  ``--shape`` takes a preset name or ``key=value,...``
overrides of the 2B4T config (with ``--layers``, how a test runs it small).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"load_ratio": 1.3, "export_peak_gb": 2.0, "export_s": 30.0}
GB = 2**30


def _peak_rss() -> int:
    """Peak resident bytes of this process so far (Linux reports ru_maxrss in KiB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def parse_shape(shape: str, layers: int | None = None):
    """``"2b4t"`` or ``"hidden_size=256,vocab_size=1000,..."`` (over the 2B4T shape) -> config."""
    from bitnet_edu.config import PRESETS, BitNetConfig

    if "=" not in shape:
        cfg = BitNetConfig.preset(shape).to_dict()
    else:
        cfg = BitNetConfig.preset("2b4t").to_dict()
        for item in shape.split(","):
            key, _, value = item.partition("=")
            if key.strip() not in cfg:
                raise ValueError(f"--shape: unknown config key {key.strip()!r} "
                                 f"(presets: {', '.join(PRESETS)})")
            cfg[key.strip()] = json.loads(value)
    if layers:
        cfg["num_hidden_layers"] = layers
    return BitNetConfig.from_dict(cfg)


# --- the children: each prints one JSON line ---------------------------------------------------

def _child(mode: str, config: dict, path: str) -> dict:
    if mode == "baseline":
        import bitnet_edu.model.loading  # noqa: F401  (what a load imports)
        return {"peak": _peak_rss()}
    if mode == "load":
        from bitnet_edu.model.loading import load_model
        t = time.perf_counter()
        m = load_model(path, progress=False)
        return {"peak": _peak_rss(), "seconds": time.perf_counter() - t,
                "model": m.memory_report()["total"], "head": m.head.mode}
    import warnings

    from bitnet_edu.model.random import random_model
    m = random_model(config, seed=0)
    before = _peak_rss()
    t = time.perf_counter()
    if mode == "gguf":
        from bitnet_edu.formats.gguf import to_gguf
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the placeholder-vocabulary warning
            to_gguf(m, path, progress=False)
    else:
        from bitnet_edu.formats.hf import write_hf_checkpoint
        write_hf_checkpoint(path, m.config, m.iter_checkpoint(blocks=True))
    return {"peak": _peak_rss(), "seconds": time.perf_counter() - t, "before": before,
            "model": m.memory_report()["total"]}


def _run_child(mode: str, config: dict, path: str) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bitnet_edu.bench.load", "--child", mode, "--config",
           json.dumps(config), "--path", path]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"bench load child {mode!r} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(cfg, workdir: Path) -> dict:
    """All the measurements for config ``cfg`` with files under ``workdir``."""
    config = cfg.to_dict()
    gguf, hf = str(workdir / "model-i2_s.gguf"), str(workdir / "hf")
    r = {"baseline": _run_child("baseline", config, "")}
    r["export_gguf"] = _run_child("gguf", config, gguf)
    r["export_hf"] = _run_child("hf", config, hf)
    r["load_gguf"] = _run_child("load", config, gguf)
    r["load_hf"] = _run_child("load", config, hf)
    r["files"] = {"gguf": os.path.getsize(gguf),
                  "hf": os.path.getsize(Path(hf) / "model.safetensors")}
    return r


def report(cfg, r: dict) -> list[str]:
    """Printable lines with the ratios and a verdict per target."""
    base = r["baseline"]["peak"]
    c = cfg
    lines = [f"bench load: {c.num_hidden_layers} layers, hidden {c.hidden_size}, ffn "
             f"{c.intermediate_size}, vocab {c.vocab_size}; GGUF {r['files']['gguf'] / GB:.2f} GB, "
             f"HF model.safetensors {r['files']['hf'] / GB:.2f} GB",
             f"  import baseline: peak RSS {base / GB:.3f} GB"]
    ok = True
    for key, what in (("export_gguf", "export to GGUF I2_S"), ("export_hf", "write HF packed")):
        e = r[key]
        line = (f"  {what:20s} {e['seconds']:6.1f} s  peak RSS {e['peak'] / GB:.3f} GB "
                f"(model {e['model'] / GB:.3f} GB, {e['peak'] / e['model']:.2f} x model)")
        if key == "export_gguf":
            good = (e["peak"] <= TARGETS["export_peak_gb"] * GB
                    and e["seconds"] <= TARGETS["export_s"])
            ok &= good
            line += (f"  target <= {TARGETS['export_s']:.0f} s and <= "
                     f"{TARGETS['export_peak_gb']:.0f} GB: {'ok' if good else 'MISSED'}")
        lines.append(line)
    for key, what in (("load_gguf", "load GGUF I2_S"), ("load_hf", "load HF packed")):
        d = r[key]
        ratio = (d["peak"] - base) / d["model"]
        good = ratio <= TARGETS["load_ratio"]
        ok &= good
        lines.append(f"  {what:20s} {d['seconds']:6.1f} s  peak RSS {d['peak'] / GB:.3f} GB = "
                     f"baseline + {ratio:.2f} x model {d['model'] / GB:.3f} GB (head {d['head']})"
                     f"  target <= {TARGETS['load_ratio']} x: {'ok' if good else 'MISSED'}")
    lines.append(f"  all targets met: {ok}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bitnet_edu.bench load", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="2b4t",
                    help="preset name, or key=value,... overrides of the 2B4T config")
    ap.add_argument("--layers", type=int, default=None, help="num_hidden_layers override")
    ap.add_argument("--dir", default=None, help="where to write the files (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="also print the raw figures as JSON")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(_child(a.child, json.loads(a.config), a.path)))
        return 0
    cfg = parse_shape(a.shape, a.layers)
    if a.dir:
        Path(a.dir).mkdir(parents=True, exist_ok=True)
        r = run(cfg, Path(a.dir))
    else:
        with tempfile.TemporaryDirectory(prefix="bench-load-") as d:
            r = run(cfg, Path(d))
    print("\n".join(report(cfg, r)))
    if a.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
