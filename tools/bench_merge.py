"""Does merging keep the adapter? Each 16-bit merge type measured against base + adapter, as the export checks it.

    python tools/bench_merge.py --base /tmp/r1series/llama8b-random-tinytok \
        --adapter /tmp/r1series/run/train/adapter --dtypes bfloat16,float16

For each type: `export.merge.merge_lora` into a temporary folder, `merge.weight_check` (every tensor read back:
the share of the adapter's weight changes that the 16-bit rounding erased), then the export's logit check
(`export.checks`: base + adapter through peft in float32 is the reference; the merged model's logits and greedy
tokens against it, on the sample rows' first questions in the training prompt). Unlike the export, a type that
fails is measured and reported, not refused. One JSON line per type, prefixed `MERGECHECK `; the folder is
deleted afterwards. A benchmark prints measurements; nothing here is a timed test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the base model's folder (16-bit safetensors)")
    p.add_argument("--adapter", required=True, help="the trained LoRA adapter's folder")
    p.add_argument("--dtypes", default="bfloat16,float16")
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--tokens", type=int, default=16, help="greedy tokens compared per prompt")
    p.add_argument("--work", default=None, help="where the temporary merges go (default: a temporary folder)")
    args = p.parse_args(argv)

    from transformers import AutoTokenizer

    from r1helpers.core import prompts
    from r1helpers.data_sources import load_sample_rows
    from r1helpers.export import checks as ec
    from r1helpers.export.merge import merge_lora, weight_check

    tok = AutoTokenizer.from_pretrained(args.base)
    ids = [prompts.encode_prompt(tok, r["Question"]) for r in load_sample_rows()[: args.prompts]]
    t0 = time.perf_counter()
    probes = ec.adapter_reference(Path(args.base), Path(args.adapter), ids, args.tokens)
    ref_s = time.perf_counter() - t0
    device = ec.check_device(ec.float32_parameters(Path(args.base)))
    for dtype in args.dtypes.split(","):
        work = Path(tempfile.mkdtemp(prefix=f"merge-{dtype}-", dir=args.work))
        row = {"dtype": dtype, "check_device": device, "reference_seconds": round(ref_s, 1)}
        try:
            (work / "merged").mkdir()
            t1 = time.perf_counter()
            report = merge_lora(Path(args.base), Path(args.adapter), work / "merged", dtype)
            row["merge_seconds"] = round(time.perf_counter() - t1, 1)
            row["merged_tensors"] = report.merged_tensors
            row["weights"] = weight_check(Path(args.base), Path(args.adapter), work / "merged")
            t2 = time.perf_counter()
            model = ec.load_float32(work / "merged")
            result = ec.compare(probes, *ec.run_candidate(model, probes))
            del model
            row["check_seconds"] = round(time.perf_counter() - t2, 1)
            try:
                ec.judge("merged", dict(result), f"{dtype} merge vs base + adapter")
                row["passed"] = True
            except ec.ExportCheckError as e:
                row["passed"], row["why"] = False, str(e)
            row["logits"] = result
        except Exception as e:  # report, go on with the next type
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print("MERGECHECK " + json.dumps(row, default=float), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
