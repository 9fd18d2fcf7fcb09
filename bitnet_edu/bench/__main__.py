"""Dispatch ``python -m bitnet_edu.bench <name> [args]`` to ``bitnet_edu.bench.<name>.main``."""

import importlib
import sys

BENCHES = {
    "kernels": "ternary matmul kernels vs numpy float32 at the 2B4T shapes",
    "decode": "full 2B4T-shape prefill/decode tok/s and peak memory",
    "batch": "batched decoding at the 2B4T shape: aggregate tok/s for B = 1, 4, 8, 16 sequences",
    "serve": "the HTTP server under C concurrent clients: latency, time to first token, tokens/s",
    "eval": "evaluation at the 2B4T shape: a question's choices with the context's KV cache shared vs plain",
    "load": "streaming load (GGUF, HF) and GGUF export at the 2B4T shape: peak RSS and time",
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHES:
        print("usage: python -m bitnet_edu.bench {" + ",".join(BENCHES) + "} [options]")
        for k, v in BENCHES.items():
            print(f"  {k:10s} {v}")
        return 2
    mod = importlib.import_module(f"bitnet_edu.bench.{argv[0]}")
    return mod.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
