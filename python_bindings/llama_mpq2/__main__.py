"""Command line: python -m llama_mpq2 {chat,generate,perplexity,info} MODEL ... (also `llama-mpq2`)."""
from __future__ import annotations

import argparse
import json
import os
import sys


def _model(args, n_ctx=None):
    from .model import Model, set_verbose
    set_verbose(args.verbose)
    return Model(args.model, n_ctx=n_ctx or args.ctx_size, n_threads=args.threads)


def _sampling(args) -> dict:
    return dict(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, seed=args.seed)


def cmd_chat(args) -> int:
    from .model import ContextOverflowError, LlamaError
    out = sys.stdout
    with _model(args) as m:
        template = args.template
        try:
            m.format_chat([{"role": "user", "content": "x"}], template)
        except LlamaError as e:
            if template is not None:
                raise
            template = "chatml"
            print(f"warning: {str(e).split(';')[0]}; using chatml (choose with --template)", file=sys.stderr)
        system = [{"role": "system", "content": args.system}] if args.system else []
        history = list(system)
        interactive = sys.stdin.isatty()
        if interactive:
            print("chat with the model; /exit quits, /reset forgets the conversation", file=sys.stderr)
        while True:
            out.write("> ")
            out.flush()
            line = sys.stdin.readline()
            if not line:                       # end of input
                out.write("\n")
                break
            line = line.rstrip("\r\n")
            if line.strip() == "/exit":
                break
            if line.strip() == "/reset":
                history = list(system)
                continue
            if not line.strip():
                continue
            history.append({"role": "user", "content": line})
            reply = []
            try:
                for piece in m.chat(history, max_tokens=args.n_predict, template=template, **_sampling(args)):
                    reply.append(piece)
                    out.write(piece)
                    out.flush()
            except ContextOverflowError as e:
                print(f"\nerror: {e}; conversation reset", file=sys.stderr)
                history = list(system)
                m.reset()
                continue
            out.write("\n")
            out.flush()
            history.append({"role": "assistant", "content": "".join(reply)})
    return 0


def cmd_generate(args) -> int:
    with _model(args) as m:
        for piece in m.generate(args.prompt, max_tokens=args.n_predict, stop=args.stop or None, **_sampling(args)):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        print(f"[{m.finish_reason}]", file=sys.stderr)
    return 0


def cmd_perplexity(args) -> int:
    with open(args.file, encoding="utf-8") as f:
        text = f.read()
    with _model(args, n_ctx=args.ctx_size) as m:
        ppl = m.perplexity(text, args.ctx_size)
    print(f"PPL = {ppl:.4f}")
    return 0


def cmd_info(args) -> int:
    from .gguf_io import MPQ2_TYPE_IDS, mpq2_stats, read_tensor_bytes, tensors
    infos = tensors(args.model)
    rows = []
    for t in infos:
        row = {"name": t.name, "type": t.type_name, "shape": list(t.shape), "n_elements": t.n_elements,
               "bytes": t.n_bytes, "bpw": round(t.bits_per_weight, 4)}
        if t.type_id in MPQ2_TYPE_IDS:
            raw, _ = read_tensor_bytes(args.model, t.name)
            row["salient_fraction"] = round(mpq2_stats(raw)["salient_fraction"], 6)
        rows.append(row)
    n_el = sum(t.n_elements for t in infos)
    n_bytes = sum(t.n_bytes for t in infos)
    mp = [r for r in rows if "salient_fraction" in r]
    summary = {"file": str(args.model), "tensors": len(rows), "n_elements": n_el, "bytes": n_bytes,
               "bpw": round(8 * n_bytes / n_el, 4) if n_el else 0.0, "mpq2_tensors": len(mp)}
    if mp:
        summary["mpq2_bpw"] = round(8 * sum(r["bytes"] for r in mp) / sum(r["n_elements"] for r in mp), 4)
        summary["mpq2_salient_fraction"] = round(
            sum(r["salient_fraction"] * r["n_elements"] for r in mp) / sum(r["n_elements"] for r in mp), 6)
    if args.json:
        json.dump({"summary": summary, "tensors": rows}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    w = max([len(r["name"]) for r in rows] + [4])
    print(f"{'name':<{w}}  {'type':<6}  {'shape':<16}  {'bpw':>7}  salient")
    for r in rows:
        sal = f"{r['salient_fraction']:.4f}" if "salient_fraction" in r else "-"
        print(f"{r['name']:<{w}}  {r['type']:<6}  {'x'.join(map(str, r['shape'])):<16}  {r['bpw']:>7.3f}  {sal}")
    print(f"{summary['tensors']} tensors, {n_el} weights, {n_bytes} bytes, {summary['bpw']:.3f} bpw overall")
    if mp:
        print(f"{len(mp)} MPQ2/MPQ2R tensors: {summary['mpq2_bpw']:.3f} bpw, "
              f"salient (int8-word) fraction {summary['mpq2_salient_fraction']:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llama-mpq2", description="Run GGUF models (MPQ2 included) with the patched llama.cpp")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, ctx_default=2048):
        sp.add_argument("model", help="GGUF file")
        sp.add_argument("-c", "--ctx-size", type=int, default=ctx_default, help="context window in tokens")
        sp.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
        sp.add_argument("-v", "--verbose", action="store_true", help="print llama.cpp's log")

    def sampling(sp, n_default):
        sp.add_argument("-n", "--n-predict", type=int, default=n_default, help="max tokens to generate")
        sp.add_argument("--temp", type=float, default=0.8, help="temperature (<= 0: greedy)")
        sp.add_argument("--top-k", type=int, default=40)
        sp.add_argument("--top-p", type=float, default=0.95)
        sp.add_argument("-s", "--seed", type=int, default=None)

    sp = sub.add_parser("chat", help="interactive chat on stdin/stdout (works through a pipe; /exit quits)")
    common(sp)
    sampling(sp, 256)
    sp.add_argument("--template", default=None, help="chat template name or text (default: the model's)")
    sp.add_argument("--system", default=None, help="system message")
    sp.set_defaults(func=cmd_chat)

    sp = sub.add_parser("generate", help="continue a prompt, streaming")
    common(sp)
    sampling(sp, 128)
    sp.add_argument("-p", "--prompt", required=True)
    sp.add_argument("--stop", action="append", help="stop string (repeatable)")
    sp.set_defaults(func=cmd_generate)

    sp = sub.add_parser("perplexity", help="perplexity of a text file, as llama-perplexity computes it")
    common(sp, ctx_default=512)
    sp.add_argument("-f", "--file", required=True)
    sp.set_defaults(func=cmd_perplexity)

    sp = sub.add_parser("info", help="tensors, types, shapes, bits per weight, MPQ2 salient fractions")
    sp.add_argument("model")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .model import LlamaError
    try:
        return args.func(args)
    except (LlamaError, FileNotFoundError, ValueError, KeyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
