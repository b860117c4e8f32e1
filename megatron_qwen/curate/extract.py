"""Step 1: HTML to main text, and a language tag on every document.

Extraction: resiliparse's main-content extractor (a compiled library in the default install), or
trafilatura through datatrove's own `Trafilatura` step (`--extractor trafilatura`, the `[curate]` extra).
Language ID: py3langid, whose model ships inside the package (nothing is downloaded at run time);
datatrove's `LanguageFilter` would download fastText's lid.176 model on first use.
"""

from __future__ import annotations

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.extractors.base import BaseExtractor
from py3langid.langid import MODEL_FILE, LanguageIdentifier
from resiliparse.extract.html2text import extract_plain_text

EXTRA_HINT = "pip install 'megatron-qwen[curate]' (or pip install trafilatura==2.3.1 lxml_html_clean==0.4.6)"


class ResiliparseExtractor(BaseExtractor):
    """Main text of an HTML page: navigation, footers and boilerplate left out."""

    name = "resiliparse"

    def __init__(self, timeout: float = 1.0):
        super().__init__(timeout)

    def extract(self, text: str) -> str:
        return extract_plain_text(text, main_content=True)


def make_extractor(name: str, timeout: float = 1.0) -> BaseExtractor:
    if name == "resiliparse":
        return ResiliparseExtractor(timeout=timeout)
    if name == "trafilatura":
        try:
            import trafilatura  # noqa: F401
        except ImportError as e:  # not installed, or lxml without its html-clean part
            raise ImportError(f"--extractor trafilatura needs trafilatura ({e}): {EXTRA_HINT}") from None
        # optional: trafilatura, checked just above
        from datatrove.pipeline.extractors import Trafilatura

        return Trafilatura(favour_precision=True, timeout=timeout)
    raise ValueError(f"--extractor {name}: expected resiliparse or trafilatura")


class HtmlExtraction(PipelineStep):
    """Replaces the text of documents read from an HTML field (metadata `html: true`, set by the reader)
    with the extractor's main text; drops those with no main text (`dropped_no_main_text`). Documents
    read from a text field pass unchanged, so a run can mix both."""

    name = "HTML extraction"
    type = "🛢 - EXTRAC"

    def __init__(self, extractor: BaseExtractor):
        super().__init__()
        self.extractor = extractor

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            if doc.metadata.pop("html", False):
                with self.track_time():
                    doc.text = self.extractor.extract(doc.text)
                self.stat_update("extracted")
                if not doc.text.strip():
                    self.stat_update("dropped", "dropped_no_main_text")
                    continue
            yield doc


class LanguageTagger(PipelineStep):
    """Adds `lang` (ISO 639-1 code) and `lang_score` (probability) to each document; with `languages`
    given, drops documents in other languages (counted as `dropped_language`)."""

    name = "language id (py3langid)"
    type = "🏷 - TAG"

    PREFIX_CHARS = 4000  # identify on the beginning: the cost grows with the length, the answer hardly does

    def __init__(self, languages: list[str] | None = None, min_score: float = 0.0):
        super().__init__()
        self.languages = set(languages) if languages else None
        self.min_score = min_score
        self._identifier = None

    def identify(self, text: str) -> tuple[str, float]:
        if self._identifier is None:  # built in the worker process, not pickled with the step
            self._identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        lang, score = self._identifier.classify(text[:self.PREFIX_CHARS])
        return lang, float(score)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            with self.track_time():
                self.stat_update("total")
                lang, score = self.identify(doc.text)
                doc.metadata["lang"], doc.metadata["lang_score"] = lang, round(score, 4)
                if self.languages is not None and (lang not in self.languages or score < self.min_score):
                    self.stat_update("dropped", "dropped_language")
                    continue
                self.stat_update(f"lang_{lang}", "forwarded")
            yield doc
