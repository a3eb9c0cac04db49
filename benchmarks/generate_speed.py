"""Decoding speed: reftlab's generation with a LoReFT intervention against transformers' `generate`
on the frozen model alone and against generating through pyreft/pyvene as pyreft's README shows it.

    python benchmarks/generate_speed.py                       # bundled SmolLM2-135M, GSM8K prompts
    python benchmarks/generate_speed.py --prompts 8 --new 32  # a quick look

Every path runs in this one process on the same model, dtype, prompts (the first --prompts GSM8K
test questions as chat prompts), batch size and length: --new tokens for every prompt (no stop
token, so every path does the same work), greedy. Paths:
- hf_frozen:   `model.generate` on the frozen model (left-padded batches, its KV cache): the floor;
- reftlab:     `engine.generate` with a LoReFT intervention (the --layers, --positions, rank 8): the
               prompt's pass through pyreft with the interventions, then the frozen body per token;
- reftlab_zero: `engine.generate` on the frozen model (the loop's own overhead);
- pyreft:      `ReftModel.generate(..., unit_locations=..., intervene_on_prompt=True)` as pyreft's
               README calls it (one prompt at a time, as the README does; --pyreft-batch for batches).
Each timing is the faster of --repeats runs. Tokens/s counts generated tokens. The last line gives
the two ratios the issue targets: reftlab/hf_frozen (>= 0.75) and reftlab/pyreft (>= 3).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def compose(*overrides):
    from reftlab.config.compose import compose as reftlab_compose

    return reftlab_compose(list(overrides))


def best_of(repeats: int, fn):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new", type=int, default=64, help="new tokens per prompt")
    ap.add_argument("--layers", default="6,12,18,24", help="the LoReFT layers (comma-separated)")
    ap.add_argument("--positions", default="f7+l7")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--pyreft-batch", type=int, default=1, help="prompts per pyreft generate call (README: 1)"
    )
    args = ap.parse_args(argv)

    import torch

    from reftlab import methods, models, reft
    from reftlab.data import recipes
    from reftlab.engine import Engine, StockScorer
    from reftlab.engine.generate import Decoding
    from reftlab.engine.loop import left_pad
    from reftlab.spec import InterventionSpec, unit_locations
    from reftlab.tasks.chat import PromptBuilder

    torch.manual_seed(0)
    cfg = compose(f"model={args.model}", f"model.dtype={args.dtype}", "task=generate", "data=gsm8k",
                  f"data.max_eval={args.prompts}")  # fmt: skip
    model, tok, device, dtype = models.load_model_and_tokenizer(cfg.model)
    data = recipes.prepare(cfg.data)
    builder = PromptBuilder(tok, cfg.data.system_prompt, 512, cut="middle")
    prompts = builder.prompts(data.eval["text"])
    layers = [int(x) for x in args.layers.split(",")]
    settings = {"method": "loreft", "layer": layers, "component": "block_output", "rank": 8,
                "positions": args.positions, "share_weights": True, "dropout": 0.0}  # fmt: skip
    trained = reft.build(model, settings)
    trainer = compose("trainer.cache=off").trainer
    engine = Engine(
        trained,
        methods.get("loreft"),
        settings,
        trainer,
        tok.pad_token_id,
        device,
        store=None,
        progress=False,
    )
    zero = StockScorer(
        model,
        methods.get("none"),
        {"method": "none", "layer": None},
        tok.pad_token_id,
        device,
        progress=False,
    )
    decoding = Decoding(max_new_tokens=args.new, stop_ids=())
    total = args.new * len(prompts)

    def hf():
        for b in range(0, len(prompts), args.batch):
            enc = left_pad(prompts[b : b + args.batch], tok.pad_token_id, device)
            with torch.no_grad():
                model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=args.new,
                               min_new_tokens=args.new, do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)  # fmt: skip

    def ours():
        return engine.generate(prompts, decoding, args.batch)

    def ours_zero():
        return zero.generate(prompts, decoding, args.batch)

    spec = InterventionSpec.of(settings, model.config.num_hidden_layers)

    def pyreft_path():
        n = args.pyreft_batch
        for b in range(0, len(prompts), n):
            chunk = prompts[b : b + n]
            enc = left_pad(chunk, tok.pad_token_id, device)
            locations = unit_locations(spec, [len(p) for p in chunk], enc["starts"])
            with torch.no_grad():
                trained.generate({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]},
                                 unit_locations=locations, intervene_on_prompt=True, max_new_tokens=args.new,
                                 min_new_tokens=args.new, do_sample=False, eos_token_id=None,
                                 pad_token_id=tok.pad_token_id)  # fmt: skip

    ours()  # warm up (first calls allocate)
    results = {}
    for name, fn in (
        ("hf_frozen", hf),
        ("reftlab", ours),
        ("reftlab_zero", ours_zero),
        ("pyreft", pyreft_path),
    ):
        seconds, _ = best_of(args.repeats, fn)
        results[name] = {"seconds": round(seconds, 3), "tokens_per_second": round(total / seconds, 1)}
        print(f"{name:13s} {seconds:8.2f} s  {total / seconds:8.1f} tok/s", flush=True)
    # the interventions act: reftlab's tokens equal pyreft's for the same prompt (first prompt, greedy)
    enc = left_pad(prompts[:1], tok.pad_token_id, device)
    locations = unit_locations(spec, [len(prompts[0])], enc["starts"])
    with torch.no_grad():
        _, theirs = trained.generate({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]},
                                     unit_locations=locations, intervene_on_prompt=True, max_new_tokens=16,
                                     min_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)  # fmt: skip
    mine = engine.generate(prompts[:1], Decoding(max_new_tokens=16, stop_ids=()), 1).tokens[0]
    same = theirs[0, len(prompts[0]) :].tolist() == mine
    ratio_hf = results["reftlab"]["tokens_per_second"] / results["hf_frozen"]["tokens_per_second"]
    ratio_pyreft = results["reftlab"]["tokens_per_second"] / results["pyreft"]["tokens_per_second"]
    print(json.dumps({"cpu": models.cpu_model() or platform.processor(), "threads": torch.get_num_threads(), "dtype": str(dtype), "prompts": len(prompts),
                      "batch": args.batch, "new_tokens": args.new, "layers": layers, "positions": args.positions,
                      "pyreft_batch": args.pyreft_batch, "same_tokens_as_pyreft": same, **results}))  # fmt: skip
    print(
        f"ratios reftlab/hf_frozen={ratio_hf:.2f} (target >= 0.75) reftlab/pyreft={ratio_pyreft:.2f} (target >= 3)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
