"""The LLM half of generation, vLLM vs transformers: prompt embeddings in, greedy tokens out (issue 21).

    python benchmarks/perf/vllm_llm_speed.py [--llm data/smollm2-135m-instruct] [--prompts 64] [--max-tokens 32]
        [--concurrency 1 16 64] [--vllm-python .venv-vllm/bin/python] [--torch-threads 2] [--json OUT]

What a region model hands its LLM: each prompt is the chat-templated question's token embeddings with, in every
third prompt, one position replaced by a vector that is no token's embedding (as a region feature is). The LLM
is built as regionvlm builds it (`HFCausalLM` with the placeholder tokens added), written as an export's LLM
folder (`regionvlm.llm_folder.write_llm_folder`) and served by a vLLM child (`VLLMServer`,
``--enable-prompt-embeds``).

1. Correctness: the greedy answers (``--max-tokens``, stopping at EOS) through vLLM against transformers' greedy
   ``generate(inputs_embeds=...)`` in left-padded batches of 16, as the built-in engine runs it: token ids
   equal, prompt by prompt.
2. Speed: every answer runs to ``--max-tokens`` (vLLM ``ignore_eos``, transformers ``min_new_tokens``); vLLM
   gets the prompts from ``c`` concurrent clients, transformers answers them in batches of ``c`` (measured
   before vLLM starts). Requests/s and generated tokens/s over the whole set; vLLM after its warm-up request.

The vLLM child runs with its defaults on CPU (it reserves one core for its API server and computes on the
rest); transformers uses ``--torch-threads``. The script starts vLLM's engine (~25 s), so it needs the
``if __name__ == "__main__":`` guard vLLM asks of scripts that start engines.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

QUESTIONS = ["What is the capital of France?", "Name a colour of the sky.", "How many legs does a spider have?",
             "What do bees make?", "Describe a cat in one sentence.", "What is two plus three?",
             "Which planet is the largest?", "What is water made of?", "Give a synonym for happy.",
             "Where do penguins live?", "What is the opposite of hot?", "Why do leaves fall in autumn?",
             "What does a thermometer measure?", "Name a fruit that is yellow.", "What is a triangle?",
             "How do birds fly?"]
PREFIXES = ["", "Briefly: ", "In a few words, ", "Answer simply. "]


def build_prompts(llm, tok, n: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    table = llm.get_input_embeddings()
    prompts = []
    for i in range(n):
        text = PREFIXES[(i // len(QUESTIONS)) % len(PREFIXES)] + QUESTIONS[i % len(QUESTIONS)]
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False)
            ids = ids["input_ids"] if isinstance(ids, dict) else ids
        else:
            ids = tok(text + "\n").input_ids
        with torch.no_grad():
            e = table(torch.tensor(ids)).clone()
        if i % 3 == 0:  # a "region feature": no token's embedding
            k = len(ids) // 2
            e[k] = torch.randn(e.shape[1], generator=g) * e.std()
        prompts.append(e)
    return prompts


def hf_generate(llm, tok, prompts, max_new_tokens: int, batch_size: int, fixed_length: bool = False):
    import torch

    answers = []
    for b in range(0, len(prompts), batch_size):
        batch = prompts[b:b + batch_size]
        length = max(len(p) for p in batch)
        x = torch.zeros(len(batch), length, batch[0].shape[1], dtype=batch[0].dtype)
        mask = torch.zeros(len(batch), length, dtype=torch.long)
        for j, p in enumerate(batch):
            x[j, length - len(p):], mask[j, length - len(p):] = p, 1
        extra = {"min_new_tokens": max_new_tokens} if fixed_length else {}
        with torch.no_grad():
            out = llm.generate(inputs_embeds=x, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **extra)
        for row in out.tolist():
            answers.append(row[:row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row)
    return answers


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llm", default="data/smollm2-135m-instruct", help="a transformers causal-LM folder")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--vllm-python", default=None, help="the vLLM environment's Python (default: .venv-vllm)")
    ap.add_argument("--torch-threads", type=int, default=2, help="torch threads of the transformers side")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each speed measurement; the fastest counts "
                    "(a shared machine's other jobs only ever slow a run down)")
    ap.add_argument("--vllm-env", nargs="*", default=[], metavar="KEY=VALUE",
                    help="environment of the vLLM child, e.g. VLLM_CPU_NUM_OF_RESERVED_CPU=0")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    import torch

    from regionvlm.llm_folder import write_llm_folder
    from regionvlm.plugins.llms import HFCausalLM, build_tokenizer
    from regionvlm.vllm_engine import VLLMServer

    torch.set_num_threads(args.torch_threads)
    tok = build_tokenizer({"pretrained": args.llm})
    llm = HFCausalLM(len(tok), pretrained=args.llm).eval()
    prompts = build_prompts(llm, tok, args.prompts)
    print(f"{args.prompts} prompts of {min(map(len, prompts))}-{max(map(len, prompts))} positions, "
          f"{args.max_tokens} new tokens", flush=True)

    t0 = time.perf_counter()
    want = hf_generate(llm, tok, prompts, args.max_tokens, batch_size=16)
    print(f"transformers greedy, batches of 16: {time.perf_counter() - t0:.1f} s", flush=True)

    hf_speed = {}  # measured before vLLM starts: the two never compete for the cores
    def fastest(run):
        best = None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            out = run()
            took = time.perf_counter() - t0
            best = (took, out) if best is None or took < best[0] else best
        return best

    for c in args.concurrency:
        h_s, ref = fastest(lambda c=c: hf_generate(llm, tok, prompts, args.max_tokens, batch_size=c,
                                                         fixed_length=True))
        hf_speed[c] = {"concurrency": c, "transformers_requests_s": round(len(prompts) / h_s, 2),
                       "transformers_tokens_s": round(sum(len(r) for r in ref) / h_s, 1)}
        print(json.dumps(hf_speed[c]), flush=True)

    results: dict = {"llm": args.llm, "prompts": args.prompts, "max_tokens": args.max_tokens,
                     "vllm_env": args.vllm_env, "torch_threads": args.torch_threads, "speed": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_llm_folder(llm, tok, Path(tmp) / "llm", template="chat_template")
        t0 = time.perf_counter()
        env = dict(kv.split("=", 1) for kv in args.vllm_env)
        with VLLMServer(folder, python=args.vllm_python, kv_cache_gib=2, env=env) as server:
            results["vllm_start_s"] = round(time.perf_counter() - t0, 1)
            print(f"vLLM started in {results['vllm_start_s']} s (log {server.log_path})", flush=True)
            client = server.client()
            t0 = time.perf_counter()
            client.complete(prompts[0], max_tokens=2)
            results["vllm_first_request_s"] = round(time.perf_counter() - t0, 2)
            got = client.complete_many(prompts, max_tokens=args.max_tokens)
            same = sum(g.token_ids == w for g, w in zip(got, want))
            results["greedy_equal"] = same
            print(f"greedy answers equal to transformers': {same}/{len(prompts)}", flush=True)
            for g, w in zip(got, want):
                if g.token_ids != w:
                    first = next(i for i, (a, b) in enumerate(zip(g.token_ids + [None], w + [None])) if a != b)
                    print(f"  first difference at new token {first}: vLLM {tok.decode(g.token_ids)!r} / "
                          f"transformers {tok.decode(w)!r}")
                    break
            for c in args.concurrency:
                client.max_concurrency = c
                v_s, out = fastest(lambda: client.complete_many(prompts, max_tokens=args.max_tokens, ignore_eos=True))
                row = hf_speed[c]
                row.update(vllm_requests_s=round(len(prompts) / v_s, 2),
                           vllm_tokens_s=round(sum(len(o.token_ids) for o in out) / v_s, 1))
                row["speedup"] = round(row["vllm_tokens_s"] / row["transformers_tokens_s"], 2)
                results["speed"].append(row)
                print(json.dumps(row), flush=True)

    print("\n| concurrent | vLLM requests/s | vLLM tokens/s | transformers requests/s | transformers tokens/s "
          "| vLLM / transformers |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results["speed"]:
        print(f"| {r['concurrency']} | {r['vllm_requests_s']} | {r['vllm_tokens_s']} | "
              f"{r['transformers_requests_s']} | {r['transformers_tokens_s']} | {r['speedup']}× |")
    if args.json:
        from regionvlm.io import write_text

        write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0 if results["greedy_equal"] == len(prompts) else 1


if __name__ == "__main__":
    sys.exit(main())
