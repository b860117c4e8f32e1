"""Table 3 reproduced (examples/long_context): docs/long_context.md quotes the table the script recorded."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "examples" / "long_context"))

from markdown_table import markdown_table  # noqa: E402

RECORDED = REPO / "examples" / "long_context" / "table3.md"


def test_markdown_table_of_the_json():
    result = {"train_length": 128, "lengths": [128, 256],
              "perplexity": {"none": {"128": 8.594, "256": 9.3049}, "+ window": {"128": 8.594, "256": 8.5151}}}
    assert markdown_table(result) == ("| technique | 128 (1x) | 256 (2x) |\n"
                                      "| --- | --- | --- |\n"
                                      "| none | 8.59 | 9.30 |\n"
                                      "| + window | 8.59 | 8.52 |\n")


def test_docs_quote_the_recorded_table():
    """bash examples/long_context/table3.sh writes table3.md; docs/long_context.md must carry it unchanged."""
    assert RECORDED.exists(), "no examples/long_context/table3.md: run bash examples/long_context/table3.sh"
    docs = (REPO / "docs" / "long_context.md").read_text(encoding="utf-8")
    assert RECORDED.read_text(encoding="utf-8") in docs, (
        "docs/long_context.md does not quote examples/long_context/table3.md: after rerunning "
        "bash examples/long_context/table3.sh, paste the file into the docs and commit both")
