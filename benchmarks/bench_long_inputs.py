"""Long inputs: the composite tokenizer cuts a text to ``max_length * CHARS_PER_TOKEN_BOUND`` characters before
tokenising it, since only the first ``max_length`` tokens are kept. Times the `small` preset's tokenizer on one
100,000-character text and on 20 Newsgroups test documents, without and with the cut (alternating, best of
``--rounds``), checks the token ids are identical, and writes the section "Long inputs" of benchmarks/RESULTS.md.

    python benchmarks/bench_long_inputs.py --documents 200 --rounds 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_common import RESULTS, machine, read_texts, write_sections  # noqa: E402

TITLE = "## Long inputs: tokenising only what is kept"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from llmembed_hf import LLMEmbedConfig, LLMEmbedTokenizer
    from llmembed_hf.modeling import tokenization_llmembed

    bound = tokenization_llmembed.CHARS_PER_TOKEN_BOUND
    tokenizer = LLMEmbedTokenizer.from_backbone_specs(LLMEmbedConfig.from_preset("small").backbone_specs)
    documents = read_texts("20newsgroups", args.documents, split="test")
    cases = {"one 100,000-character text": [" ".join(documents)[:100_000]],
             f"{args.documents} 20 Newsgroups test documents": documents}
    rows = []
    for name, texts in cases.items():
        best, ids = {}, {}
        for _ in range(args.rounds):
            for cut in (10**12, bound):  # no cut, then the cut
                tokenization_llmembed.CHARS_PER_TOKEN_BOUND = cut
                started = time.perf_counter()
                ids[cut] = tokenizer(texts, padding=False).data
                best[cut] = min(best.get(cut, float("inf")), time.perf_counter() - started)
        tokenization_llmembed.CHARS_PER_TOKEN_BOUND = bound
        rows.append(f"| {name} | {1000 * best[10**12]:.1f} | {1000 * best[bound]:.1f} | "
                    f"{'yes' if ids[10**12] == ids[bound] else 'NO'} |")
    info = machine()
    lines = [TITLE, "", f"Command: `python benchmarks/bench_long_inputs.py --documents {args.documents} --rounds "
             f"{args.rounds}`  ", f"Machine: {info['nproc']} CPU cores ({info['cpu']}); the `small` preset's "
             f"composite tokenizer (Gemma-3, MiniLM, MPNet); best of {args.rounds} alternating rounds.", "",
             "| input | ms, whole text tokenised | ms, cut first | same token ids |", "|---|---|---|---|", *rows]
    write_sections(RESULTS, [(TITLE, "\n".join(lines))])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
