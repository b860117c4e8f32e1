"""Table 3 as docs/long_context.md quotes it: the markdown table of tools/eval_long_context.py's --json.

    python examples/long_context/markdown_table.py runs/long_context/table3.json > table3.md

table3.sh runs this at its end; tests/test_long_context_table3.py checks that the docs quote the file.
"""

import argparse
import json


def markdown_table(result: dict) -> str:
    """One row per technique, one column per length (with its multiple of the training length), two decimals."""
    lengths, train = result["lengths"], result["train_length"]
    lines = ["| technique | " + " | ".join(f"{n} ({n / train:g}x)" for n in lengths) + " |",
             "| --- |" + " --- |" * len(lengths)]
    for row, cells in result["perplexity"].items():  # JSON keys: the lengths as strings
        lines.append(f"| {row} | " + " | ".join(f"{cells[str(n)]:.2f}" for n in lengths) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", help="the file tools/eval_long_context.py --json wrote")
    with open(parser.parse_args().json, encoding="utf-8") as f:
        print(markdown_table(json.load(f)), end="")


if __name__ == "__main__":
    main()
